use clap::{Parser, Subcommand};
use semantic_llm_compressor::compression::driver::{compress_checkpoint_with, Threads};
use semantic_llm_compressor::compression::format::Export;
use semantic_llm_compressor::compression::pipeline::totals;
use semantic_llm_compressor::compression::policy::{BudgetMode, BudgetUnit, Method, Policy, RankRule};
use semantic_llm_compressor::compression::svd::SvdMethod;
use semantic_llm_compressor::evaluation::metrics::Evaluator;
use semantic_llm_compressor::explore;
use semantic_llm_compressor::model::bundle::ModelBundle;
use semantic_llm_compressor::model::generate::{Generation, SamplingParams};
use semantic_llm_compressor::model::gpt_neo::GptNeo;
use semantic_llm_compressor::model::storage::QuantScheme;
use semantic_llm_compressor::model::tokenizer::TextStream;
use semantic_llm_compressor::session::{CompressedSizes, EvalSummary};
use semantic_llm_compressor::{alloc, Error, Result};
use std::io::Write;
use std::path::PathBuf;

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
        /// Directory with config.json and model.safetensors (or shards).
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Continue a prompt (greedy unless a temperature is given).
    Generate {
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
        /// Print {"ids": [...], "text": "..."} instead of the text.
        #[arg(long)]
        json: bool,
    },
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
    Eval {
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
        #[arg(long)]
        json: bool,
    },
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

#[derive(clap::Args)]
struct SensitivityArgs {
    #[arg(long)]
    model: PathBuf,
    /// The calibration text (its first --calibration-tokens tokens).
    #[arg(long)]
    text: PathBuf,
    /// svd or whitened.
    #[arg(long, value_enum, default_value_t = Method::Whitened)]
    method: Method,
    #[arg(long, default_value_t = 32)]
    rank: usize,
    /// Probe each matrix at the rank keeping this fraction of its parameters instead of --rank.
    #[arg(long)]
    probe: Option<f64>,
    #[arg(long = "quant-bits", default_value_t = 8)]
    quant_bits: u8,
    #[arg(long, value_enum, default_value_t = QuantScheme::PerRow)]
    quant: QuantScheme,
    #[arg(long = "calibration-tokens", default_value_t = 4096)]
    calibration_tokens: usize,
    #[arg(long = "calibration-window", default_value_t = 512)]
    calibration_window: usize,
    /// Calibration tokens (the first) the damage is measured on.
    #[arg(long = "sensitivity-tokens", default_value_t = 1024)]
    sensitivity_tokens: usize,
    #[arg(long, default_value_t = 0.01)]
    damp: f64,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct SweepArgs {
    #[arg(long)]
    model: PathBuf,
    /// Calibration (the first --calibration-tokens tokens) and evaluation (the --eval-tokens after them) text.
    #[arg(long)]
    text: PathBuf,
    /// METHOD-MODE recipes (methods svd, whitened, refit; modes energy, uniform, proportional, loss) or int8.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "svd-energy,whitened-energy,whitened-proportional,whitened-loss,refit-proportional,refit-loss,int8"
    )]
    recipes: Vec<String>,
    /// Fractions of the linear parameters (or bytes, --budget-unit bytes) kept.
    #[arg(long, value_delimiter = ',', default_value = "0.1,0.2,0.35,0.5")]
    budgets: Vec<f64>,
    #[arg(long = "budget-unit", value_enum, default_value_t = BudgetUnit::Params)]
    budget_unit: BudgetUnit,
    #[arg(long = "calibration-tokens", default_value_t = 4096)]
    calibration_tokens: usize,
    #[arg(long = "eval-tokens", default_value_t = 8192)]
    eval_tokens: usize,
    #[arg(long, default_value_t = 512)]
    window: usize,
    #[arg(long = "sensitivity-tokens", default_value_t = 1024)]
    sensitivity_tokens: usize,
    /// Refit recipes: fit on calibration windows starting every STRIDE tokens (see slc compress --refit-stride).
    #[arg(long = "refit-stride")]
    refit_stride: Option<usize>,
    /// Refit recipes with the loss allocation: keep the ranks planned before the refit (see slc compress).
    #[arg(long = "no-refit-replan")]
    no_refit_replan: bool,
    /// Refit recipes: the block-level refinement's steps (see slc compress --refine-steps).
    #[arg(long = "refine-steps", default_value_t = 0)]
    refine_steps: usize,
    /// Whitened recipes: keep each mode's own ranks (see slc compress --no-allocation-check).
    #[arg(long = "no-allocation-check")]
    no_allocation_check: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SynthDtype {
    F32,
    F16,
    Bf16,
}

/// The GPT-2 tokenizer every GPT-Neo checkpoint uses (the demo model's copy).
const GPT2_TOKENIZER: &[u8] = include_bytes!("../../../www/models/neo-bard-8l/tokenizer.json");

