//! GPT-Neo on the GPU: the same forward pass as the CPU's (`crate::model::gpt_neo`), kernel by kernel — embeddings,
//! per block LayerNorm, the q/k/v projections, attention (GPT-Neo's: unscaled scores, causal, global or local),
//! the output projection added to the residual, LayerNorm, the MLP with gelu_new added to the residual — and the
//! final LayerNorm. A window runs whole (evaluation); generation runs a token at a time on a key-value cache.

use super::kernels::{spread, Batch, Params, Plan, Variant, ROWS, ROWS1_G, ROWS1_WG, ROWS_G, ROWS_WG};
use super::tensor::{upload_stored_vector, upload_vector, GpuMatrix, GpuWeight, MatrixSource, Uploads};
use super::Gpu;
use crate::model::checkpoint::Checkpoint;
use crate::model::config::{AttentionKind, GptNeoConfig};
use crate::model::gpt_neo::{Block, GptNeo};
use crate::model::linear::Linear;
use crate::{Error, Result};
use std::sync::Arc;
use wgpu::Buffer;

/// A linear layer on the GPU.
pub struct GpuLinear {
    pub weight: GpuWeight,
    pub bias: Option<Buffer>,
    pub out: usize,
    pub inp: usize,
}

struct Norm {
    g: Buffer,
    b: Buffer,
}

struct GpuBlock {
    ln_1: Norm,
    /// q, k, v, out_proj, c_fc, c_proj
    lin: [GpuLinear; 6],
    ln_2: Norm,
    /// Keys visible to a query: all earlier ones (`usize::MAX`) or the last `window`.
    window: usize,
}

/// A model on the GPU.
pub struct GpuModel {
    pub cfg: GptNeoConfig,
    wte: Arc<GpuMatrix>,
    wpe: Buffer,
    blocks: Vec<GpuBlock>,
    ln_f: Norm,
    pub(crate) head: GpuLinear,
    /// Bound where a kernel's optional input is absent.
    pub(crate) dummy: Buffer,
}

/// What the forward pass computes in, for windows of up to `t` tokens.
pub struct Scratch {
    pub t: usize,
    x: Buffer,
    h: Buffer,
    q: Buffer,
    k: Buffer,
    v: Buffer,
    att: Buffer,
    mlp: Buffer,
    /// A low-rank layer's intermediate, `[t, rank]`.
    lr: Buffer,
    scores: Buffer,
    /// Heads whose scores are computed at once.
    heads_at_once: usize,
}

/// Keys and values of every block, for positions `0..len`, room for `cap`.
pub struct GpuKv {
    k: Vec<Buffer>,
    v: Vec<Buffer>,
    pub cap: usize,
    pub len: usize,
}

fn check_activation(cfg: &GptNeoConfig) -> Result<()> {
    match cfg.activation_function.as_str() {
        "gelu_new" | "gelu_pytorch_tanh" => Ok(()),
        other => Err(Error::Gpu(format!(
            "the GPU kernels compute gelu_new; this model's activation_function is \"{other}\", which runs on the CPU"
        ))),
    }
}

fn windows(cfg: &GptNeoConfig) -> Result<Vec<usize>> {
    Ok(cfg
        .attention_kinds()?
        .into_iter()
        .map(|k| match k {
            AttentionKind::Global => usize::MAX,
            AttentionKind::Local => cfg.window_size,
        })
        .collect())
}

