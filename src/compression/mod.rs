//! The compression wing: what turns a model into a smaller one.
//!
//! * [`policy`] — which matrices are factored, at which rank, how the factors are stored (budgets, energy, the
//!   break-even guard); [`svd`] — exact, randomized and activation-aware ("whitened") truncated SVD;
//!   [`quant`] — the INT8 and group-wise quantizers; [`gptq`] — group-wise codes with GPTQ's error compensation;
//!   [`calib`] — the input statistics activation-aware SVD and GPTQ need.
//! * [`sensitivity`] — the damage of compressing one matrix alone (what the loss allocation weighs by);
//!   [`refit`] — the sequential closed-form refit, block by block, against the original's outputs;
//!   [`refine`] — then each block's factors adjusted together by gradient steps on the block's output error.
//! * [`driver`] — a whole checkpoint in one call (calibration, probes, refit, factoring on threads).
//! * [`preview`] — what a policy will store, from the shapes alone, before it runs.
//! * [`source`] — the original checkpoint as a compression reads it: the matrices it considers, each read as f32.
//! * [`matrix`] — one matrix compressed: its job, its stored factors, its report (what the pipeline, the refit and
//!   the refinement all produce).
//! * [`pipeline`] — one matrix per step: plan, factor, quantize, measure, the allocation check; the compressed
//!   model. The refit works for it through [`refit::RefitTarget`] and knows nothing else of it.
//! * [`format`] — the compressed checkpoint written to a file (FORMAT.md), and dense weights again (`densify`).
//!
//! May import: [`crate::model`], [`crate::error`], [`crate::alloc`].

pub mod calib;
pub mod driver;
pub mod format;
pub mod gptq;
pub mod matrix;
pub mod pipeline;
pub mod policy;
pub mod preview;
pub mod quant;
pub mod refine;
pub mod refit;
pub mod sensitivity;
pub mod source;
pub mod svd;
pub mod work;