#[derive(clap::Args)]
struct CompressArgs {
    #[arg(long = "input-dir", alias = "input_dir")]
    input_dir: PathBuf,
    #[arg(long = "output-dir", alias = "output_dir")]
    output_dir: PathBuf,
    /// Rank kept for every matrix no --rank-for names.
    #[arg(long, default_value_t = 128)]
    rank: usize,
    /// 8: INT8 factors; 32: f32 factors.
    #[arg(long = "quant-bits", alias = "quant_bits", default_value_t = 8)]
    quant_bits: u8,
    /// Matrices whose smaller side is below this stay dense.
    #[arg(long = "min-dim-for-compression", alias = "min_dim_for_compression", default_value_t = 0)]
    min_dim_for_compression: usize,
    /// Keep dense every matrix whose name contains PATTERN (repeatable).
    #[arg(long)]
    skip: Vec<String>,
    /// PATTERN=RANK: rank for the matrices whose name contains PATTERN (repeatable; first match wins).
    #[arg(long = "rank-for", alias = "rank_for")]
    rank_for: Vec<String>,
    /// INT8 scheme: per-row (symmetric, a scale per row) or per-tensor (the origin's asymmetric scheme).
    #[arg(long, value_enum, default_value_t = QuantScheme::PerRow)]
    quant: QuantScheme,
    /// svd (low rank), whitened (activation-aware SVD from --calibration-text) or int8 (dense INT8, no SVD).
    #[arg(long, value_enum, default_value_t = Method::Svd)]
    method: Method,
    /// Smallest rank keeping this fraction of each matrix's squared Frobenius norm.
    #[arg(long)]
    energy: Option<f64>,
    /// Keep this fraction of the considered matrices' parameters (or bytes, --budget-unit bytes).
    #[arg(long)]
    budget: Option<f64>,
    #[arg(long = "budget-unit", alias = "budget_unit", value_enum, default_value_t = BudgetUnit::Params)]
    budget_unit: BudgetUnit,
    /// energy (global, by normalised singular-value energy), uniform (one rank), proportional (the same fraction
    /// each) or loss; with activation-aware factors checked against proportional (see --no-allocation-check).
    #[arg(long = "budget-mode", alias = "budget_mode", value_enum, default_value_t = BudgetMode::Energy)]
    budget_mode: BudgetMode,
    /// auto, exact or randomized.
    #[arg(long, value_enum, default_value_t = SvdMethod::Auto)]
    svd: SvdMethod,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Compress even where the factors would not be smaller than the dense weight.
    #[arg(long = "no-break-even-guard")]
    no_break_even_guard: bool,
    /// Method whitened with --budget-mode energy, uniform or loss: keep the mode's ranks even where the same fraction
    /// of each matrix measures closer to the original on the calibration text (by default both are factored and
    /// the closer kept).
    #[arg(long = "no-allocation-check")]
    no_allocation_check: bool,
    /// Method whitened: the calibration text (its first --calibration-tokens tokens are read).
    #[arg(long = "calibration-text", alias = "calibration_text")]
    calibration_text: Option<PathBuf>,
    #[arg(long = "calibration-tokens", alias = "calibration_tokens", default_value_t = 2048)]
    calibration_tokens: usize,
    #[arg(long = "calibration-window", alias = "calibration_window", default_value_t = 512)]
    calibration_window: usize,
    /// Method whitened: damping λ = DAMP · mean diagonal of each layer's input Gram matrix.
    #[arg(long, default_value_t = 0.01)]
    damp: f64,
    /// Method refit: pull the closed-form fit toward the original weights with ρ = RIDGE · mean diagonal of the
    /// compressed path's input Gram matrix (0: plain least squares).
    #[arg(long = "refit-ridge", default_value_t = 0.3)]
    refit_ridge: f64,
    /// Method refit: fit on calibration windows starting every STRIDE tokens (overlapping; still the first
    /// --calibration-tokens), each token seen in several contexts (default: side by side).
    #[arg(long = "refit-stride")]
    refit_stride: Option<usize>,
    /// Method refit with --budget-mode loss: keep the ranks planned before the refit instead of spending the budget
    /// left again before each group, with the refitted targets' spectra.
    #[arg(long = "no-refit-replan")]
    no_refit_replan: bool,
    /// Method refit: after each block's refit, STEPS Adam steps on all its factors at once against the original
    /// block's outputs on the refit's windows (0: none).
    #[arg(long = "refine-steps", default_value_t = 0)]
    refine_steps: usize,
    /// Method refit with --refine-steps: each factor's step size, relative to its root-mean-square entry.
    #[arg(long = "refine-lr", default_value_t = 1e-3)]
    refine_lr: f64,
    /// Budget mode loss: calibration tokens (the first) on which each matrix's sensitivity is measured.
    #[arg(long = "sensitivity-tokens", default_value_t = 1024)]
    sensitivity_tokens: usize,
    /// Budget mode loss: probe each matrix alone at the rank keeping this fraction of its parameters (default: the
    /// budget).
    #[arg(long)]
    probe: Option<f64>,
    /// Instead of a size: the smallest budget whose logits cosine on the calibration text is at least T.
    #[arg(long = "target-cosine")]
    target_cosine: Option<f64>,
    /// Instead of a size: the smallest budget whose perplexity on the calibration text is at most R × the original's.
    #[arg(long = "target-ppl-ratio")]
    target_ppl_ratio: Option<f64>,
    /// Target search: stop when the budget is known to within this fraction.
    #[arg(long = "target-tolerance", default_value_t = 0.01)]
    target_tolerance: f64,
    /// Threads that factor matrices side by side, each reading its own slices of the files (default: every core;
    /// policies with a spectrum pass or calibration run on one).
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long)]
    json: bool,
}