impl GpuModel {
    /// The CPU model `model` on the GPU, `progress(done, total)` after each block.
    pub fn from_cpu(
        gpu: &Gpu,
        model: &GptNeo,
        uploads: &mut Uploads,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        let cfg = &model.cfg;
        check_activation(cfg)?;
        let (emb, head) = model.ends();
        let p = if model.linears()[0].name.starts_with("transformer.") { "transformer." } else { "" };
        let wte = match uploads.weight(gpu, &format!("{p}wte.weight"), &emb.wte)? {
            GpuWeight::Matrix(m) => m,
            GpuWeight::LowRank { .. } => return Err(Error::msg("the token embedding cannot be low-rank")),
        };
        let wpe = upload_vector(gpu, &format!("{p}wpe.weight"), &emb.wpe)?;
        let norm = |name: &str, w: &candle_core::Tensor, b: &candle_core::Tensor| -> Result<Norm> {
            Ok(Norm { g: upload_vector(gpu, name, w)?, b: upload_vector(gpu, name, b)? })
        };
        let linear = |uploads: &mut Uploads, l: &Linear| -> Result<GpuLinear> {
            let (out, inp) = l.weight.shape()?;
            let bias = l.bias.as_ref().map(|b| upload_vector(gpu, &l.name, b)).transpose()?;
            Ok(GpuLinear { weight: uploads.weight(gpu, &l.name, &l.weight)?, bias, out, inp })
        };
        let windows = windows(cfg)?;
        let n = model.blocks().len();
        let mut blocks = Vec::with_capacity(n);
        for (i, b) in model.blocks().iter().enumerate() {
            let l = b.linears();
            let lin = [
                linear(uploads, l[0])?,
                linear(uploads, l[1])?,
                linear(uploads, l[2])?,
                linear(uploads, l[3])?,
                linear(uploads, l[4])?,
                linear(uploads, l[5])?,
            ];
            blocks.push(GpuBlock {
                ln_1: norm(&format!("{p}h.{i}.ln_1"), &b.ln_1.weight, &b.ln_1.bias)?,
                lin,
                ln_2: norm(&format!("{p}h.{i}.ln_2"), &b.ln_2.weight, &b.ln_2.bias)?,
                window: windows[i],
            });
            progress(i + 1, n);
        }
        let ln_f = norm(&format!("{p}ln_f"), &head.ln_f.weight, &head.ln_f.bias)?;
        let head = if head.tied {
            GpuLinear { weight: GpuWeight::Matrix(wte.clone()), bias: None, out: cfg.vocab_size, inp: cfg.hidden_size }
        } else {
            linear(uploads, &head.head)?
        };
        let dummy = gpu.upload("placeholder", &[0; 4]);
        gpu.check("uploading the model")?;
        Ok(GpuModel { cfg: cfg.clone(), wte, wpe, blocks, ln_f, head, dummy })
    }

    /// A plain checkpoint's model on the GPU, each tensor read from its file and written to the GPU a piece at a
    /// time: the model is never whole in this process's memory.
    pub fn from_checkpoint(
        gpu: &Gpu,
        cfg: &GptNeoConfig,
        ckpt: &Checkpoint,
        uploads: &mut Uploads,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        check_activation(cfg)?;
        let p = if ckpt.contains("transformer.wte.weight") { "transformer." } else { "" };
        let (v, h) = (cfg.vocab_size, cfg.hidden_size);
        let shape = |name: &str, want: &[usize]| -> Result<()> {
            let info = ckpt.info(name).ok_or_else(|| Error::tensor(name, "is missing from the checkpoint"))?;
            if info.shape != want {
                return Err(Error::tensor(name, format!("has shape {:?}, config.json implies {want:?}", info.shape)));
            }
            Ok(())
        };
        let matrix = |uploads: &mut Uploads, name: &str, out: usize, inp: usize| -> Result<Arc<GpuMatrix>> {
            shape(name, &[out, inp])?;
            uploads.matrix(gpu, name, &MatrixSource::Stored { ckpt, name })
        };
        let vector = |name: &str, n: usize| -> Result<Buffer> {
            shape(name, &[n])?;
            upload_stored_vector(gpu, ckpt, name)
        };
        let norm = |prefix: &str| -> Result<Norm> {
            Ok(Norm { g: vector(&format!("{prefix}.weight"), h)?, b: vector(&format!("{prefix}.bias"), h)? })
        };
        let linear = |uploads: &mut Uploads, prefix: &str, out: usize, inp: usize| -> Result<GpuLinear> {
            let weight = GpuWeight::Matrix(matrix(uploads, &format!("{prefix}.weight"), out, inp)?);
            let bias_name = format!("{prefix}.bias");
            let bias = if ckpt.contains(&bias_name) { Some(vector(&bias_name, out)?) } else { None };
            Ok(GpuLinear { weight, bias, out, inp })
        };
        let wte = matrix(uploads, &format!("{p}wte.weight"), v, h)?;
        let wpe_name = format!("{p}wpe.weight");
        shape(&wpe_name, &[cfg.max_position_embeddings, h])?;
        let wpe = upload_stored_vector(gpu, ckpt, &wpe_name)?;
        let windows = windows(cfg)?;
        let mut blocks = Vec::with_capacity(cfg.num_layers);
        for (i, &window) in windows.iter().enumerate() {
            let prefix = format!("{p}h.{i}");
            let slots = Block::linear_slots(cfg, &prefix);
            let mut lin = Vec::with_capacity(6);
            for s in &slots {
                lin.push(linear(uploads, &s.prefix, s.out, s.inp)?);
            }
            let lin: [GpuLinear; 6] = lin.try_into().map_err(|_| Error::msg("a block has six linear layers"))?;
            blocks.push(GpuBlock {
                ln_1: norm(&format!("{prefix}.ln_1"))?,
                lin,
                ln_2: norm(&format!("{prefix}.ln_2"))?,
                window,
            });
            progress(i + 1, cfg.num_layers);
        }
        let ln_f = norm(&format!("{p}ln_f"))?;
        let head = if ckpt.contains("lm_head.weight") {
            linear(uploads, "lm_head", v, h)?
        } else {
            GpuLinear { weight: GpuWeight::Matrix(wte.clone()), bias: None, out: v, inp: h }
        };
        let dummy = gpu.upload("placeholder", &[0; 4]);
        gpu.check("uploading the model")?;
        Ok(GpuModel { cfg: cfg.clone(), wte, wpe, blocks, ln_f, head, dummy })
    }

