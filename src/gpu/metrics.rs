//! The head on the GPU: an evaluation window's figures for the original and the compressed model, computed from
//! their logits in pieces of positions that stay on the GPU (only 13 numbers a position come back), and decoding's
//! last-position logits.

use super::kernels::{Batch, Params};
use super::model::{GpuKv, GpuModel, Scratch};
use super::{Gpu, Readback};
use crate::evaluation::metrics::PositionStats;
use crate::{Error, Result};
use wgpu::Buffer;

/// Numbers a position comes back with (`wgsl/metrics.wgsl`).
const STRIDE: usize = 13;
const NO_TARGET: u32 = u32::MAX;

fn u32_bytes(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Room for evaluating windows of up to `t` tokens.
pub struct EvalRoom {
    scratch: Scratch,
    t: usize,
    ids: Buffer,
    targets: Buffer,
    states_o: Buffer,
    states_c: Buffer,
    logits_o: Buffer,
    logits_c: Buffer,
    /// Positions whose logits are made at once.
    rows_at_once: usize,
    out: Buffer,
}

impl EvalRoom {
    pub fn new(gpu: &Gpu, original: &GpuModel, compressed: Option<&GpuModel>, t: usize) -> Result<Self> {
        let c = &original.cfg;
        let (d, v) = (c.hidden_size as u64, c.vocab_size as u64);
        let rank = compressed.map_or(0, |m| m.scratch_rank());
        let scratch = original.scratch(gpu, t, t, rank)?;
        let row = v * 4;
        let rows_at_once = ((gpu.max_binding().min(64 << 20) / row) as usize).clamp(1, t.max(1));
        let logits = |name| gpu.buffer(name, rows_at_once as u64 * row);
        let room = EvalRoom {
            scratch,
            t,
            ids: gpu.buffer("ids", t as u64 * 4),
            targets: gpu.buffer("targets", t as u64 * 4),
            states_o: gpu.buffer("original states", t as u64 * d * 4),
            states_c: gpu.buffer("compressed states", t as u64 * d * 4),
            logits_o: logits("original logits"),
            logits_c: if compressed.is_some() { logits("compressed logits") } else { gpu.buffer("placeholder", 4) },
            rows_at_once,
            out: gpu.buffer("position figures", (t * STRIDE * 4) as u64),
        };
        gpu.check(&format!("making room to evaluate windows of {t} tokens"))?;
        Ok(room)
    }

    /// The longest window it takes.
    pub fn window(&self) -> usize {
        self.t
    }

    /// Run window `ids` through `original` and `compressed` and compute each position's figures; await the
    /// [`Readback`] and give its bytes to [`position_stats`].
    pub fn submit(
        &self,
        gpu: &Gpu,
        original: &GpuModel,
        compressed: Option<&GpuModel>,
        ids: &[u32],
    ) -> Result<Readback> {
        let t = ids.len();
        if t == 0 || t > self.t {
            return Err(Error::msg(format!("a window of {t} tokens; the room made is for 1 to {}", self.t)));
        }
        let targets: Vec<u32> = (0..t).map(|p| ids.get(p + 1).copied().unwrap_or(NO_TARGET)).collect();
        gpu.write(&self.ids, 0, &u32_bytes(ids));
        gpu.write(&self.targets, 0, &u32_bytes(&targets));
        let mut batch = Batch::new(gpu);
        original.forward(&mut batch, &self.scratch, &self.ids, t, None, &self.states_o)?;
        if let Some(c) = compressed {
            c.forward(&mut batch, &self.scratch, &self.ids, t, None, &self.states_c)?;
        }
        let d = original.cfg.hidden_size;
        let v = original.cfg.vocab_size;
        let mut p0 = 0;
        while p0 < t {
            let rows = self.rows_at_once.min(t - p0);
            original.linear(
                &mut batch,
                &self.scratch,
                &original.head,
                (&self.states_o, p0 * d),
                rows,
                &self.logits_o,
                0,
                0,
            );
            if let Some(c) = compressed {
                c.linear(&mut batch, &self.scratch, &c.head, (&self.states_c, p0 * d), rows, &self.logits_c, 0, 0);
            }
            let params = Params::default().u(rows).u(v).u(p0).u(compressed.is_some() as usize);
            batch.dispatch(
                &gpu.kernels.metrics,
                &[&self.logits_o, &self.logits_c, &self.targets, &self.out],
                params,
                [rows as u32, 1, 1],
            );
            p0 += rows;
        }
        batch.submit();
        gpu.check("evaluating a window")?;
        Ok(gpu.read_back(&self.out, 0, (t * STRIDE * 4) as u64))
    }
}

/// The figures of each position from a window's read back.
pub fn position_stats(bytes: &[u8]) -> Vec<PositionStats> {
    let word = |c: &[u8]| [c[0], c[1], c[2], c[3]];
    let f = |c: &[u8]| f32::from_le_bytes(word(c));
    let u = |c: &[u8]| match u32::from_le_bytes(word(c)) {
        NO_TARGET => 0,
        i => i as usize,
    };
    bytes
        .chunks_exact(STRIDE * 4)
        .map(|r| {
            let x = |i: usize| &r[4 * i..4 * i + 4];
            PositionStats {
                max_o: f(x(0)),
                sum_o: f(x(1)) as f64,
                max_c: f(x(2)),
                sum_c: f(x(3)) as f64,
                target_o: f(x(4)),
                target_c: f(x(5)),
                dot: f(x(6)) as f64,
                norm_o: f(x(7)) as f64,
                norm_c: f(x(8)) as f64,
                sq_err: f(x(9)) as f64,
                kl_raw: f(x(10)) as f64,
                top_o: u(x(11)),
                top_c: u(x(12)),
            }
        })
        .collect()
}

/// A generation on the GPU: the model's key-value cache and the room its steps run in.
pub struct Decoder {
    kv: GpuKv,
    scratch: Scratch,
    ids: Buffer,
    states: Buffer,
    logits: Buffer,
}

impl Decoder {
    /// Room for `prompt` tokens at once and `cap` positions in all.
    pub fn new(gpu: &Gpu, model: &GpuModel, prompt: usize, cap: usize) -> Result<Self> {
        let c = &model.cfg;
        let cap = cap.min(c.max_position_embeddings).max(prompt);
        let kv = model.kv(gpu, cap)?;
        let scratch = model.scratch(gpu, prompt.max(1), cap, 0)?;
        let states = gpu.buffer("states", (prompt.max(1) * c.hidden_size * 4) as u64);
        let d = Decoder {
            kv,
            scratch,
            ids: gpu.buffer("ids", prompt.max(1) as u64 * 4),
            states,
            logits: gpu.buffer("logits", c.vocab_size as u64 * 4),
        };
        gpu.check("making room to generate")?;
        Ok(d)
    }

    /// Positions cached so far.
    pub fn len(&self) -> usize {
        self.kv.len
    }

    pub fn is_empty(&self) -> bool {
        self.kv.len == 0
    }

    /// Run `ids` after the cached positions; the logits of the last come back (`vocab` f32).
    pub fn step(&mut self, gpu: &Gpu, model: &GpuModel, ids: &[u32]) -> Result<Readback> {
        let t = ids.len();
        if t == 0 || t > self.scratch.t {
            return Err(Error::msg(format!("{t} tokens at once; this generation takes 1 to {}", self.scratch.t)));
        }
        gpu.write(&self.ids, 0, &u32_bytes(ids));
        let mut batch = Batch::new(gpu);
        model.forward(&mut batch, &self.scratch, &self.ids, t, Some(&self.kv), &self.states)?;
        let d = model.cfg.hidden_size;
        model.linear(&mut batch, &self.scratch, &model.head, (&self.states, (t - 1) * d), 1, &self.logits, 0, 0);
        batch.submit();
        gpu.check("generating a token")?;
        self.kv.len += t;
        Ok(gpu.read_back(&self.logits, 0, model.cfg.vocab_size as u64 * 4))
    }
}

/// Every position's logits of one window, `[t, vocab]` (for tests and checks against reference logits; the
/// evaluation never reads them back).
pub fn logits(gpu: &Gpu, model: &GpuModel, ids: &[u32]) -> Result<Readback> {
    let (t, c) = (ids.len(), &model.cfg);
    let scratch = model.scratch(gpu, t, t, 0)?;
    let idb = gpu.upload("ids", &u32_bytes(ids));
    let states = gpu.buffer("states", (t * c.hidden_size * 4) as u64);
    let out = gpu.buffer("logits", (t * c.vocab_size * 4) as u64);
    let mut batch = Batch::new(gpu);
    model.forward(&mut batch, &scratch, &idb, t, None, &states)?;
    model.linear(&mut batch, &scratch, &model.head, (&states, 0), t, &out, 0, 0);
    batch.submit();
    gpu.check("computing logits")?;
    Ok(gpu.read_back(&out, 0, (t * c.vocab_size * 4) as u64))
}