impl CompressArgs {
    fn policy(&self) -> Result<Policy> {
        Ok(Policy {
            method: self.method,
            rank: self.rank,
            rank_for: self.rank_for.iter().map(|r| RankRule::parse(r)).collect::<Result<_>>()?,
            skip: self
                .skip
                .iter()
                .flat_map(|s| s.split(','))
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
            min_dim_for_compression: self.min_dim_for_compression,
            quant_bits: self.quant_bits,
            quant: self.quant,
            energy: self.energy,
            budget: self.budget,
            budget_unit: self.budget_unit,
            budget_mode: self.budget_mode,
            svd: self.svd,
            seed: self.seed,
            break_even_guard: !self.no_break_even_guard,
            allocation_check: !self.no_allocation_check,
            calibration_tokens: self.calibration_tokens,
            calibration_window: self.calibration_window,
            damp: self.damp,
            refit_ridge: self.refit_ridge,
            refit_stride: self.refit_stride,
            refit_replan: !self.no_refit_replan,
            refine_steps: self.refine_steps,
            refine_lr: self.refine_lr,
            sensitivity_tokens: self.sensitivity_tokens,
            probe: self.probe,
        })
    }
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Greedy decode speed with the KV cache: tokens/s after the prompt, best of `--runs`. Several `--model`s are
    /// measured side by side, run by run in turn, each against the first.
    Decode {
        #[arg(long, required = true)]
        model: Vec<PathBuf>,
        #[arg(long, default_value = "ROMEO. O my love,")]
        prompt: String,
        #[arg(long, default_value_t = 128)]
        tokens: usize,
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Randomized SVD stage by stage on synthetic trained-like matrices (`slc synth`'s), beside a plain f32 product
    /// of the same shape, with its error against the exact truncation.
    Svd {
        /// Shapes as MxN, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "2048x8192")]
        shapes: Vec<String>,
        #[arg(long, default_value_t = 128)]
        rank: usize,
        #[arg(long = "power-iters", default_value_t = semantic_llm_compressor::compression::svd::POWER_ITERS)]
        power_iters: usize,
        #[arg(long, default_value_t = semantic_llm_compressor::compression::svd::OVERSAMPLE)]
        oversample: usize,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Also time the exact singular values and report the exact truncation's error.
        #[arg(long)]
        exact: bool,
        #[arg(long)]
        json: bool,
        /// Also write each matrix to DIR/MxN.f32 (row-major little-endian f32), for other implementations to run
        /// on the same matrices (`tests/bench/svd-numpy.py DIR`).
        #[arg(long, value_name = "DIR")]
        save: Option<std::path::PathBuf>,
    },
}

pub fn run() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Inspect { dir, json } => inspect(&dir, json),
        Cmd::Generate { model, prompt, max_new_tokens, temperature, top_k, top_p, seed, json } => {
            let params = SamplingParams { temperature, top_k, top_p, seed, max_new_tokens, stop_at_eos: true };
            generate(&model, &prompt, params, json)
        }
        Cmd::Compress(args) => compress(&args),
        Cmd::Sensitivity(args) => sensitivity(&args),
        Cmd::Sweep(args) => sweep(&args),
        Cmd::Roundtrip { model, ranks, quant, json } => roundtrip(&model, &ranks, quant, json),
        Cmd::Eval { original, compressed, text, tokens, window, skip_tokens, json } => {
            eval(&original, &compressed, &text, skip_tokens, tokens, window, json)
        }
        Cmd::Densify { model, output_dir } => densify(&model, &output_dir),
        Cmd::Synth { config, out, dtype, seed, pad_bytes } => synth(&config, &out, dtype, seed, pad_bytes),
        Cmd::Bench(BenchCmd::Decode { model, prompt, tokens, runs }) => bench_decode(&model, &prompt, tokens, runs),
        Cmd::Bench(BenchCmd::Svd { shapes, rank, power_iters, oversample, runs, exact, json, save }) => {
            bench_svd(&shapes, rank, oversample, power_iters, runs, exact, json, save.as_deref())
        }
    }
}