    /// The largest rank of its low-rank layers (0 when none).
    pub(crate) fn scratch_rank(&self) -> usize {
        self.blocks
            .iter()
            .flat_map(|b| b.lin.iter())
            .chain(std::iter::once(&self.head))
            .filter_map(|l| l.weight.rank())
            .max()
            .unwrap_or(0)
    }

    /// Room for windows of up to `t` tokens (and, when `keys` is larger, attention over that many keys).
    pub fn scratch(&self, gpu: &Gpu, t: usize, keys: usize, rank: usize) -> Result<Scratch> {
        let c = &self.cfg;
        let (d, inner) = (c.hidden_size as u64, c.intermediate_size() as u64);
        let (t64, l) = (t.max(1) as u64, keys.max(t).max(1) as u64);
        let limit = gpu.max_binding();
        for (what, bytes) in [("hidden states", t64 * d * 4), ("MLP activations", t64 * inner * 4)] {
            if bytes > limit {
                return Err(Error::Gpu(format!(
                    "a window of {t} tokens needs {bytes} bytes of {what} in one binding; the GPU allows {limit}"
                )));
            }
        }
        // rows of scores 16 bytes apart (`attend.wgsl`)
        let one_head = t64 * l.next_multiple_of(4) * 4;
        let heads_at_once = ((limit.min(256 << 20) / one_head.max(1)) as usize).clamp(1, c.num_heads);
        if one_head > limit {
            return Err(Error::Gpu(format!("attention over {l} keys for {t} queries does not fit one binding")));
        }
        let rank = rank.max(self.scratch_rank()).max(1) as u64;
        let buf = |name: &str, n: u64| gpu.buffer(name, n * 4);
        let s = Scratch {
            t,
            x: buf("hidden", t64 * d),
            h: buf("normed", t64 * d),
            q: buf("queries", t64 * d),
            k: buf("keys", t64 * d),
            v: buf("values", t64 * d),
            att: buf("attention", t64 * d),
            mlp: buf("mlp", t64 * inner),
            lr: buf("low-rank", t64 * rank),
            scores: buf("scores", one_head * heads_at_once as u64),
            heads_at_once,
        };
        gpu.check(&format!("making room for a window of {t} tokens"))?;
        Ok(s)
    }

