//! Every GPU kernel against the CPU path, on the adapter there is (natively lavapipe in CI: a missing adapter fails).

use super::kernels::{Batch, Params, Plan, Variant};
use super::model::{attention, layer_norm_as, matmul, matmul_as, Heads, ACCUMULATE, BIAS, GELU, SCALE};
use super::tensor::{GpuMatrix, MatrixSource};
use super::{block_on, Gpu};
use crate::evaluation::metrics::{PositionStats, Sums};
use crate::model::generate::Rng;
use crate::model::gpt_neo::LayerNorm;
use crate::model::linear::{Linear, LinearWeight};
use crate::model::storage::{test_int8, Factor, QuantScheme};
use candle_core::{Device, Tensor};
use std::sync::{Arc, OnceLock};

/// The adapter every test shares; none is a failure, not a skip.
fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| {
        block_on(Gpu::new())
            .expect("the GPU device")
            .expect("no GPU adapter: install a Vulkan driver (./build.sh setup installs lavapipe)")
    })
}

/// The same adapter with bindings capped at 4 KiB, so that every matrix of a test is split into many chunks.
fn small_gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| block_on(Gpu::with_binding_cap(4096)).expect("the GPU device").expect("no GPU adapter"))
}

fn randoms(n: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng::new(seed);
    (0..n).map(|_| r.approx_normal()).collect()
}

fn bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn read(gpu: &Gpu, b: &wgpu::Buffer, n: usize) -> Vec<f32> {
    block_on(gpu.read_back(b, 0, n as u64 * 4).read_f32()).unwrap()
}

/// Each storage as the CPU holds it.
fn storages(w: &[f32], n: usize, k: usize) -> Vec<(&'static str, Factor)> {
    let half = |bf16: bool| Factor::Half {
        rows: n,
        cols: k,
        bits: w
            .iter()
            .map(|&x| if bf16 { half::bf16::from_f32(x).to_bits() } else { half::f16::from_f32(x).to_bits() })
            .collect(),
        bf16,
    };
    vec![
        ("f32", Factor::f32(w.to_vec(), n, k)),
        ("f16", half(false)),
        ("bf16", half(true)),
        ("int8 per-row", test_int8(w, n, k, QuantScheme::PerRow)),
        ("int8 per-tensor", test_int8(w, n, k, QuantScheme::PerTensor)),
    ]
}

fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol * scale, "{what}: element {i} is {g}, the CPU's {w} (scale {scale})");
    }
}