fn bench_decode(dirs: &[PathBuf], prompt: &str, tokens: usize, runs: usize) -> Result<()> {
    let mut models = Vec::new();
    for dir in dirs {
        let b = ModelBundle::open_dir(dir)?;
        let model = b.load_model(false)?;
        let ids = b.tokenizer()?.encode(prompt)?;
        models.push((dir, model, ids));
    }
    let params = SamplingParams { max_new_tokens: tokens, stop_at_eos: false, ..Default::default() };
    let mut best = vec![0f64; models.len()];
    for run in 0..runs.max(1) {
        for ((dir, model, ids), best) in models.iter().zip(&mut best) {
            let mut g = Generation::new(model, ids, params.clone())?;
            g.step(model)?; // the prompt (prefill) and the first token
            let t0 = std::time::Instant::now();
            let mut n = 0;
            while g.step(model)?.is_some() {
                n += 1;
            }
            let rate = n as f64 / t0.elapsed().as_secs_f64();
            println!("run {run}: {}: {n} tokens decoded at {rate:.1} tokens/s", dir.display());
            *best = best.max(rate);
        }
    }
    for ((dir, _, ids), &rate) in models.iter().zip(&best) {
        let against = if best[0] > 0.0 { format!(", {:.2}× the first", rate / best[0]) } else { String::new() };
        println!(
            "decode {}: best {rate:.1} tokens/s{against} (greedy, KV cache, {} prompt tokens, native)",
            dir.display(),
            ids.len()
        );
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn bench_svd(
    shapes: &[String],
    rank: usize,
    oversample: usize,
    power_iters: usize,
    runs: usize,
    exact: bool,
    json: bool,
    save: Option<&std::path::Path>,
) -> Result<()> {
    use semantic_llm_compressor::compression::svd::profile;
    for shape in shapes {
        let (m, n) = shape
            .split_once('x')
            .and_then(|(a, b)| Some((a.trim().parse::<usize>().ok()?, b.trim().parse::<usize>().ok()?)))
            .ok_or_else(|| Error::Policy(format!("--shapes: `{shape}` is not MxN")))?;
        let w = semantic_llm_compressor::model::synth::matrix(m, n, 1)?;
        if let Some(dir) = save {
            let path = dir.join(format!("{m}x{n}.f32"));
            std::fs::create_dir_all(dir)
                .and_then(|_| std::fs::write(&path, w.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>()))
                .map_err(|e| Error::file(path.display().to_string(), format!("cannot be written ({e})")))?;
        }
        let p = profile(&w, m, n, rank, oversample, power_iters, runs, exact)?;
        if json {
            println!("{}", serde_json::to_string(&p)?);
            continue;
        }
        let stages: Vec<String> = p.stages.iter().map(|(s, t)| format!("{s} {:.3}", t)).collect();
        println!(
            "svd {m}x{n} rank {rank} (native, 1 thread): randomized {:.3} s [{}] = {:.2} f32 products of {:.3} s ({} units, {} block Krylov iterations, oversampling {oversample}); error {:.4}{}",
            p.randomized_seconds,
            stages.join(", "),
            p.randomized_seconds / p.matmul_seconds,
            p.matmul_seconds,
            p.products,
            power_iters,
            p.err_randomized,
            match (p.err_exact, p.exact_seconds) {
                (Some(e), Some(t)) => format!(
                    " vs exact {e:.4} ({:+.2}%; exact singular values {t:.2} s)",
                    100.0 * (p.err_randomized / e - 1.0)
                ),
                _ => String::new(),
            }
        );
        if !p.narrow.is_empty() {
            let narrow: Vec<String> = p.narrow.iter().map(|(s, t)| format!("{s} {t:.4}")).collect();
            println!("  products, median of 7 interleaved rounds: {}", narrow.join(", "));
        }
    }
    Ok(())
}

fn inspect(dir: &std::path::Path, json: bool) -> Result<()> {
    let b = ModelBundle::open_dir(dir)?;
    let s = b.summary()?;
    let mut o = std::io::stdout().lock();
    if json {
        writeln!(o, "{}", serde_json::to_string_pretty(&s)?)?;
        return Ok(());
    }
    writeln!(o, "{}: {} ({}compressed)", dir.display(), s.model_type, if s.compressed { "" } else { "not " })?;
    writeln!(
        o,
        "  layers {}  hidden {}  heads {}  mlp {}  vocab {}  positions {}  window {}",
        s.num_layers,
        s.hidden_size,
        s.num_heads,
        s.intermediate_size,
        s.vocab_size,
        s.max_position_embeddings,
        s.window_size
    )?;
    let att: Vec<&str> = s
        .attention
        .iter()
        .map(|a| if *a == semantic_llm_compressor::model::config::AttentionKind::Global { "global" } else { "local" })
        .collect();
    writeln!(o, "  attention {}", att.join(","))?;
    writeln!(
        o,
        "  parameters {}  files {} ({} bytes)  head {}  tokenizer {}",
        s.parameters,
        s.files.len(),
        s.file_bytes,
        if s.tied_head { "tied to wte" } else { "lm_head.weight" },
        if s.has_tokenizer { "yes" } else { "no" }
    )?;
    writeln!(o, "  dtypes {:?}", s.dtypes)?;
    writeln!(o, "{:<56} {:>5} {:>16} {:>12}", "tensor", "dtype", "shape", "bytes")?;
    for t in &s.tensors {
        writeln!(o, "{:<56} {:>5} {:>16} {:>12}", t.name, t.dtype, format!("{:?}", t.shape), t.bytes)?;
    }
    Ok(())
}

fn generate(dir: &std::path::Path, prompt: &str, params: SamplingParams, json: bool) -> Result<()> {
    let b = ModelBundle::open_dir(dir)?;
    let tok = b.tokenizer()?;
    let model = b.load_model(false)?;
    let ids = tok.encode(prompt)?;
    let mut g = Generation::new(&model, &ids, params)?;
    let mut stream = TextStream::default();
    let mut out = std::io::stdout();
    while let Some(id) = g.step(&model)? {
        if !json {
            write!(out, "{}", stream.push(tok, id)?)?;
            out.flush()?;
        }
    }
    if json {
        let text = tok.decode(&g.tokens)?;
        println!("{}", serde_json::json!({"ids": g.tokens, "text": text}));
    } else {
        println!();
    }
    Ok(())
}

/// A progress line on stderr, rewritten in place, when stderr is a terminal.
fn progress(line: &str) {
    use std::io::IsTerminal;
    let mut err = std::io::stderr();
    if err.is_terminal() {
        let _ = write!(err, "\r{line:<90.90}");
    }
}

fn progress_end() {
    use std::io::IsTerminal;
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
}

fn write_file(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|e| Error::file(path.display().to_string(), format!("cannot be written ({e})")))
}

fn compress(a: &CompressArgs) -> Result<()> {
    let policy = a.policy()?;
    let b = ModelBundle::open_dir(&a.input_dir)?;
    if b.is_compressed() {
        return Err(Error::file(
            a.input_dir.display().to_string(),
            "is already a compressed checkpoint; compress the original",
        ));
    }
    let t0 = std::time::Instant::now();
    // the whitened method runs the original over calibration text
    let calibration = match (policy.method.is_activation_aware(), &a.calibration_text) {
        (true, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Error::file(path.display().to_string(), format!("cannot be read ({e})")))?;
            Some((b.load_model(false)?, b.tokenizer()?.encode(&text)?))
        }
        (true, None) => {
            return Err(Error::Policy(format!(
                "--method {} needs --calibration-text FILE",
                serde_json::to_value(policy.method)?.as_str().unwrap_or("whitened")
            )))
        }
        _ => None,
    };
    let open = || Ok(ModelBundle::open_dir(&a.input_dir)?.ckpt);
    let target = match (a.target_cosine, a.target_ppl_ratio) {
        (Some(_), Some(_)) => return Err(Error::Policy("give --target-cosine or --target-ppl-ratio, not both".into())),
        (Some(t), None) => Some(explore::Target::Cosine(t)),
        (None, Some(r)) => Some(explore::Target::PplRatio(r)),
        (None, None) => None,
    };
    let mut path = Vec::new();
    let c = match (target, &calibration) {
        (Some(t), Some((model, ids))) => {
            let (c, p) =
                explore::search_target(&b.cfg, &b.ckpt, model, ids, &policy, t, a.target_tolerance, &mut |p| {
                    progress(&format!("budget {:.4}: cosine {:.4}, perplexity ×{:.3}", p.budget.unwrap_or(1.0), p.cosine, p.ppl_ratio))
                })?;
            path = p;
            c
        }
        (Some(_), None) => {
            return Err(Error::Policy(
                "a quality target is measured on calibration text: use --method whitened or refit with                  --calibration-text FILE"
                    .into(),
            ))
        }
        (None, _) => compress_checkpoint_with(
            &b.cfg,
            &b.ckpt,
            policy,
            calibration.as_ref().map(|(m, ids)| (m, ids.as_slice())),
            Some(Threads { count: a.threads.unwrap_or_else(cores), open: &open }),
            &mut |s| progress(&format!("{} {}/{} {}", s.phase, s.done, s.total, s.name)),
        )?,
    };
    progress_end();
    let seconds = t0.elapsed().as_secs_f64();
    std::fs::create_dir_all(&a.output_dir)
        .map_err(|e| Error::file(a.output_dir.display().to_string(), e.to_string()))?;
    let config = std::fs::read_to_string(a.input_dir.join("config.json"))?;
    let tok_path = a.input_dir.join("tokenizer.json");
    let tokenizer = if tok_path.exists() { Some(std::fs::read_to_string(&tok_path)?) } else { None };
    let export = Export::new(&b.ckpt, &config, tokenizer.as_deref(), &c.weights, &c.reports, &c.policy)?;
    let out_path = a.output_dir.join("model.safetensors");
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(&out_path).map_err(|e| Error::file(out_path.display().to_string(), e.to_string()))?,
    );
    export.write(&b.ckpt, &mut |bytes| Ok(file.write_all(bytes)?))?;
    file.flush()?;
    write_file(&a.output_dir.join("config.json"), config.as_bytes())?;
    if let Some(t) = &tokenizer {
        write_file(&a.output_dir.join("tokenizer.json"), t.as_bytes())?;
    }
    let t = totals(&c.reports);
    // the tensors compression does not touch (embeddings, norms, biases, a tied head), as stored in both
    let untouched = b.tensor_bytes().saturating_sub(t.bytes_considered);
    let mut report = serde_json::json!({
        "policy": c.policy, "totals": t, "layers": c.reports, "seconds": seconds,
        "file_bytes": export.file_bytes(), "tensor_bytes": export.data_bytes, "bytes_untouched": untouched,
    });
    if !path.is_empty() {
        report["target_path"] = serde_json::to_value(&path)?;
    }
    if let Some(check) = &c.allocation_check {
        report["allocation_check"] = serde_json::to_value(check)?;
    }
    write_file(&a.output_dir.join("compression_report.json"), serde_json::to_string_pretty(&report)?.as_bytes())?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let mut o = std::io::stdout().lock();
    writeln!(
        o,
        "{:<48} {:>12} {:>6} {:>9} {:>9} {:>10} {:>10}  storage / reason",
        "matrix", "shape", "rank", "err svd", "err int8", "bytes", "after"
    )?;
    for r in &c.reports {
        let pct = |e: Option<f64>| e.map_or("-".to_string(), |e| format!("{:.2}%", 100.0 * e));
        writeln!(
            o,
            "{:<48} {:>12} {:>6} {:>9} {:>9} {:>10} {:>10}  {}",
            r.name,
            format!("{}x{}", r.shape[0], r.shape[1]),
            r.rank.map_or("-".into(), |x| x.to_string()),
            pct(r.err_svd),
            pct(r.err_stored),
            r.bytes_before,
            r.bytes_after,
            r.reason.as_deref().unwrap_or(&r.storage)
        )?;
    }
    writeln!(
        o,
        "compressed {}/{} layers; linear params {} -> {} ({:.3}); linear bytes {} -> {}, other tensors {} as stored; \
         file {} bytes; {:.1} s",
        t.layers_compressed,
        t.layers_total,
        t.params_considered,
        t.params_after,
        t.params_after as f64 / t.params_considered.max(1) as f64,
        t.bytes_considered,
        t.bytes_after,
        untouched,
        export.file_bytes(),
        seconds
    )?;
    if let Some(k) = &c.allocation_check {
        writeln!(o, "{}", allocation_check_line(k))?;
    }
    for p in &path {
        writeln!(
            o,
            "target search: budget {:.4} -> cosine {:.4}, perplexity {:.2} (x{:.3}) on the calibration text{}",
            p.budget.unwrap_or(1.0),
            p.cosine,
            p.ppl,
            p.ppl_ratio,
            if p.budget == c.policy.budget { "  <- kept" } else { "" }
        )?;
    }
    writeln!(o, "wrote {}", a.output_dir.display())?;
    Ok(())
}

