//! The evaluation wing: how far a compressed model is from its original on a text.
//!
//! * [`metrics`] — the reference convention (windows, perplexity, cosines, MSE, top-1, KL), evaluations split into
//!   parts and merged exactly;
//! * [`streaming`] — the same figures with the original read from its checkpoint one stage at a time, for a model
//!   that does not fit in memory.
//!
//! May import: [`crate::model`], [`crate::error`].

pub mod metrics;
pub mod streaming;