#[test]
fn the_linear_kernels_equal_the_cpu_for_every_storage_shape_and_epilogue() {
    // shapes with partial tiles, rows not a whole number of words, and one row of x (the one-row kernel)
    for (t, n, k) in [
        (1, 70, 36),
        (1, 33, 37),
        (5, 70, 37),
        (70, 130, 64),
        (2, 9, 6),
        (9, 300, 40),
        (1, 300, 40),
        (11, 70, 48),
        (1, 70, 48),
    ] {
        let w = randoms(n * k, (n * k) as u64);
        let x = randoms(t * k, 7);
        let bias = randoms(n, 9);
        let res = randoms(t * n, 11);
        for (name, f) in storages(&w, n, k) {
            let f = Arc::new(f);
            let cpu = |b: bool| Linear {
                name: "w".into(),
                weight: LinearWeight::Matrix(f.clone()),
                bias: b.then(|| Tensor::from_vec(bias.clone(), n, &Device::Cpu).unwrap()),
            };
            let xt = Tensor::from_vec(x.clone(), (t, k), &Device::Cpu).unwrap();
            let plain: Vec<f32> = cpu(false).forward(&xt).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let biased: Vec<f32> = cpu(true).forward(&xt).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let mut gelu = vec![0f32; biased.len()];
            crate::model::kernels::gelu_tanh(&biased, &mut gelu);
            let accumulated: Vec<f32> = biased.iter().zip(&res).map(|(a, r)| r + a).collect();
            let scaled: Vec<f32> = plain.iter().enumerate().map(|(i, v)| v * bias[i % n]).collect();
            for (gpu, split) in [(gpu(), "whole"), (small_gpu(), "split")] {
                let m = GpuMatrix::upload(gpu, "w", &MatrixSource::Factor(&f)).unwrap();
                assert_eq!(m.chunks.len() > 1, split == "split" && n * k * m.kind.bits() as usize / 8 > 4096);
                let xb = gpu.upload("x", &bytes(&x));
                let vb = gpu.upload("bias", &bytes(&bias));
                for (mode, want) in [
                    (0, &plain),
                    (BIAS, &biased),
                    (BIAS | GELU, &gelu),
                    (BIAS | ACCUMULATE, &accumulated),
                    (SCALE, &scaled),
                ] {
                    // both kernels of each pair, whichever this adapter runs
                    for v in [Variant::Tiled, Variant::Rows] {
                        let y = gpu.upload("y", &bytes(&res));
                        let mut batch = Batch::new(gpu);
                        matmul_as(&mut batch, Plan::all(v), &m, &xb, 0, k, t, &y, 0, n, &vb, mode);
                        batch.submit();
                        let got = read(gpu, &y, t * n);
                        let what = format!("{name} {t}×{k}·({n}×{k})ᵀ {split}, mode {mode}, {v:?}");
                        assert_close(&got, want, 2e-5, &what);
                    }
                }
            }
        }
    }
}

#[test]
fn a_dense_tensor_in_f16_reads_like_its_factor() {
    let (n, k) = (20, 12);
    let w = randoms(n * k, 3);
    let t = Tensor::from_vec(w.clone(), (n, k), &Device::Cpu).unwrap().to_dtype(candle_core::DType::F16).unwrap();
    let gpu = gpu();
    let a = GpuMatrix::upload(gpu, "w", &MatrixSource::Tensor(&t)).unwrap();
    let x = randoms(3 * k, 5);
    let xt = Tensor::from_vec(x.clone(), (3, k), &Device::Cpu).unwrap();
    let cpu = Linear { name: "w".into(), weight: LinearWeight::Dense(t), bias: None };
    let want: Vec<f32> = cpu.forward(&xt).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let (xb, y, dummy) = (gpu.upload("x", &bytes(&x)), gpu.buffer("y", (3 * n * 4) as u64), gpu.buffer("d", 4));
    let mut batch = Batch::new(gpu);
    matmul(&mut batch, &a, &xb, 0, k, 3, &y, 0, n, &dummy, 0);
    batch.submit();
    assert_close(&read(gpu, &y, 3 * n), &want, 2e-5, "f16 tensor");
}

/// Group-wise codes have no kernel of their own yet: they go up as f16 values, each `(q − z) · scale` rounded to f16
/// (a relative 2⁻¹¹ at most), so the product agrees with the CPU's to what that rounding moves.
#[test]
fn group_wise_codes_go_up_as_halves_and_read_like_the_cpu() {
    let (n, k) = (20, 96);
    let w = randoms(n * k, 3);
    let gpu = gpu();
    for (bits, group) in [(4u8, 64usize), (3, 32), (2, 32)] {
        let f = Factor::Grouped(crate::compression::quant::grouped(&w, n, k, bits, group));
        let a = GpuMatrix::upload(gpu, "w", &MatrixSource::Factor(&f)).unwrap();
        let x = randoms(3 * k, 5);
        let xt = Tensor::from_vec(x.clone(), (3, k), &Device::Cpu).unwrap();
        let cpu = Linear { name: "w".into(), weight: LinearWeight::Matrix(Arc::new(f)), bias: None };
        let want: Vec<f32> = cpu.forward(&xt).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let (xb, y, dummy) = (gpu.upload("x", &bytes(&x)), gpu.buffer("y", (3 * n * 4) as u64), gpu.buffer("d", 4));
        let mut batch = Batch::new(gpu);
        matmul(&mut batch, &a, &xb, 0, k, 3, &y, 0, n, &dummy, 0);
        batch.submit();
        assert_close(&read(gpu, &y, 3 * n), &want, 2e-3, &format!("int{bits} in groups of {group}"));
    }
}