/// The original model and the tokens of a text.
fn model_and_text(model: &std::path::Path, text: &std::path::Path) -> Result<(ModelBundle, GptNeo, Vec<u32>)> {
    let b = ModelBundle::open_dir(model)?;
    let text = std::fs::read_to_string(text)
        .map_err(|e| Error::file(text.display().to_string(), format!("cannot be read ({e})")))?;
    let m = b.load_model(false)?;
    let ids = b.tokenizer()?.encode(&text)?;
    Ok((b, m, ids))
}

fn sensitivity(a: &SensitivityArgs) -> Result<()> {
    let (b, model, ids) = model_and_text(&a.model, &a.text)?;
    let policy = Policy {
        method: a.method,
        rank: a.rank,
        probe: a.probe,
        quant_bits: a.quant_bits,
        quant: a.quant,
        calibration_tokens: a.calibration_tokens,
        calibration_window: a.calibration_window,
        sensitivity_tokens: a.sensitivity_tokens,
        damp: a.damp,
        break_even_guard: false,
        ..Default::default()
    };
    let t0 = std::time::Instant::now();
    let rows = explore::sensitivity(&b.cfg, &b.ckpt, &model, &ids, &policy, &mut |r| {
        progress(&format!("{} kl {:.4}", r.name, r.damage.kl))
    })?;
    progress_end();
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"policy": policy, "rows": rows, "seconds": t0.elapsed().as_secs_f64()})
            )?
        );
        return Ok(());
    }
    let mut o = std::io::stdout().lock();
    writeln!(
        o,
        "{:<48} {:>10} {:>5} {:>9} {:>9} {:>9} {:>8} {:>7}",
        "matrix", "shape", "rank", "err", "err act", "KL", "cosine", "top-1"
    )?;
    for r in &rows {
        writeln!(
            o,
            "{:<48} {:>10} {:>5} {:>8.2}% {:>9} {:>9.5} {:>8.5} {:>7.4}",
            r.name,
            format!("{}x{}", r.shape[0], r.shape[1]),
            r.rank,
            100.0 * r.err_stored,
            r.err_activations.map_or("-".into(), |e| format!("{:.2}%", 100.0 * e)),
            r.damage.kl,
            r.damage.cosine,
            r.damage.top1
        )?;
    }
    writeln!(
        o,
        "each matrix compressed alone; KL(original || compressed) and cosine per position over the first {} tokens of the calibration text; {:.1} s",
        rows.first().map_or(0, |r| r.damage.positions),
        t0.elapsed().as_secs_f64()
    )?;
    Ok(())
}

