//! The GPU kernels measured against the adapter's own bounds, both measured in the same run: its copy bandwidth
//! (bytes read and written per second by a copy kernel) and its multiply-add throughput (operations per second of
//! independent multiply-adds from registers, two a multiply-add). A kernel reading weights (the one-row products
//! decoding runs) is set against the bandwidth; a kernel doing arithmetic (the tiled products of an evaluation
//! window) against the throughput. Runs unchanged on any adapter, natively (`slc bench gpu`) and in the browser.

use super::kernels::{Batch, Kind, Params, Plan, Variant};
use super::model::{attention_as, layer_norm_as, matmul_as, GpuModel, Heads};
use super::tensor::{GpuMatrix, MatrixSource};
use super::Gpu;
use crate::clock::now;
use crate::model::generate::Rng;
use crate::model::storage::{Factor, QMat};
use crate::Result;
use serde::{Deserialize, Serialize};

/// The adapter's bounds.
#[derive(Clone, Debug, Serialize)]
pub struct Bounds {
    /// Bytes moved (read and written, or read alone) per second by the fastest of the probe kernels.
    pub copy_bytes_per_s: f64,
    /// Multiply-add operations per second (two per multiply-add).
    pub flops: f64,
}

/// One kernel measured.
#[derive(Clone, Debug, Serialize)]
pub struct KernelFigure {
    pub kernel: String,
    pub seconds: f64,
    /// Bytes it must read (weights) per run, and that over the bandwidth bound.
    pub bytes: f64,
    pub bytes_per_s: f64,
    /// Its operations per run, and their rate.
    pub flops: f64,
    pub flops_per_s: f64,
    /// Its rate over the bound it is held to: bandwidth for one-row products, throughput for tiled ones.
    pub of_bound: f64,
}

/// What to measure: the model shape's matrices (`hidden` × `inner`), a window of `tokens`.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct BenchSpec {
    pub hidden: usize,
    pub inner: usize,
    pub tokens: usize,
    /// The vocabulary, for the head's product (0: none).
    #[serde(default)]
    pub vocab: usize,
}

/// Time `record`ed work: repeated until a run of them takes a quarter of a second, then per repetition.
pub async fn time<'g>(gpu: &'g Gpu, record: &mut dyn FnMut(&mut Batch<'g>)) -> Result<f64> {
    let sync = gpu.buffer("sync", 4);
    let mut reps = 1;
    loop {
        let t0 = now();
        let mut batch = Batch::new(gpu);
        for _ in 0..reps {
            record(&mut batch);
        }
        batch.submit();
        gpu.read_back(&sync, 0, 4).read().await?;
        let dt = now() - t0;
        gpu.check("timing a kernel")?;
        if dt > 0.25 || reps >= 4096 {
            return Ok(dt / reps as f64);
        }
        reps *= if dt < 0.01 { 8 } else { 2 };
    }
}

/// The adapter's copy bandwidth and multiply-add throughput: each the best of three runs, the bandwidth the best of
/// three probe kernels (a copy a vec4 an invocation at a time, a copy and a read sixteen consecutive vec4s an
/// invocation at a time), so that no kernel's figure is flattered by a probe the adapter happens to run badly.
pub async fn bounds(gpu: &Gpu) -> Result<Bounds> {
    let bytes = (64u64 << 20).min(gpu.max_binding() / 4 * 4);
    let (src, dst) = (gpu.buffer("copy source", bytes), gpu.buffer("copy target", bytes));
    let vec4s = (bytes / 16) as usize;
    let k = &gpu.kernels;
    let threads = 256 * 1024;
    let out = gpu.buffer("madd out", threads as u64 * 16);
    let iters = 1024;
    let (mut copy, mut flops) = (0f64, 0f64);
    for _ in 0..3 {
        // (kernel, workgroups, bytes moved per byte of the buffer)
        for (kernel, groups, moved) in [(&k.copy, 1024, 2.0), (&k.copy16, 256, 2.0), (&k.read16, 256, 1.0)] {
            let s = time(gpu, &mut |b| {
                b.dispatch(kernel, &[&src, &dst], Params::default().u(vec4s).f(0.0), [groups, 1, 1]);
            })
            .await?;
            copy = copy.max(moved * bytes as f64 / s);
        }
        let madd = time(gpu, &mut |b| {
            b.dispatch(&k.madd, &[&src, &out], Params::default().u(iters).f(0.999), [1024, 1, 1]);
        })
        .await?;
        flops = flops.max(threads as f64 * iters as f64 * 8.0 * 4.0 * 2.0 / madd);
    }
    Ok(Bounds { copy_bytes_per_s: copy, flops })
}