#[test]
fn the_metrics_kernel_gives_the_cpu_sums() {
    let (rows, v) = (5, 1003);
    let lo: Vec<f32> = randoms(rows * v, 1).iter().map(|x| 3.0 * x).collect();
    let mut lc: Vec<f32> = lo.iter().zip(randoms(rows * v, 2)).map(|(o, e)| o + 0.3 * e).collect();
    // a tie for the top: the first index wins on both devices
    let top = (0..v).max_by(|&a, &b| lo[v + a].total_cmp(&lo[v + b])).unwrap();
    lc[v + top + 1] = lc[v + top];
    let ids: Vec<u32> = (0..rows as u32).map(|i| (i * 97) % v as u32).collect();
    let gpu = gpu();
    let targets: Vec<u32> = (0..rows).map(|p| ids.get(p + 1).copied().unwrap_or(u32::MAX)).collect();
    let tb = gpu.upload("targets", &targets.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<_>>());
    let (ob, cb) = (gpu.upload("lo", &bytes(&lo)), gpu.upload("lc", &bytes(&lc)));
    let out = gpu.buffer("out", (rows * 13 * 4) as u64);
    let mut batch = Batch::new(gpu);
    batch.dispatch(
        &gpu.kernels.metrics,
        &[&ob, &cb, &tb, &out],
        Params::default().u(rows).u(v).u(0).u(1),
        [rows as u32, 1, 1],
    );
    batch.submit();
    let bytes = block_on(gpu.read_back(&out, 0, (rows * 13 * 4) as u64).read()).unwrap();
    let got: Vec<PositionStats> = super::metrics::position_stats(&bytes);
    let mut cpu = Sums::default();
    cpu.accumulate(&ids, &lo, Some(&lc), v);
    let mut from_gpu = Sums::default();
    for (p, s) in got.iter().enumerate() {
        from_gpu.add_position(s, p + 1 < rows, true, v);
    }
    let (a, b) = (cpu.report(true, 0, rows, rows, 1), from_gpu.report(true, 0, rows, rows, 1));
    let rel = |x: f64, y: f64| (x - y).abs() / y.abs().max(1e-12);
    assert!(rel(a.ppl_original, b.ppl_original) < 1e-6, "{} vs {}", a.ppl_original, b.ppl_original);
    assert!(rel(a.ppl_compressed.unwrap(), b.ppl_compressed.unwrap()) < 1e-6);
    assert!((a.cosine.unwrap() - b.cosine.unwrap()).abs() < 1e-6);
    assert!(rel(a.mse.unwrap(), b.mse.unwrap()) < 1e-5);
    assert!((a.kl.unwrap() - b.kl.unwrap()).abs() < 1e-5, "{:?} vs {:?}", a.kl, b.kl);
    assert_eq!(a.top1, b.top1);
    assert_eq!(got[1].top_c, top, "the first of two equal logits is the argmax");
}

/// GPT-Neo's attention (unscaled, causal, global or local) computed directly, `[t, heads · hd]`.
fn cpu_attention(q: &[f32], k: &[f32], v: &[f32], h: Heads, t: usize, pos0: usize, window: usize) -> Vec<f32> {
    let mut out = vec![0f32; t * h.d];
    for head in 0..h.heads {
        let col = head * h.hd;
        for i in 0..t {
            let qi = pos0 + i;
            let lo = (qi + 1).saturating_sub(window);
            let dot = |j: usize| (0..h.hd).map(|c| q[i * h.d + col + c] * k[j * h.d + col + c]).sum::<f32>();
            let s: Vec<f32> = (lo..=qi).map(dot).collect();
            let m = s.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let e: Vec<f32> = s.iter().map(|x| (x - m).exp()).collect();
            let sum: f32 = e.iter().sum();
            for (n, j) in (lo..=qi).enumerate() {
                for c in 0..h.hd {
                    out[i * h.d + col + c] += e[n] / sum * v[j * h.d + col + c];
                }
            }
        }
    }
    out
}