/// The allocation check's finding in one sentence.
fn allocation_check_line(k: &semantic_llm_compressor::compression::pipeline::AllocationCheck) -> String {
    let (m, p) = (&k.mode_damage, &k.proportional_damage);
    format!(
        "allocation check on the first {} calibration tokens, KL(original || compressed) per position: {} {:.4} \
         (cosine {:.4}), same fraction each {:.4} (cosine {:.4}): {} kept",
        k.tokens,
        k.mode.name(),
        m.kl,
        m.cosine,
        p.kl,
        p.cosine,
        if k.kept_mode { k.mode.name() } else { "same fraction each" }
    )
}

fn sweep(a: &SweepArgs) -> Result<()> {
    let (b, model, ids) = model_and_text(&a.model, &a.text)?;
    let recipes = a.recipes.iter().map(|r| explore::Recipe::parse(r)).collect::<Result<Vec<_>>>()?;
    let base = Policy {
        budget_unit: a.budget_unit,
        calibration_tokens: a.calibration_tokens,
        calibration_window: a.window,
        sensitivity_tokens: a.sensitivity_tokens,
        refit_stride: a.refit_stride,
        refit_replan: !a.no_refit_replan,
        refine_steps: a.refine_steps,
        allocation_check: !a.no_allocation_check,
        ..Default::default()
    };
    let split = explore::Split { skip: a.calibration_tokens, tokens: a.eval_tokens, window: a.window };
    let mut first = true;
    let points = explore::sweep(&b.cfg, &b.ckpt, &model, &ids, &base, &recipes, &a.budgets, split, &mut |p| {
        if a.json {
            return;
        }
        if first {
            println!("{}", p.convention);
            println!(
                "{:<24} {:>6} {:>7} {:>12} {:>9} {:>8} {:>7} {:>7} {:>6} {:>8}",
                "recipe", "budget", "params", "layer bytes", "ppl", "ratio", "cosine", "top-1", "KL", "seconds"
            );
            first = false;
        }
        println!(
            "{:<24} {:>6} {:>7.3} {:>12} {:>9.2} {:>8.3} {:>7.4} {:>7.3} {:>6.3} {:>8.1}",
            p.recipe,
            p.budget.map_or("-".into(), |b| format!("{b}")),
            p.params_kept,
            p.layer_bytes,
            p.ppl,
            p.ppl_ratio,
            p.cosine,
            p.top1,
            p.kl,
            p.seconds
        );
        if let Some(k) = &p.allocation_check {
            println!("    {}", allocation_check_line(k));
        }
    })?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&points)?);
    }
    Ok(())
}