/// Seconds of the work `record` makes, read back through `y`: the best of three after one to warm up.
async fn best_seconds<'g>(
    gpu: &'g Gpu,
    y: &wgpu::Buffer,
    what: &str,
    record: &mut dyn FnMut(&mut Batch<'g>),
) -> Result<f64> {
    let mut best = f64::INFINITY;
    for run in 0..4 {
        let t0 = now();
        let mut b = Batch::new(gpu);
        record(&mut b);
        b.submit();
        gpu.read_back(y, 0, 4).read().await?;
        if run > 0 {
            best = best.min(now() - t0);
        }
    }
    gpu.check(what)?;
    Ok(best)
}

/// Which kernels suit this adapter: the tiled and the rows products timed side by side on the 125M shape's
/// square matrix in f32 and INT8, for a window of 64 rows and for one row; attention in both layouts over a window
/// of 128 tokens, 4 heads of 64.
pub async fn tune(gpu: &Gpu) -> Result<Plan> {
    let (d, t) = (768, 64);
    let x = gpu.buffer("tuning x", (t * d * 4) as u64);
    let y = gpu.buffer("tuning y", (t * d * 4) as u64);
    let dummy = gpu.buffer("placeholder", 4);
    let mats = [matrix(gpu, Kind::F32, d, d)?, matrix(gpu, Kind::Int8PerRow, d, d)?];
    let mut plan = Plan::default();
    for (rows, slot) in [(t, 0), (1, 1)] {
        let mut secs = [0.0; 2];
        for (i, v) in [Variant::Tiled, Variant::Rows].into_iter().enumerate() {
            secs[i] = best_seconds(gpu, &y, "measuring the product kernels", &mut |b| {
                for m in &mats {
                    matmul_as(b, Plan::all(v), m, &x, 0, d, rows, &y, 0, d, &dummy, 0);
                }
            })
            .await?;
        }
        let best = if secs[1] < secs[0] { Variant::Rows } else { Variant::Tiled };
        if slot == 0 {
            plan.many = best;
        } else {
            plan.one = best;
        }
    }
    let (t, shape) = (128, Heads { d: 256, heads: 4, hd: 64 });
    let scores = gpu.buffer("tuning scores", (shape.heads * t * t * 4) as u64);
    let mut secs = [0.0; 2];
    for (i, v) in [Variant::Tiled, Variant::Rows].into_iter().enumerate() {
        secs[i] = best_seconds(gpu, &y, "measuring the attention kernels", &mut |b| {
            attention_as(b, v, [&x, &x, &x, &y, &scores], shape.heads, shape, t, 0, usize::MAX)
        })
        .await?;
    }
    plan.attention = if secs[1] < secs[0] { Variant::Rows } else { Variant::Tiled };
    Ok(plan)
}

fn matrix(gpu: &Gpu, kind: Kind, rows: usize, cols: usize) -> Result<GpuMatrix> {
    let mut r = Rng::new((rows * cols) as u64);
    let f = match kind {
        Kind::Int8PerRow | Kind::Int8PerTensor => {
            let per_tensor = kind == Kind::Int8PerTensor;
            Factor::Int8(QMat {
                rows,
                cols,
                codes: (0..rows * cols).map(|_| (r.next_u64() % 255) as i8).collect(),
                scales: vec![0.01; if per_tensor { 1 } else { rows }],
                zero_points: if per_tensor { vec![3] } else { vec![] },
            })
        }
        Kind::F16 | Kind::Bf16 => Factor::Half {
            rows,
            cols,
            bits: (0..rows * cols).map(|_| half::f16::from_f32(r.approx_normal() * 0.02).to_bits()).collect(),
            bf16: kind == Kind::Bf16,
        },
        Kind::F32 => Factor::f32((0..rows * cols).map(|_| r.approx_normal() * 0.02).collect(), rows, cols),
    };
    GpuMatrix::upload(gpu, "bench", &MatrixSource::Factor(&f))
}

