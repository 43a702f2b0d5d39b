//! The compression wing: what turns a model into a smaller one.
//!
//! * [`policy`] — which matrices are factored, at which rank, how the factors are stored (budgets, energy, the
//!   break-even guard); [`svd`] — exact, randomized and activation-aware ("whitened") truncated SVD;
//!   [`quant`] — the INT8 quantizers; [`calib`] — the input statistics activation-aware SVD needs.
//! * [`pipeline`] — one matrix per step: plan, factor, quantize, measure; the compressed model.
//! * [`format`] — the compressed checkpoint written to a file (FORMAT.md), and dense weights again (`densify`).
//!
//! May import: [`crate::model`], [`crate::error`], [`crate::alloc`].

pub mod calib;
pub mod format;
pub mod pipeline;
pub mod policy;
pub mod quant;
pub mod svd;
