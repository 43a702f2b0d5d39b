//! `slc bench gpu`: the GPU kernels against the adapter's own bandwidth and throughput, and with a model, a whole
//! evaluation window and decoding against their bounds, beside the CPU path in the same run.

use semantic_llm_compressor::evaluation::metrics::Evaluator;
use semantic_llm_compressor::gpu::bench::{self, BenchSpec, Bounds, KernelFigure};
use semantic_llm_compressor::gpu::metrics::EvalRoom;
use semantic_llm_compressor::gpu::model::GpuModel;
use semantic_llm_compressor::gpu::tensor::Uploads;
use semantic_llm_compressor::gpu::{block_on, run, Gpu};
use semantic_llm_compressor::model::bundle::ModelBundle;
use semantic_llm_compressor::model::generate::{Generation, SamplingParams};
use semantic_llm_compressor::{clock, Error, Result};
use serde::Serialize;
use std::path::Path;

/// A whole job on both devices: seconds, and the GPU's against its bound.
#[derive(Serialize)]
struct Whole {
    what: String,
    gpu_seconds: f64,
    bound_seconds: f64,
    of_bound: f64,
    cpu_seconds: Option<f64>,
}

#[derive(Serialize)]
struct Report {
    adapter: semantic_llm_compressor::gpu::AdapterFacts,
    /// The products' kernels measured fastest on this adapter when its device was made.
    plan: semantic_llm_compressor::gpu::kernels::Plan,
    bounds: Bounds,
    kernels: Vec<KernelFigure>,
    whole: Vec<Whole>,
}

fn best_of(runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..runs.max(1) {
        let t0 = clock::now();
        f()?;
        best = best.min(clock::now() - t0);
    }
    Ok(best)
}

pub(super) fn bench_gpu(model: Option<&Path>, tokens: usize, decode: usize, cpu: bool, json: bool) -> Result<()> {
    let gpu = block_on(Gpu::new())?.ok_or_else(|| Error::Gpu("no GPU adapter was found".into()))?;
    let bounds = block_on(bench::bounds(&gpu))?;
    let bundle = model.map(ModelBundle::open_dir).transpose()?;
    let spec = match &bundle {
        Some(b) => {
            BenchSpec { hidden: b.cfg.hidden_size, inner: b.cfg.intermediate_size(), tokens, vocab: b.cfg.vocab_size }
        }
        None => BenchSpec { hidden: 768, inner: 3072, tokens, vocab: 0 },
    };
    let kernels = block_on(bench::kernels(&gpu, &spec, &bounds))?;
    let mut whole = Vec::new();
    if let Some(b) = &bundle {
        let gm = GpuModel::from_checkpoint(&gpu, &b.cfg, &b.ckpt, &mut Uploads::default(), &mut |_, _| {})?;
        let v = b.cfg.vocab_size as u32;
        let ids: Vec<u32> = (0..tokens as u32).map(|i| (i * 7919 + 13) % v).collect();
        let room = EvalRoom::new(&gpu, &gm, None, tokens)?;
        let window = || -> Result<()> {
            block_on(room.submit(&gpu, &gm, None, &ids)?.read())?;
            Ok(())
        };
        window()?;
        let gpu_s = best_of(3, window)?;
        let bound = bench::window_flops(&gm, tokens) / bounds.flops;
        let cm = if cpu { Some(b.load_model(false)?) } else { None };
        let cpu_s = cm
            .as_ref()
            .map(|m| {
                best_of(2, || {
                    let mut ev = Evaluator::new(&ids, tokens, tokens)?;
                    ev.step(m, None)?;
                    Ok(())
                })
            })
            .transpose()?;
        whole.push(Whole {
            what: format!("evaluation window of {tokens} tokens (the original, its head and figures)"),
            gpu_seconds: gpu_s,
            bound_seconds: bound,
            of_bound: bound / gpu_s,
            cpu_seconds: cpu_s,
        });
        let prompt = &ids[..8.min(ids.len())];
        let params = SamplingParams { max_new_tokens: decode + 1, stop_at_eos: false, ..Default::default() };
        // per token after the first (which also reads the prompt)
        let mut started = 0.0;
        let mut n = 0;
        block_on(run::generate(&gpu, &gm, prompt, params.clone(), &mut |_| {
            n += 1;
            if n == 1 {
                started = clock::now();
            }
            Ok(())
        }))?;
        let gpu_tok = (clock::now() - started) / decode.max(1) as f64;
        let bound = gm.decode_bytes() as f64 / bounds.copy_bytes_per_s;
        let cpu_tok = cm
            .as_ref()
            .map(|m| -> Result<f64> {
                let mut g = Generation::new(m, prompt, params.clone())?;
                g.step(m)?;
                let t0 = clock::now();
                while g.step(m)?.is_some() {}
                Ok((clock::now() - t0) / decode.max(1) as f64)
            })
            .transpose()?;
        whole.push(Whole {
            what: format!("decode step ({} bytes of weights read a token)", gm.decode_bytes()),
            gpu_seconds: gpu_tok,
            bound_seconds: bound,
            of_bound: bound / gpu_tok,
            cpu_seconds: cpu_tok,
        });
    }
    let r = Report { adapter: gpu.facts.clone(), plan: gpu.plan(), bounds, kernels, whole };
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!("adapter: {} (driver {})", r.adapter.label(), r.adapter.driver);
    println!(
        "kernels measured fastest: {:?} for products of many rows of x, {:?} for one, {:?} for attention",
        r.plan.many, r.plan.one, r.plan.attention
    );
    println!(
        "bounds: memory {:.2} GB/s (the fastest probe kernel's bytes moved), multiply-add {:.1} GFLOP/s",
        r.bounds.copy_bytes_per_s / 1e9,
        r.bounds.flops / 1e9
    );
    for k in &r.kernels {
        println!(
            "  {:<44} {:>9.3} ms  {:>7.2} GB/s  {:>8.2} GFLOP/s  {:>5.1}% of its bound",
            k.kernel,
            k.seconds * 1e3,
            k.bytes_per_s / 1e9,
            k.flops_per_s / 1e9,
            100.0 * k.of_bound
        );
    }
    for w in &r.whole {
        let cpu = w
            .cpu_seconds
            .map_or(String::new(), |c| format!("; CPU path {:.3} s ({:.2}× the GPU's time)", c, c / w.gpu_seconds));
        println!(
            "{}: GPU {:.4} s, bound {:.4} s ({:.1}% of the bound){cpu}",
            w.what,
            w.gpu_seconds,
            w.bound_seconds,
            100.0 * w.of_bound
        );
    }
    Ok(())
}
