//! A measurement, not a check (ignored; QUALITY.md's "low-rank plus quantized residual" section): the hybrid
//! `W ≈ P V + Q(W − P V)` — activation-aware factors P V in INT8 and GPTQ codes of the residual, on the same calibration
//! statistics — on neo-bard-8l, every block matrix the same way, perplexity ratios on tokens 4096..12288 and
//! 12288..20480 after calibrating on the first 4096. Written back dense in f32 (what the forward pass would compute), so
//! it measures the approximation before any storage for it is built.
//!
//! `HYB="BITS,GROUP,FACTOR_BITS;…" cargo test --profile testing --test hybrid -- --ignored --nocapture` (FACTOR_BITS:
//! what the factors may take per parameter; 0: codes alone).
#![cfg(not(target_arch = "wasm32"))]
use semantic_llm_compressor::compression::calib::Calibrator;
use semantic_llm_compressor::compression::gptq::gptq;
use semantic_llm_compressor::compression::matrix::factors;
use semantic_llm_compressor::compression::policy::{FactorStorage, Policy};
use semantic_llm_compressor::compression::source::{build_compressed, considered_matrices, reader};
use semantic_llm_compressor::compression::svd;
use semantic_llm_compressor::evaluation::metrics::Evaluator;
use semantic_llm_compressor::model::bundle::ModelBundle;
use semantic_llm_compressor::model::linear::LinearWeight;
use semantic_llm_compressor::model::storage::QuantScheme;
use std::collections::HashMap;
use std::path::PathBuf;

fn shared(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared").join(p)
}

#[test]
#[ignore = "a measurement of several minutes: QUALITY.md"]
fn hybrid() {
    let b = ModelBundle::open_dir(&shared("models/neo-bard-8l")).unwrap();
    let original = b.load_model(false).unwrap();
    let text = std::fs::read_to_string(shared("corpus/eval-dev.txt")).unwrap();
    let ids = b.tokenizer().unwrap().encode(&text).unwrap();
    let mut cal = Calibrator::new(&ids, 4096, 512).unwrap();
    while cal.step(&original).unwrap() {}
    let grams = cal.finish();
    let mats = considered_matrices(&b.cfg, &b.ckpt).unwrap();
    let read = reader(&b.ckpt);
    let p = Policy::default();
    let spec = std::env::var("HYB").unwrap_or_else(|_| "2,256,0;2,256,0.5;2,64,0.3;3,256,0.5".into());
    let configs: Vec<(u8, usize, f64)> = spec
        .split(';')
        .map(|c| {
            let v: Vec<&str> = c.split(',').collect();
            (v[0].parse().unwrap(), v[1].parse().unwrap(), v[2].parse().unwrap())
        })
        .collect();
    let mut models = Vec::new();
    for &(bits, group, fbits) in &configs {
        let mut weights = HashMap::new();
        let (mut bytes, mut params) = (0usize, 0usize);
        for m in mats.iter().filter(|m| !m.tied) {
            let w = read(&m.name).unwrap();
            let gram = grams[&m.name].mean();
            let per = (m.out + m.inp) as f64 + 8.0;
            let r = ((fbits / 8.0 * m.params() as f64 / per).floor() as usize).min(m.out.min(m.inp));
            let mut resid = w.clone();
            let mut lr_bytes = 0;
            let mut pv = vec![0f32; w.len()];
            if r > 0 {
                let s = svd::whitened(&w, m.out, m.inp, &gram, r, p.damp).unwrap();
                let lw = factors(&s, FactorStorage::Int8(QuantScheme::PerRow));
                lr_bytes = lw.bytes();
                pv = lw.to_dense_f32().unwrap();
                for (x, y) in resid.iter_mut().zip(&pv) {
                    *x -= y;
                }
            }
            let q = gptq(&resid, m.out, m.inp, &gram, bits, group, p.damp).unwrap();
            let mut d = vec![0f32; w.len()];
            q.rows_f32(0, m.out, &mut d);
            for (x, y) in d.iter_mut().zip(&pv) {
                *x += y;
            }
            bytes += lr_bytes + Policy::grouped_bytes(m.out, m.inp, bits, group);
            params += m.params();
            let t = candle_core::Tensor::from_vec(d, (m.out, m.inp), &candle_core::Device::Cpu).unwrap();
            weights.insert(m.name.clone(), LinearWeight::Dense(t));
        }
        eprintln!(
            "INT{bits} g{group} + factors {fbits} bits: {:.4} bits per parameter",
            8.0 * bytes as f64 / params as f64
        );
        models.push(build_compressed(&b.cfg, &b.ckpt, &weights).unwrap());
    }
    for skip in [4096, 12288] {
        let mut ev = Evaluator::after(&ids, skip, 8192, 512, 0, 1).unwrap();
        let refs: Vec<_> = models.iter().collect();
        while ev.step_many(&original, &refs).unwrap() {}
        for (c, r) in configs.iter().zip(ev.reports()) {
            eprintln!(
                "{skip}: {c:?} ×{:.4} cosine {:.4} kl {:.4}",
                r.ppl_compressed.unwrap() / r.ppl_original,
                r.cosine.unwrap_or(f64::NAN),
                r.kl.unwrap_or(f64::NAN)
            );
        }
    }
}
