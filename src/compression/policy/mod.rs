//! Compression policy: which weight matrices are factored, at which rank, and how the factors are stored.
//!
//! The knobs carry the origin pipeline's names (`rank`, `quant_bits`, `min_dim_for_compression`, skip patterns)
//! and go past them: per-pattern ranks, an energy threshold, a global size budget, and a break-even guard.
//!
//! [`rules`]: the settings and what follows from them alone; [`allocate`]: every matrix's plan, budgets spread over
//! the matrices; [`auto`]: each matrix's method chosen within a byte budget.

mod allocate;
pub mod auto;
mod rules;

pub use rules::{BudgetMode, BudgetUnit, FactorStorage, MatrixInfo, Method, Plan, Policy, RankRule};

#[cfg(test)]
mod tests;