    /// A key-value cache for `cap` positions.
    pub fn kv(&self, gpu: &Gpu, cap: usize) -> Result<GpuKv> {
        let bytes = (cap.max(1) * self.cfg.hidden_size * 4) as u64;
        if bytes > gpu.max_binding() {
            return Err(Error::Gpu(format!("a key-value cache of {cap} positions does not fit one binding")));
        }
        let n = self.blocks.len();
        let kv = GpuKv {
            k: (0..n).map(|_| gpu.buffer("key cache", bytes)).collect(),
            v: (0..n).map(|_| gpu.buffer("value cache", bytes)).collect(),
            cap,
            len: 0,
        };
        gpu.check(&format!("making a key-value cache of {cap} positions"))?;
        Ok(kv)
    }

    /// Record the forward pass of `t` ids (in `ids`, u32) at positions `pos0..pos0 + t` into `out`, `[t, hidden]`,
    /// the final LayerNorm applied: through `kv` (whose `len` must be `pos0`; the caller advances it) or, without
    /// one, over the window alone (`pos0` 0).
    pub fn forward<'g>(
        &'g self,
        batch: &mut Batch<'g>,
        s: &Scratch,
        ids: &Buffer,
        t: usize,
        kv: Option<&GpuKv>,
        out: &Buffer,
    ) -> Result<()> {
        let c = &self.cfg;
        let d = c.hidden_size;
        let pos0 = kv.map_or(0, |k| k.len);
        if t > s.t {
            return Err(Error::msg(format!("a window of {t} tokens is longer than the room made for {}", s.t)));
        }
        if pos0 + t > c.max_position_embeddings || kv.is_some_and(|k| pos0 + t > k.cap) {
            return Err(Error::msg(format!(
                "position {} is past the model's max_position_embeddings ({}) or its cache",
                pos0 + t,
                c.max_position_embeddings
            )));
        }
        let k = batch.gpu().kernels.embed.as_slice();
        for ch in &self.wte.chunks {
            let params = Params::default().u(t).u(d).u(ch.row0).u(ch.rows).u(pos0).i(self.wte.zero_point);
            batch.dispatch(
                &k[self.wte.kind as usize],
                &[ids, &ch.data, &ch.scales, &self.wpe, &s.x],
                params,
                spread((t * d).div_ceil(256)),
            );
        }
        for (i, b) in self.blocks.iter().enumerate() {
            let (kb, vb) = match kv {
                Some(kv) => (&kv.k[i], &kv.v[i]),
                None => (&s.k, &s.v),
            };
            self.norm(batch, &b.ln_1, &s.x, &s.h, t);
            let [q, kl, vl, o, fc, proj] = &b.lin;
            self.linear(batch, s, q, (&s.h, 0), t, &s.q, 0, 0);
            self.linear(batch, s, kl, (&s.h, 0), t, kb, pos0 * d, 0);
            self.linear(batch, s, vl, (&s.h, 0), t, vb, pos0 * d, 0);
            let c = &self.cfg;
            let shape = Heads { d, heads: c.num_heads, hd: c.head_dim() };
            let bufs = [&s.q, kb, vb, &s.att, &s.scores];
            attention(batch, bufs, s.heads_at_once, shape, t, pos0, b.window);
            self.linear(batch, s, o, (&s.att, 0), t, &s.x, 0, ACCUMULATE);
            self.norm(batch, &b.ln_2, &s.x, &s.h, t);
            self.linear(batch, s, fc, (&s.h, 0), t, &s.mlp, 0, GELU);
            self.linear(batch, s, proj, (&s.mlp, 0), t, &s.x, 0, ACCUMULATE);
        }
        self.norm(batch, &self.ln_f, &s.x, out, t);
        Ok(())
    }

    fn norm<'g>(&'g self, batch: &mut Batch<'g>, n: &Norm, x: &Buffer, y: &Buffer, t: usize) {
        layer_norm(batch, [x, &n.g, &n.b, y], t, self.cfg.hidden_size, self.cfg.layer_norm_epsilon as f32);
    }

    /// `y[.., y_off..] (+)= x · Wᵀ + b` for `t` rows of x from element `x_off`, `y` rows as wide as the layer's output.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn linear<'g>(
        &'g self,
        batch: &mut Batch<'g>,
        s: &Scratch,
        l: &'g GpuLinear,
        (x, x_off): (&Buffer, usize),
        t: usize,
        y: &Buffer,
        y_off: usize,
        mode: u32,
    ) {
        let (bias, bias_mode) = match &l.bias {
            Some(b) => (b, BIAS),
            None => (&self.dummy, 0),
        };
        match &l.weight {
            GpuWeight::Matrix(m) => {
                matmul(batch, m, x, x_off, l.inp, t, y, y_off, l.out, bias, bias_mode | mode);
            }
            GpuWeight::LowRank { u, s: sv, vh } => {
                let r = vh.rows;
                matmul(batch, vh, x, x_off, l.inp, t, &s.lr, 0, r, sv, SCALE);
                matmul(batch, u, &s.lr, 0, r, t, y, y_off, l.out, bias, bias_mode | mode);
            }
        }
    }

    /// Multiply-adds of one position through its linear layers and head (a low-rank layer's at its rank).
    pub fn linear_macs(&self) -> u64 {
        let macs = |l: &GpuLinear| match &l.weight {
            GpuWeight::Matrix(m) => (m.rows * m.cols) as u64,
            GpuWeight::LowRank { u, vh, .. } => (u.rows * u.cols + vh.rows * vh.cols) as u64,
        };
        self.blocks.iter().flat_map(|b| b.lin.iter()).chain(std::iter::once(&self.head)).map(macs).sum()
    }

    /// Bytes of weights a decoding step reads: every linear layer's and the head's storage.
    pub fn decode_bytes(&self) -> u64 {
        let bytes = |l: &GpuLinear| match &l.weight {
            GpuWeight::Matrix(m) => m.bytes(),
            GpuWeight::LowRank { u, vh, .. } => u.bytes() + vh.bytes(),
        };
        self.blocks.iter().flat_map(|b| b.lin.iter()).chain(std::iter::once(&self.head)).map(bytes).sum()
    }

    /// Bytes of weights it holds on the GPU (a tensor shared with another model counted here too).
    pub fn bytes(&self) -> u64 {
        let m = |w: &GpuWeight| match w {
            GpuWeight::Matrix(m) => m.bytes(),
            GpuWeight::LowRank { u, s, vh } => u.bytes() + s.size() + vh.bytes(),
        };
        let lin = |l: &GpuLinear| m(&l.weight) + l.bias.as_ref().map_or(0, |b| b.size());
        let norm = |n: &Norm| n.g.size() + n.b.size();
        let mut total = self.wte.bytes() + self.wpe.size() + norm(&self.ln_f);
        for b in &self.blocks {
            total += norm(&b.ln_1) + norm(&b.ln_2) + b.lin.iter().map(lin).sum::<u64>();
        }
        if !matches!(&self.head.weight, GpuWeight::Matrix(h) if Arc::ptr_eq(h, &self.wte)) {
            total += lin(&self.head);
        }
        total
    }
}

