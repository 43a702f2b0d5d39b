//! semantic-llm-compressor: compress GPT-Neo models by truncated SVD and INT8, and measure what it did.
//!
//! The crate is laid out as the data flows, one folder a wing, and imports run one way, from the edges down:
//!
//! * [`model`] — reading a checkpoint (plain or compressed) and running GPT-Neo: config, safetensors by byte range,
//!   tokenizer, the weight sources, linear-layer storages and their kernels, the model, generation.
//! * [`compression`] — what turns a model into a smaller one: SVD, quantizers, the policy, calibration statistics,
//!   the pipeline, the compressed format it writes. Imports [`model`].
//! * [`evaluation`] — how far a compressed model is from its original: the metrics and the streamed evaluation.
//!   Imports [`model`].
//! * [`explore`] — many compressions of one model, each measured: sweeps of methods × budgets, the smallest model
//!   meeting a quality target, the per-matrix sensitivity table. Imports [`compression`], [`evaluation`], [`model`].
//! * [`gpu`] — the forward pass and the evaluation's metrics on the GPU (`wgpu`: WebGPU in the browser, Vulkan,
//!   Metal or DX12 natively), beside the CPU's. Imports [`model`], [`evaluation`].
//! * [`session`] — one person's work with one model as the page runs it (open, load, compress, evaluate, generate,
//!   export; what a new model invalidates; memory checks). Imports the wings above.
//! * [`error`], [`alloc`] and [`clock`] — the one error type, the counting allocator and the clock, below everything.
//!
//! The edges sit on top: `src/bin/` (the `slc` command line) and `wasm`, the thin WebAssembly boundary the page's
//! worker uses (it converts and decides nothing). The core is plain Rust and is tested natively.

pub mod alloc;
pub mod clock;
pub mod compression;
pub mod error;
pub mod evaluation;
pub mod explore;
pub mod gpu;
pub mod model;
pub mod session;

#[cfg(target_arch = "wasm32")]
pub mod wasm;

pub use error::{Error, Result};
