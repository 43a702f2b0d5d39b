//! `slc bench`: benchmarks that print figures (BENCHMARKS.md records them with their commands).

use clap::Subcommand;
use semantic_llm_compressor::model::bundle::ModelBundle;
use semantic_llm_compressor::model::generate::{Generation, SamplingParams};
use semantic_llm_compressor::{Error, Result};
use std::path::PathBuf;

#[derive(Subcommand)]
pub(super) enum BenchCmd {
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
    /// The GPU kernels against the adapter's own copy bandwidth and multiply-add throughput (both measured here);
    /// with `--model`, an evaluation window and decoding against their bounds, beside the CPU path.
    Gpu {
        #[arg(long)]
        model: Option<PathBuf>,
        /// Tokens of the evaluation window (and rows of the tiled products).
        #[arg(long, default_value_t = 512)]
        tokens: usize,
        /// Tokens decoded after the first.
        #[arg(long = "decode-tokens", default_value_t = 32)]
        decode_tokens: usize,
        /// Leave out the CPU path (a model too large to hold here).
        #[arg(long = "no-cpu")]
        no_cpu: bool,
        #[arg(long)]
        json: bool,
    },
    /// The origin's story's calibrated steps (activation-aware at the fix's size with the allocation check, then
    /// GPTQ's 4-bit codes in groups of 64) through the page's session, step by step, in a heap of `--memory-gib`
    /// (a tab's 4 GiB): how the original is held, how the statistics are collected, time and peak heap per step.
    Calibrated {
        #[arg(long)]
        model: PathBuf,
        /// Calibration text (the story's: the evaluation text).
        #[arg(long)]
        text: PathBuf,
        #[arg(long = "memory-gib", default_value_t = 4.0)]
        memory_gib: f64,
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

pub(super) fn bench_decode(dirs: &[PathBuf], prompt: &str, tokens: usize, runs: usize) -> Result<()> {
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
pub(super) fn bench_svd(
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

/// `slc bench calibrated`: see [`BenchCmd::Calibrated`].
pub(super) fn bench_calibrated(dir: &std::path::Path, text: &std::path::Path, memory_gib: f64) -> Result<()> {
    use semantic_llm_compressor::alloc;
    use semantic_llm_compressor::compression::policy::{BudgetMode, Method, Policy};
    use semantic_llm_compressor::session::{MemoryBudget, ModelFiles, Session};
    use std::time::Instant;
    const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
    let text = std::fs::read_to_string(text).map_err(|e| Error::file(text.display().to_string(), e.to_string()))?;
    let cfg = ModelBundle::open_dir(dir)?.cfg;
    let mut s = Session::new(MemoryBudget::new(memory_gib * GIB, None), None);
    let t = Instant::now();
    s.open(ModelFiles::from_dir(dir)?)?;
    let loaded = s.load(&|_, _, _| {})?;
    let gib = |b: f64| b / GIB;
    println!(
        "original held as {:?}: {:.2} GiB of weights, loaded in {:.1} s; heap {:.2} GiB of {memory_gib} GiB",
        loaded.precision,
        gib(loaded.bytes as f64),
        t.elapsed().as_secs_f64(),
        gib(alloc::live_bytes() as f64)
    );
    // the story's step 3 at the fix's size (form.js: `fixFraction`), then its step 4
    let (h, f) = (cfg.hidden_size as f64, cfg.intermediate_size() as f64);
    let r = (h / 16.0).round().max(1.0);
    let fraction = ((4.0 * r * (2.0 * h + 1.0) + 2.0 * h * f) / (4.0 * h * h + 2.0 * h * f) * 1e4).round() / 1e4;
    let steps = [
        (
            "activation-aware at the fix's size",
            Policy {
                method: Method::Whitened,
                budget: Some(fraction),
                budget_mode: BudgetMode::Energy,
                ..Default::default()
            },
        ),
        ("GPTQ, 4 bits in groups of 64", Policy { method: Method::Gptq, bits: 4, group: 64, ..Default::default() }),
    ];
    // the activation-aware step without its allocation check too, when the check does not fit
    let unchecked = Policy { allocation_check: false, ..steps[0].1.clone() };
    let steps = steps.into_iter().chain([("the same without the allocation check", unchecked)]);
    for (name, policy) in steps {
        alloc::reset_peak();
        let t = Instant::now();
        let mut phases: Vec<(&'static str, f64)> = Vec::new();
        let mut order = Vec::new();
        let run = || {
            s.compress_begin(policy, Some(&text))?;
            loop {
                let ts = Instant::now();
                let Some(step) = s.compress_step()? else { break };
                let phase = step.info.phase;
                order.push(phase);
                match phases.iter_mut().find(|(p, _)| *p == phase) {
                    Some((_, secs)) => *secs += ts.elapsed().as_secs_f64(),
                    None => phases.push((phase, ts.elapsed().as_secs_f64())),
                }
            }
            s.compress_finish()
        };
        let done = match run() {
            Ok(done) => done,
            Err(e) => {
                println!("{name}: refused after {:.1} s: {e}", t.elapsed().as_secs_f64());
                continue;
            }
        };
        let by_block = order.iter().skip_while(|&&p| p == "calibrate").any(|&p| p == "calibrate");
        let times: Vec<String> = phases.iter().map(|(p, secs)| format!("{p} {secs:.1} s")).collect();
        println!(
            "{name}: {:.1} s ({}); statistics {}; peak heap {:.2} GiB; compressed model {:.1} MiB{}",
            t.elapsed().as_secs_f64(),
            times.join(", "),
            if by_block { "a block at a time" } else { "all at once" },
            gib(alloc::peak_bytes() as f64),
            done.resident_bytes as f64 / (1024.0 * 1024.0),
            done.allocation_check.map_or(String::new(), |c| format!(
                "; allocation check: {} KL {:.4}, same fraction {:.4}, {} kept",
                c.mode.name(),
                c.mode_damage.kl,
                c.proportional_damage.kl,
                if c.kept_mode { c.mode.name() } else { "same fraction" }
            )),
        );
    }
    Ok(())
}
