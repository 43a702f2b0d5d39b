//! The `slc` command line: one module a command family, all on the same core as the page.

mod bench;
mod compress;
mod gpu;
mod io;
mod models;
mod progress;
mod sweep;

use bench::*;
use clap::{Parser, Subcommand};
use compress::*;
use models::*;
use semantic_llm_compressor::model::generate::SamplingParams;
use semantic_llm_compressor::model::storage::QuantScheme;
use semantic_llm_compressor::Result;
use std::path::PathBuf;
use sweep::*;

#[derive(Parser)]
#[command(name = "slc", version, about = "Compress GPT-Neo models by truncated SVD + INT8 and measure what it did")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Show a checkpoint's config and every tensor's name, dtype, shape and size.
    Inspect {
        /// A model's folder: config.json, model.safetensors or pytorch_model.bin (or their shards), the tokenizer.
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Continue a prompt (greedy unless a temperature is given).
    Generate(Box<GenerateArgs>),
    /// Compress a checkpoint by truncated SVD + INT8 and write the compressed checkpoint.
    Compress(Box<CompressArgs>),
    /// Per-layer reconstruction error at each rank (the origin's debug_svd_roundtrip).
    Roundtrip {
        #[arg(long)]
        model: PathBuf,
        /// Comma-separated ranks.
        #[arg(long, value_delimiter = ',', default_value = "128,512")]
        ranks: Vec<usize>,
        /// INT8 scheme for the second error column.
        #[arg(long, value_enum, default_value_t = QuantScheme::PerTensor)]
        quant: QuantScheme,
        #[arg(long)]
        json: bool,
    },
    /// Compare a compressed model with the original on a text: perplexity, cosine, MSE, top-1, KL, sizes.
    Eval(Box<EvalArgs>),
    /// Rebuild dense f32 weights from a compressed checkpoint (a plain checkpoint transformers can load).
    Densify {
        #[arg(long)]
        model: PathBuf,
        #[arg(long = "output-dir", alias = "output_dir")]
        output_dir: PathBuf,
    },
    /// Write a random-weight GPT-Neo checkpoint of any shape (trained-like decaying spectra), with the GPT-2
    /// tokenizer: what benchmarks and large-file tests use instead of a download.
    Synth {
        /// A config.json (e.g. tests/configs/gpt-neo-1.3B.json).
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, value_enum, default_value_t = SynthDtype::F32)]
        dtype: SynthDtype,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Put an ignored buffer tensor of this many zero bytes (a hole in the file) before the weights, so that
        /// every weight lies past that offset (e.g. 4400000000 for a test past 4 GiB).
        #[arg(long = "pad-bytes", default_value_t = 0)]
        pad_bytes: u64,
    },
    /// Which matrices can be compressed: each block matrix compressed alone at the chosen setting, and what that did
    /// to the logits on the calibration text (KL, cosine, top-1).
    Sensitivity(Box<SensitivityArgs>),
    /// Methods × budgets on one model and text: quality against stored bytes per point (held-out tokens).
    Sweep(Box<SweepArgs>),
    /// Benchmarks that print figures (see BENCHMARKS.md).
    #[command(subcommand)]
    Bench(BenchCmd),
}

/// Where the forward passes run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Device {
    /// candle's kernels and this crate's, on every core.
    Cpu,
    /// The first GPU adapter wgpu finds (Vulkan, Metal or DX12), with the same WGSL kernels as the page.
    Gpu,
}

#[derive(clap::Args)]
pub struct GenerateArgs {
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    prompt: String,
    #[arg(long = "max-new-tokens", alias = "max_new_tokens", default_value_t = 30)]
    max_new_tokens: usize,
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    #[arg(long = "top-k", alias = "top_k", default_value_t = 0)]
    top_k: usize,
    #[arg(long = "top-p", alias = "top_p", default_value_t = 1.0)]
    top_p: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    device: Device,
    /// Print {"ids": [...], "text": "..."} instead of the text.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct EvalArgs {
    #[arg(long)]
    original: PathBuf,
    #[arg(long)]
    compressed: PathBuf,
    #[arg(long)]
    text: PathBuf,
    #[arg(long, default_value_t = 8192)]
    tokens: usize,
    #[arg(long, default_value_t = 512)]
    window: usize,
    /// Evaluate on the tokens after the first N (e.g. those a calibration read).
    #[arg(long = "skip-tokens", alias = "skip_tokens", default_value_t = 0)]
    skip_tokens: usize,
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    device: Device,
    #[arg(long)]
    json: bool,
}

pub fn run() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Inspect { dir, json } => inspect(&dir, json),
        Cmd::Generate(a) => {
            let (temperature, top_k, top_p, seed) = (a.temperature, a.top_k, a.top_p, a.seed);
            let params =
                SamplingParams { temperature, top_k, top_p, seed, max_new_tokens: a.max_new_tokens, stop_at_eos: true };
            generate(&a.model, &a.prompt, params, a.device, a.json)
        }
        Cmd::Compress(args) => compress(&args),
        Cmd::Sensitivity(args) => sensitivity(&args),
        Cmd::Sweep(args) => sweep(&args),
        Cmd::Roundtrip { model, ranks, quant, json } => roundtrip(&model, &ranks, quant, json),
        Cmd::Eval(a) => eval(&a),
        Cmd::Densify { model, output_dir } => densify(&model, &output_dir),
        Cmd::Synth { config, out, dtype, seed, pad_bytes } => synth(&config, &out, dtype, seed, pad_bytes),
        Cmd::Bench(BenchCmd::Decode { model, prompt, tokens, runs }) => bench_decode(&model, &prompt, tokens, runs),
        Cmd::Bench(BenchCmd::Gpu { model, tokens, decode_tokens, no_cpu, json }) => {
            gpu::bench_gpu(model.as_deref(), tokens, decode_tokens, !no_cpu, json)
        }
        Cmd::Bench(BenchCmd::Calibrated { model, text, memory_gib }) => bench_calibrated(&model, &text, memory_gib),
        Cmd::Bench(BenchCmd::Svd { shapes, rank, power_iters, oversample, runs, exact, json, save }) => {
            bench_svd(&shapes, rank, oversample, power_iters, runs, exact, json, save.as_deref())
        }
    }
}