/// How a layer's rows split into heads: rows `d` wide, `heads` of `hd`.
#[derive(Clone, Copy)]
pub(crate) struct Heads {
    pub d: usize,
    pub heads: usize,
    pub hd: usize,
}

/// GPT-Neo's attention of `t` queries at positions `pos0..` over keys `0..pos0 + t` that each sees (all earlier ones,
/// or the last `window`): `[q, k, v, out, scores]`, the scores room for `heads_at_once` heads; the rows kernel's
/// layout where the adapter runs it (`attend.wgsl`), else the tiled batched products and the softmax.
pub(crate) fn attention(
    batch: &mut Batch<'_>,
    bufs: [&Buffer; 5],
    heads_at_once: usize,
    shape: Heads,
    t: usize,
    pos0: usize,
    window: usize,
) {
    let variant = batch.gpu().plan().attention;
    attention_as(batch, variant, bufs, heads_at_once, shape, t, pos0, window)
}

/// [`attention`] in the layout `variant` names (the tiled one where the rows layout does not fit: heads not a multiple
/// of 16 wide).
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_as(
    batch: &mut Batch<'_>,
    variant: Variant,
    [q, kb, vb, att, scores]: [&Buffer; 5],
    heads_at_once: usize,
    Heads { d, heads, hd }: Heads,
    t: usize,
    pos0: usize,
    window: usize,
) {
    let l = pos0 + t;
    let kern = &batch.gpu().kernels;
    if variant == Variant::Rows && hd % 16 == 0 {
        // the rows kernel's layout: rows of scores 16 bytes apart
        let ls = l.next_multiple_of(4);
        let w = window.min(u32::MAX as usize);
        let mut g0 = 0;
        while g0 < heads {
            let hn = heads_at_once.min(heads - g0);
            let p = Params::default().u(t).u(l).u(ls).u(hd).u(d).u(g0).u(pos0).u(w).u(hn);
            let groups = [l.div_ceil(64) as u32, t.div_ceil(ROWS) as u32, hn as u32];
            batch.dispatch(&kern.scores, &[q, kb, scores], p.clone(), groups);
            batch.dispatch(&kern.normalize, &[q, kb, scores], p.clone(), spread((hn * t).div_ceil(64)));
            let groups = [hd.div_ceil(64) as u32, t.div_ceil(ROWS) as u32, hn as u32];
            batch.dispatch(&kern.mix, &[scores, vb, att], p, groups);
            g0 += hn;
        }
        return;
    }
    let mut g0 = 0;
    while g0 < heads {
        let hn = heads_at_once.min(heads - g0);
        // scores[h, i, j] = q[i, h] · k[j, h]
        let p = Params::default()
            .u(t)
            .u(l)
            .u(hd)
            .u(g0 * hd)
            .u(hd)
            .u(d)
            .u(1)
            .u(g0 * hd)
            .u(hd)
            .u(d)
            .u(1)
            .u(0)
            .u(t * l)
            .u(l)
            .u(1)
            .u(1)
            .u(pos0);
        bmm(batch, p, [q, kb, scores], t, l, hn);
        let w = window.min(u32::MAX as usize);
        let p = Params::default().u(t).u(l).u(pos0).u(w).u(hn * t);
        batch.dispatch(&kern.softmax, &[scores], p, spread(hn * t));
        // att[i, h] = Σ_j p[h, i, j] v[j, h]
        let p = Params::default()
            .u(t)
            .u(hd)
            .u(l)
            .u(0)
            .u(t * l)
            .u(l)
            .u(1)
            .u(g0 * hd)
            .u(hd)
            .u(1)
            .u(d)
            .u(g0 * hd)
            .u(hd)
            .u(d)
            .u(1)
            .u(0)
            .u(0);
        bmm(batch, p, [scores, vb, att], t, hd, hn);
        g0 += hn;
    }
}