/// The one-row and tiled products of every storage at the shape's three matrix sizes.
pub async fn kernels(gpu: &Gpu, spec: &BenchSpec, bounds: &Bounds) -> Result<Vec<KernelFigure>> {
    let (d, inner, t) = (spec.hidden, spec.inner, spec.tokens);
    let mut out = Vec::new();
    let x = gpu.buffer("x", (t * d.max(inner) * 4) as u64);
    let y = gpu.buffer("y", (t * d.max(inner).max(spec.vocab) * 4) as u64);
    let dummy = gpu.buffer("placeholder", 4);
    for kind in Kind::ALL {
        let head = (spec.vocab > 0).then_some((spec.vocab, d));
        for (n, k) in [(d, d), (inner, d), (d, inner)].into_iter().chain(head) {
            let m = matrix(gpu, kind, n, k)?;
            let wbytes = (n * k) as f64 * kind.bits() as f64 / 8.0;
            for (rows, variant) in [(1, Variant::Tiled), (1, Variant::Rows), (t, Variant::Tiled), (t, Variant::Rows)] {
                let plan = Plan::all(variant);
                let s = time(gpu, &mut |b| matmul_as(b, plan, &m, &x, 0, k, rows, &y, 0, n, &dummy, 0)).await?;
                let flops = 2.0 * (rows * n * k) as f64;
                let (bps, fps) = (wbytes / s, flops / s);
                let of_bound = if rows == 1 { bps / bounds.copy_bytes_per_s } else { fps / bounds.flops };
                out.push(KernelFigure {
                    kernel: format!(
                        "{} {} {rows}×{k}·({n}×{k})ᵀ",
                        match (variant, rows) {
                            (Variant::Rows, _) => "rows",
                            (_, 1) => "gemv",
                            _ => "tiled",
                        },
                        kind.name()
                    ),
                    seconds: s,
                    bytes: wbytes,
                    bytes_per_s: bps,
                    flops,
                    flops_per_s: fps,
                    of_bound,
                });
            }
        }
    }
    // what a dispatch costs with no work in it: the floor under every small product (decoding runs ~11 a layer)
    let s = time(gpu, &mut |b| {
        for _ in 0..100 {
            b.dispatch(&b.gpu().kernels.copy, &[&x, &y], Params::default().u(0).f(0.0), [1, 1, 1]);
        }
    })
    .await?;
    out.push(KernelFigure {
        kernel: "an empty dispatch (of 100 in a row)".into(),
        seconds: s / 100.0,
        bytes: 0.0,
        bytes_per_s: 0.0,
        flops: 0.0,
        flops_per_s: 0.0,
        of_bound: 0.0,
    });
    // attention in both layouts, over a window and for one query (a decoding step) after the window: the scores,
    // the masked softmax and their mix with the values, one head
    let shape = Heads { d, heads: 1, hd: 64.min(d) };
    let q = gpu.buffer("q", (t * d * 4) as u64);
    let scores = gpu.buffer("scores", (t * t.next_multiple_of(4) * 4) as u64);
    let timed = |kernel: String, s: f64, flops: f64| KernelFigure {
        kernel,
        seconds: s,
        bytes: 0.0,
        bytes_per_s: 0.0,
        flops,
        flops_per_s: flops / s,
        of_bound: flops / s / bounds.flops,
    };
    for (name, v) in [("tiled", Variant::Tiled), ("rows", Variant::Rows)] {
        let s = time(gpu, &mut |b| attention_as(b, v, [&q, &x, &x, &y, &scores], 1, shape, t, 0, usize::MAX)).await?;
        // causal: about half the scores are computed
        let flops = 2.0 * 2.0 * (t * t * shape.hd) as f64 / 2.0;
        out.push(timed(format!("attention ({name}), one head of {}, {t} queries", shape.hd), s, flops));
    }
    let keys = t - 1;
    for (name, v) in [("tiled", Variant::Tiled), ("rows", Variant::Rows)] {
        let s =
            time(gpu, &mut |b| attention_as(b, v, [&q, &x, &x, &y, &scores], 1, shape, 1, keys, usize::MAX)).await?;
        let flops = 2.0 * 2.0 * (t * shape.hd) as f64;
        out.push(timed(format!("attention ({name}), one head of {}, one query after {keys}", shape.hd), s, flops));
    }
    // the layer norm in both layouts, for a window and for one row (decoding runs two a layer)
    let g = gpu.buffer("norm weights", (d * 4) as u64);
    for rows in [t, 1] {
        for (name, v) in [("tiled", Variant::Tiled), ("rows", Variant::Rows)] {
            let s = time(gpu, &mut |b| layer_norm_as(b, v, [&x, &g, &g, &y], rows, d, 1e-5)).await?;
            let what = if rows == 1 { "one row".to_string() } else { format!("{rows} rows") };
            out.push(timed(format!("layer norm ({name}), {what} of {d}"), s, 0.0));
        }
    }
    Ok(out)
}

/// Floating-point operations of a window of `t` tokens through `model` (its linear layers at their stored ranks,
/// attention, the head on every position), multiply-adds counted twice.
pub fn window_flops(model: &GpuModel, t: usize) -> f64 {
    let c = &model.cfg;
    let (d, t) = (c.hidden_size as f64, t as f64);
    let mut f = model.linear_macs() as f64 * 2.0 * t;
    // scores and their mix, causal (half), every layer
    f += c.num_layers as f64 * 2.0 * 2.0 * t * t * d / 2.0;
    f
}
