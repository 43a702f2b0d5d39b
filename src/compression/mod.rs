//! The compression wing: what turns a model into a smaller one.
//!
//! * [`policy`] — which matrices are factored, at which rank, how the factors are stored (budgets, energy, the
//!   break-even guard); [`svd`] — exact, randomized and activation-aware ("whitened") truncated SVD;
//!   [`quant`] — the INT8 quantizers; [`calib`] — the input statistics activation-aware SVD needs.
//! * [`sensitivity`] — the damage of compressing one matrix alone (what the loss allocation weighs by);
//!   [`refit`] — the sequential closed-form refit, block by block, against the original's outputs;
//!   [`refine`] — then each block's factors adjusted together by gradient steps on the block's output error.
//! * [`driver`] — a whole checkpoint in one call (calibration, probes, refit, factoring on threads).
//! * [`preview`] — what a policy will store, from the shapes alone, before it runs.
//! * [`pipeline`] — one matrix per step: plan, factor, quantize, measure; the compressed model.
//! * [`format`] — the compressed checkpoint written to a file (FORMAT.md), and dense weights again (`densify`).
//!
//! May import: [`crate::model`], [`crate::error`], [`crate::alloc`].

pub mod calib;
pub mod driver;
pub mod format;
pub mod pipeline;
pub mod policy;
pub mod preview;
pub mod quant;
pub mod refine;
pub mod refit;
pub mod sensitivity;
pub mod svd;