/// `mode` bits of the linear kernels' epilogue.
pub(crate) const SCALE: u32 = 1;
pub(crate) const BIAS: u32 = 2;
pub(crate) const GELU: u32 = 4;
pub(crate) const ACCUMULATE: u32 = 8;

/// LayerNorm of `t` rows `d` wide, `[x, g, b, y]`: a workgroup a row where the adapter runs attention's tiled layout
/// (barriers and workgroup memory suit it), else an invocation a row without barriers, as attention's rows layout
/// (the same trade, measured once when the device is made).
pub(crate) fn layer_norm(batch: &mut Batch<'_>, bufs: [&Buffer; 4], t: usize, d: usize, eps: f32) {
    let variant = batch.gpu().plan().attention;
    layer_norm_as(batch, variant, bufs, t, d, eps)
}

/// [`layer_norm`] in the layout `variant` names.
pub(crate) fn layer_norm_as(
    batch: &mut Batch<'_>,
    variant: Variant,
    [x, g, b, y]: [&Buffer; 4],
    t: usize,
    d: usize,
    eps: f32,
) {
    let params = Params::default().u(t).u(d).f(eps).u(0).u(0);
    let kern = &batch.gpu().kernels;
    match variant {
        Variant::Rows => batch.dispatch(&kern.layernorm_rows, &[x, g, b, y], params, spread(t.div_ceil(64))),
        Variant::Tiled => batch.dispatch(&kern.layernorm, &[x, g, b, y], params, [t as u32, 1, 1]),
    }
}

