//! The model wing: everything needed to read a GPT-Neo checkpoint and run it.
//!
//! * [`config`] — config.json as Hugging Face writes it; [`checkpoint`] — safetensors files read by byte range
//!   (its byte sources, one file's header, the shards joined); [`tokenizer`] — tokenizer.json, text ↔ ids, the evaluation's windows of ids.
//! * [`folder`] — a model's folder as people have it, sorted by name into what is read and what is ignored.
//! * [`weights`] — where tensors come from, behind one trait: a plain checkpoint, one with some layers replaced while
//!   compressing, a compressed checkpoint read back from its file; [`bundle`] — a model's files together.
//! * [`storage`] — how a matrix is stored (f32, INT8 codes with scales, 16-bit halves) and read back by row blocks;
//!   [`grouped`] — group-wise codes of 2 to 8 bits with a scale per group of a row, packed;
//!   [`linear`] — one `Linear` over every storage; [`kernels`] — fused dequantize-and-dot and vectorizable exp.
//! * [`gpt_neo`] — the model in candle, its stages loadable alone; [`generate`] — sampling and generation.
//! * [`synth`] — random-weight checkpoints of any shape with trained-like spectra, for benchmarks and large files.
//!
//! May import: [`crate::error`], [`crate::alloc`]. Nothing here imports compression, evaluation or the edges.

pub mod bundle;
pub mod checkpoint;
pub mod config;
pub mod folder;
pub mod generate;
pub mod gpt_neo;
pub mod grouped;
pub mod kernels;
pub mod linear;
pub mod storage;
pub mod synth;
pub mod tokenizer;
pub mod weights;