#[test]
fn attention_in_both_layouts_equals_the_cpu_with_local_windows_and_a_cache() {
    // its own device: the test switches the products' plan, which the other tests share
    let gpu = block_on(Gpu::new()).expect("the GPU device").expect("no GPU adapter");
    let h = Heads { d: 3 * 32, heads: 3, hd: 32 };
    // (queries, earlier positions in the cache, keys a query sees); 1 and 3 queries take the tiled layout's decoding
    // kernel
    for (t, pos0, window) in [(37, 0, usize::MAX), (37, 0, 8), (21, 13, 16), (70, 0, 64), (3, 30, 16), (1, 40, 256)] {
        let l = pos0 + t;
        let q = randoms(t * h.d, 1 + t as u64);
        let (k, v) = (randoms(l * h.d, 2 + pos0 as u64), randoms(l * h.d, 3 + window as u64 % 97));
        let want = cpu_attention(&q, &k, &v, h, t, pos0, window);
        for (variant, heads_at_once) in [(Variant::Tiled, 3), (Variant::Rows, 3), (Variant::Rows, 2)] {
            gpu.set_plan(Plan::all(variant));
            let (qb, kb, vb) = (gpu.upload("q", &bytes(&q)), gpu.upload("k", &bytes(&k)), gpu.upload("v", &bytes(&v)));
            let att = gpu.buffer("att", (t * h.d * 4) as u64);
            let scores = gpu.buffer("scores", (heads_at_once * t * l.next_multiple_of(4) * 4) as u64);
            let mut batch = Batch::new(&gpu);
            attention(&mut batch, [&qb, &kb, &vb, &att, &scores], heads_at_once, h, t, pos0, window);
            batch.submit();
            let what = format!("{variant:?}, {heads_at_once} heads at once: {t} queries from {pos0}, window {window}");
            assert_close(&read(&gpu, &att, t * h.d), &want, 1e-5, &what);
        }
    }
}

#[test]
fn layer_norm_in_both_layouts_equals_the_cpu() {
    let gpu = gpu();
    let eps = 1e-5;
    for (t, d) in [(1, 256), (5, 300), (70, 96), (130, 768)] {
        // rows of unequal means and spreads, as a residual stream has
        let x: Vec<f32> =
            randoms(t * d, t as u64).iter().enumerate().map(|(i, v)| v * (1 + i / d) as f32 + (i / d) as f32).collect();
        let (g, b) = (randoms(d, 7), randoms(d, 8));
        // the CPU path's LayerNorm
        let cpu = LayerNorm {
            weight: Tensor::from_vec(g.clone(), d, &Device::Cpu).unwrap(),
            bias: Tensor::from_vec(b.clone(), d, &Device::Cpu).unwrap(),
            eps: eps as f64,
        };
        let xt = Tensor::from_vec(x.clone(), (t, d), &Device::Cpu).unwrap();
        let want = cpu.forward(&xt).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for variant in [Variant::Tiled, Variant::Rows] {
            let (xb, gb, bb) = (gpu.upload("x", &bytes(&x)), gpu.upload("g", &bytes(&g)), gpu.upload("b", &bytes(&b)));
            let y = gpu.buffer("y", (t * d * 4) as u64);
            let mut batch = Batch::new(gpu);
            layer_norm_as(&mut batch, variant, [&xb, &gb, &bb, &y], t, d, eps);
            batch.submit();
            assert_close(&read(gpu, &y, t * d), &want, 1e-5, &format!("{variant:?}: {t} rows of {d}"));
        }
    }
}
