//! semantic-llm-compressor: compress GPT-Neo models by truncated SVD and INT8, and measure what it did.
//!
//! The core is plain Rust and is tested natively; [`wasm`] is the thin WebAssembly boundary the page's worker uses,
//! and `src/bin/slc.rs` is the command line on the same core.

pub mod alloc;
pub mod bundle;
pub mod calib;
pub mod checkpoint;
pub mod compress;
pub mod config;
mod error;
pub mod export;
pub mod generate;
pub mod kernels;
pub mod linear;
pub mod metrics;
pub mod model;
pub mod policy;
pub mod quant;
pub mod svd;
pub mod tokenizer;

#[cfg(target_arch = "wasm32")]
pub mod wasm;

pub use error::{Error, Result};