fn roundtrip(dir: &std::path::Path, ranks: &[usize], scheme: QuantScheme, json: bool) -> Result<()> {
    use semantic_llm_compressor::compression::pipeline::{considered_matrices, factors, reader};
    use semantic_llm_compressor::compression::svd;
    let b = ModelBundle::open_dir(dir)?;
    let read = reader(&b.ckpt);
    let mut rows = Vec::new();
    for m in considered_matrices(&b.cfg, &b.ckpt)? {
        if m.tied {
            continue;
        }
        let w = read(&m.name)?;
        let full = svd::exact(&w, m.out, m.inp).map_err(|e| Error::tensor(&m.name, e.to_string()))?;
        for &r in ranks {
            let mut t = full.clone().truncate(r);
            t.canonicalize_signs();
            let err_svd = svd::rel_fro_error(&w, &t.reconstruct());
            let err_int8 = svd::stored_error(&w, &factors(&t, Some(scheme)))?;
            rows.push(serde_json::json!({"name": m.name, "shape": [m.out, m.inp], "rank": t.rank(), "err_svd": err_svd, "err_int8": err_int8}));
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let mut o = std::io::stdout().lock();
    writeln!(
        o,
        "{:<48} {:>12} {:>6} {:>9} {:>9}",
        "matrix",
        "shape",
        "rank",
        "err svd",
        format!("+{}", scheme.as_str())
    )?;
    for r in &rows {
        writeln!(
            o,
            "{:<48} {:>12} {:>6} {:>8.2}% {:>8.2}%",
            r["name"].as_str().unwrap_or(""),
            format!("{}x{}", r["shape"][0], r["shape"][1]),
            r["rank"],
            100.0 * r["err_svd"].as_f64().unwrap_or(f64::NAN),
            100.0 * r["err_int8"].as_f64().unwrap_or(f64::NAN)
        )?;
    }
    Ok(())
}

fn eval(
    original: &std::path::Path,
    compressed: &std::path::Path,
    text: &std::path::Path,
    skip: usize,
    tokens: usize,
    window: usize,
    json: bool,
) -> Result<()> {
    let ob = ModelBundle::open_dir(original)?;
    let cb = ModelBundle::open_dir(compressed)?;
    let om = ob.load_model(false)?;
    // measured: live heap bytes the compressed model holds once loaded
    let (cm, resident, peak) = alloc::measure(|| cb.load_model(false));
    let cm = cm?;
    let text = std::fs::read_to_string(text)
        .map_err(|e| Error::file(text.display().to_string(), format!("cannot be read ({e})")))?;
    let ids = ob.tokenizer()?.encode(&text)?;
    let mut ev = Evaluator::after(&ids, skip, tokens, window, 0, 1)?;
    while ev.step(&om, Some(&cm))? {
        progress(&format!("window {}/{}", ev.done(), ev.total_windows()));
    }
    progress_end();
    let r = ev.report();
    let layers: Option<serde_json::Value> =
        cb.ckpt.metadata().and_then(|m| m.get("layers")).and_then(|l| serde_json::from_str(l).ok());
    let sizes = CompressedSizes { model: &cm, tensor_bytes: cb.tensor_bytes(), resident_bytes: resident };
    let summary = EvalSummary::new(r.clone(), false, &ob, Some(&om), Some(sizes));
    let (layers_compressed, layers_total) = (cm.compressed_layers(), summary.layers_total);
    let mut v = serde_json::to_value(&summary)?;
    let extra = serde_json::json!({
        "file_bytes_original": ob.ckpt.file_bytes(),
        "file_bytes_compressed": cb.ckpt.file_bytes(),
        "peak_load_bytes_compressed": peak,
        "layers": layers,
    });
    if let (Some(a), Some(b)) = (v.as_object_mut(), extra.as_object()) {
        a.extend(b.clone());
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let f = |k: &str| v[k].as_f64().map_or("-".to_string(), |x| format!("{x:.4}"));
    println!("{}", r.convention);
    println!("perplexity original {}  compressed {}", f("ppl_original"), f("ppl_compressed"));
    println!(
        "cosine per position {}  global {}  mse {}  top-1 {}  kl {}",
        f("cosine"),
        f("cosine_global"),
        f("mse"),
        f("top1"),
        f("kl")
    );
    println!(
        "bytes original {}  compressed {} (resident, measured: {})  layers compressed {}/{}",
        v["bytes_original"], v["bytes_compressed"], resident, layers_compressed, layers_total
    );
    Ok(())
}

/// The machine's cores.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn synth(config: &std::path::Path, out: &std::path::Path, dtype: SynthDtype, seed: u64, pad: u64) -> Result<()> {
    use semantic_llm_compressor::model::config::GptNeoConfig;
    use semantic_llm_compressor::model::synth::Synth;
    let text = std::fs::read_to_string(config).map_err(|e| Error::file(config.display().to_string(), e.to_string()))?;
    let cfg = GptNeoConfig::from_json(&text)?;
    if cfg.vocab_size < 50257 {
        return Err(Error::Config(format!(
            "{}: vocab_size {} is smaller than the GPT-2 tokenizer's 50257 tokens that `slc synth` writes",
            config.display(),
            cfg.vocab_size
        )));
    }
    let (dt, name) = match dtype {
        SynthDtype::F32 => (safetensors::Dtype::F32, "float32"),
        SynthDtype::F16 => (safetensors::Dtype::F16, "float16"),
        SynthDtype::Bf16 => (safetensors::Dtype::BF16, "bfloat16"),
    };
    let plan = Synth::new(&cfg, dt, seed, pad)?;
    std::fs::create_dir_all(out)?;
    let t = std::time::Instant::now();
    plan.write(&out.join("model.safetensors"))?;
    let mut json: serde_json::Value = serde_json::from_str(&text)?;
    json["torch_dtype"] = serde_json::json!(name);
    write_file(&out.join("config.json"), serde_json::to_string_pretty(&json)?.as_bytes())?;
    write_file(&out.join("tokenizer.json"), GPT2_TOKENIZER)?;
    println!(
        "wrote {} ({:.2} GB of {name} weights{}, seed {seed}) in {:.1} s",
        out.display(),
        plan.weight_bytes() as f64 / 1e9,
        if pad > 0 { format!(" after a {pad}-byte buffer") } else { String::new() },
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

fn densify(dir: &std::path::Path, out: &std::path::Path) -> Result<()> {
    use safetensors::tensor::TensorView;
    let b = ModelBundle::open_dir(dir)?;
    let model = b.load_model(false)?;
    let dense = semantic_llm_compressor::compression::format::densify(&model)?;
    let replaced: std::collections::HashSet<String> = dense.iter().map(|(n, _, _)| n.clone()).collect();
    let is_factor = |n: &str| replaced.iter().any(|r| n.starts_with(&format!("{r}.")));
    let mut tensors: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for name in b.ckpt.names() {
        if is_factor(name) {
            continue;
        }
        let raw = b.ckpt.read(name)?;
        tensors.push((name.clone(), raw.dtype, raw.shape, raw.data));
    }
    for (name, shape, w) in dense {
        tensors.push((name, safetensors::Dtype::F32, shape, w.iter().flat_map(|x| x.to_le_bytes()).collect()));
    }
    let views = tensors
        .iter()
        .map(|(n, d, s, bytes)| {
            Ok((n.clone(), TensorView::new(*d, s.clone(), bytes).map_err(|e| Error::tensor(n, e.to_string()))?))
        })
        .collect::<Result<Vec<_>>>()?;
    std::fs::create_dir_all(out)?;
    let bytes = safetensors::serialize(views, None).map_err(|e| Error::msg(e.to_string()))?;
    write_file(&out.join("model.safetensors"), &bytes)?;
    let cfg = semantic_llm_compressor::model::weights::embedded_config(&b.ckpt)
        .map_or_else(|| std::fs::read_to_string(dir.join("config.json")), Ok)?;
    write_file(&out.join("config.json"), cfg.as_bytes())?;
    if let Some(t) = semantic_llm_compressor::model::weights::embedded_tokenizer(&b.ckpt) {
        write_file(&out.join("tokenizer.json"), t.as_bytes())?;
    }
    println!("wrote {} ({} tensors, linear layers as dense f32)", out.display(), tensors.len());
    Ok(())
}