/// Attention for at most this many queries at once (decoding) runs `bmm.wgsl`'s `small` products, one output an
/// invocation, not its 64 × 64 tiles.
const SMALL: usize = 4;

/// The batched product `p` describes, `m` × `n` outputs in each of `batches`: the small kernel for decoding, else
/// the tiled one. (A register-tiled kernel without workgroup memory, like the rows kernel, measured 6× slower than
/// the tiled one on lavapipe: its loads are strided scalars.)
pub(crate) fn bmm<'g>(batch: &mut Batch<'g>, p: Params, buffers: [&Buffer; 3], m: usize, n: usize, batches: usize) {
    let kern = &batch.gpu().kernels;
    let (kernel, groups) = if m <= SMALL {
        (&kern.bmm_small, [n.div_ceil(64) as u32, m as u32, batches as u32])
    } else {
        (&kern.bmm, [n.div_ceil(64) as u32, m.div_ceil(64) as u32, batches as u32])
    };
    batch.dispatch(kernel, &buffers, p, groups);
}

/// `y[t, y_off + n] (op)= x[t] · m[n]` for `t` rows of x (each `x_stride` apart from `x_off`), y rows `y_stride`
/// wide; the tiled kernel, or the one-row kernel when `t` is 1.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul<'g>(
    batch: &mut Batch<'g>,
    m: &GpuMatrix,
    x: &Buffer,
    x_off: usize,
    x_stride: usize,
    t: usize,
    y: &Buffer,
    y_off: usize,
    y_stride: usize,
    vecb: &Buffer,
    mode: u32,
) {
    let plan = batch.gpu().plan();
    matmul_as(batch, plan, m, x, x_off, x_stride, t, y, y_off, y_stride, vecb, mode)
}

/// [`matmul`] with the kernels `plan` names.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_as<'g>(
    batch: &mut Batch<'g>,
    plan: Plan,
    m: &GpuMatrix,
    x: &Buffer,
    x_off: usize,
    x_stride: usize,
    t: usize,
    y: &Buffer,
    y_off: usize,
    y_stride: usize,
    vecb: &Buffer,
    mode: u32,
) {
    let kern = &batch.gpu().kernels;
    let kind = m.kind as usize;
    for ch in &m.chunks {
        let params = Params::default()
            .u(t)
            .u(ch.rows)
            .u(m.cols)
            .u(ch.row0)
            .u(x_off)
            .u(x_stride)
            .u(y_off)
            .u(y_stride)
            .u(mode as usize)
            .i(m.zero_point);
        let buffers = [x, &ch.data, &ch.scales, vecb, y];
        let mut variant = if t == 1 { plan.one } else { plan.many };
        if !m.kind.rows_fit(m.cols, x_off, x_stride) {
            variant = Variant::Tiled;
        }
        match (variant, t) {
            (Variant::Tiled, 1) => batch.dispatch(&kern.gemv[kind], &buffers, params, spread(ch.rows.div_ceil(8))),
            (Variant::Tiled, _) => {
                let groups = [ch.rows.div_ceil(64) as u32, t.div_ceil(64) as u32, 1];
                batch.dispatch(&kern.linear[kind], &buffers, params, groups)
            }
            (Variant::Rows, 1) => {
                let groups = [ch.rows.div_ceil(4 * ROWS1_WG * ROWS1_G) as u32, 1, 1];
                batch.dispatch(&kern.rows1[kind], &buffers, params, groups)
            }
            (Variant::Rows, _) => {
                let groups = [ch.rows.div_ceil(4 * ROWS_WG * ROWS_G) as u32, t.div_ceil(ROWS) as u32, 1];
                batch.dispatch(&kern.rows[kind], &buffers, params, groups)
            }
        }
    }
}
