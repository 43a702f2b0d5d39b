//! GPT-Neo in candle: token + position embeddings, pre-LayerNorm blocks of global or local causal self-attention
//! and an MLP, a final LayerNorm and a (usually tied) head. Matches Hugging Face's `GPTNeoForCausalLM`:
//! attention scores are **not** scaled by 1/√d; a local query at position i sees keys i − window < j ≤ i; masked
//! scores are set to `f32::MIN` before the softmax.

use crate::model::config::{AttentionKind, GptNeoConfig};
use crate::model::linear::{Linear, LinearWeight, Observer};
use crate::model::weights::{tensor_prefix, Weights};
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor, D};

#[derive(Clone, Debug)]
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn new(w: &dyn Weights, prefix: &str, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: w.dense(&format!("{prefix}.weight"), &[dim])?.to_dtype(DType::F32)?,
            bias: w.dense(&format!("{prefix}.bias"), &[dim])?.to_dtype(DType::F32)?,
            eps,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        let xn = xc.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        Ok(xn.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)?)
    }
}

fn linear(w: &dyn Weights, prefix: &str, out: usize, inp: usize) -> Result<Linear> {
    let name = format!("{prefix}.weight");
    let weight = w.linear(&name, out, inp)?;
    let bias_name = format!("{prefix}.bias");
    let bias = if w.contains(&bias_name) { Some(w.dense(&bias_name, &[out])?.to_dtype(DType::F32)?) } else { None };
    Ok(Linear { name, weight, bias })
}

#[derive(Clone, Debug)]
struct SelfAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
    head_dim: usize,
    kind: AttentionKind,
    window: usize,
}

impl SelfAttention {
    /// `x`: [b, t, hidden] at absolute positions `pos0..pos0 + t`.
    fn forward(
        &self,
        x: &Tensor,
        pos0: usize,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        obs: Observer,
    ) -> Result<Tensor> {
        let (b, t, hidden) = x.dims3()?;
        let split = |y: Tensor| -> Result<Tensor> {
            Ok(y.reshape((b, t, self.heads, self.head_dim))?.transpose(1, 2)?.contiguous()?)
        };
        let q = split(self.q.forward_observed(x, &mut *obs)?)?;
        let mut k = split(self.k.forward_observed(x, &mut *obs)?)?;
        let mut v = split(self.v.forward_observed(x, &mut *obs)?)?;
        if let Some(slot) = cache {
            if let Some((pk, pv)) = slot.as_ref() {
                k = Tensor::cat(&[pk, &k], 2)?;
                v = Tensor::cat(&[pv, &v], 2)?;
            }
            *slot = Some((k.clone(), v.clone()));
        }
        let tk = k.dim(2)?;
        // GPT-Neo does not scale the scores by 1/sqrt(head_dim).
        let scores = q.matmul(&k.t()?)?; // [b, heads, t, tk]
                                         // Query i (absolute position pos0 + i) sees keys lo..=pos0 + i: every earlier one (global) or the last
                                         // `window` (local). Masked scores are f32::MIN in Hugging Face's code, whose exp underflows to exactly 0;
                                         // the kernel writes that 0 directly and runs the softmax over the visible range only.
        let mut probs: Vec<f32> = scores.flatten_all()?.to_vec1()?;
        let window = match self.kind {
            AttentionKind::Global => usize::MAX,
            AttentionKind::Local => self.window,
        };
        crate::model::kernels::masked_softmax(&mut probs, t, tk, |i| {
            let qi = pos0 + i;
            (qi.saturating_sub(window.saturating_sub(1)), qi)
        });
        let probs = Tensor::from_vec(probs, scores.shape(), &Device::Cpu)?;
        let y = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, t, hidden))?;
        self.out.forward_observed(&y, obs)
    }
}

#[derive(Clone, Debug)]
struct Mlp {
    c_fc: Linear,
    c_proj: Linear,
    act: Activation,
}

#[derive(Clone, Copy, Debug)]
enum Activation {
    GeluTanh,
    GeluErf,
    Relu,
    Silu,
}

/// `gelu_new` through [`crate::model::kernels::gelu_tanh`] (vectorized), for contiguous f32 on the CPU (candle's own
/// gelu otherwise, see [`Activation::apply`]).
struct GeluTanhOp;

impl candle_core::CustomOp1 for GeluTanhOp {
    fn name(&self) -> &'static str {
        "gelu-tanh-vectorized"
    }
    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        match (storage, layout.contiguous_offsets()) {
            (candle_core::CpuStorage::F32(data), Some((a, b))) => {
                let mut out = vec![0f32; b - a];
                crate::model::kernels::gelu_tanh(&data[a..b], &mut out);
                Ok((candle_core::CpuStorage::F32(out), layout.shape().clone()))
            }
            _ => Err(candle_core::Error::Msg("gelu-tanh-vectorized: contiguous f32 only".into())),
        }
    }
}

impl Activation {
    fn from_name(name: &str) -> Result<Self> {
        Ok(match name {
            "gelu_new" | "gelu_pytorch_tanh" => Self::GeluTanh,
            "gelu" => Self::GeluErf,
            "relu" => Self::Relu,
            "silu" => Self::Silu,
            other => return Err(Error::Config(format!("activation_function \"{other}\" is not supported"))),
        })
    }
    fn apply(self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::GeluTanh if x.dtype() == DType::F32 && x.is_contiguous() && x.device().is_cpu() => {
                x.apply_op1_no_bwd(&GeluTanhOp)?
            }
            Self::GeluTanh => x.gelu()?,
            Self::GeluErf => x.gelu_erf()?,
            Self::Relu => x.relu()?,
            Self::Silu => x.silu()?,
        })
    }
}

/// One transformer block: LayerNorm, self-attention, LayerNorm, MLP, with residual connections.
#[derive(Clone, Debug)]
pub struct Block {
    ln_1: LayerNorm,
    attn: SelfAttention,
    ln_2: LayerNorm,
    mlp: Mlp,
}

/// A linear layer of a block: its name prefix (without `.weight`) and its `[out, inp]` shape.
pub struct LinearSlot {
    pub prefix: String,
    pub out: usize,
    pub inp: usize,
}

impl Block {
    /// The six linear layers of block `prefix` (e.g. `transformer.h.3`), in the order q, k, v, out_proj, c_fc,
    /// c_proj: the one place their names and shapes are spelled.
    pub fn linear_slots(cfg: &GptNeoConfig, prefix: &str) -> [LinearSlot; 6] {
        let (h, inner) = (cfg.hidden_size, cfg.intermediate_size());
        let a = format!("{prefix}.attn.attention");
        let m = format!("{prefix}.mlp");
        let slot = |prefix: String, out, inp| LinearSlot { prefix, out, inp };
        [
            slot(format!("{a}.q_proj"), h, h),
            slot(format!("{a}.k_proj"), h, h),
            slot(format!("{a}.v_proj"), h, h),
            slot(format!("{a}.out_proj"), h, h),
            slot(format!("{m}.c_fc"), inner, h),
            slot(format!("{m}.c_proj"), h, inner),
        ]
    }

    fn new(w: &dyn Weights, cfg: &GptNeoConfig, prefix: &str, kind: AttentionKind) -> Result<Self> {
        let h = cfg.hidden_size;
        let eps = cfg.layer_norm_epsilon;
        let [q, k, v, out, c_fc, c_proj] = Block::linear_slots(cfg, prefix).map(|s| linear(w, &s.prefix, s.out, s.inp));
        Ok(Self {
            ln_1: LayerNorm::new(w, &format!("{prefix}.ln_1"), h, eps)?,
            attn: SelfAttention {
                q: q?,
                k: k?,
                v: v?,
                out: out?,
                heads: cfg.num_heads,
                head_dim: cfg.head_dim(),
                kind,
                window: cfg.window_size,
            },
            ln_2: LayerNorm::new(w, &format!("{prefix}.ln_2"), h, eps)?,
            mlp: Mlp { c_fc: c_fc?, c_proj: c_proj?, act: Activation::from_name(&cfg.activation_function)? },
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        pos0: usize,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        obs: Observer,
    ) -> Result<Tensor> {
        let a = self.attn.forward(&self.ln_1.forward(x)?, pos0, cache, &mut *obs)?;
        let x = (x + a)?;
        let h = self.mlp.c_fc.forward_observed(&self.ln_2.forward(&x)?, &mut *obs)?;
        let m = self.mlp.c_proj.forward_observed(&self.mlp.act.apply(&h)?, obs)?;
        Ok((x + m)?)
    }

    /// The six linear layers, in the order q, k, v, out_proj, c_fc, c_proj.
    pub fn linears(&self) -> [&Linear; 6] {
        [&self.attn.q, &self.attn.k, &self.attn.v, &self.attn.out, &self.mlp.c_fc, &self.mlp.c_proj]
    }
}

/// Keys and values of every block for the positions seen so far.
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    /// Number of positions cached.
    pub seq_len: usize,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        Self { layers: vec![None; num_layers], seq_len: 0 }
    }
}

/// Token and position embeddings.
#[derive(Clone, Debug)]
pub struct Embeddings {
    /// The token embedding, `[vocab, hidden]`: f32, or f16/bf16 as stored.
    wte: LinearWeight,
    wpe: Tensor,
    vocab: usize,
    hidden: usize,
}

impl Embeddings {
    pub fn load(cfg: &GptNeoConfig, w: &dyn Weights) -> Result<Self> {
        let p = tensor_prefix(w)?;
        let (v, h) = (cfg.vocab_size, cfg.hidden_size);
        let wte = w.linear(&format!("{p}wte.weight"), v, h)?;
        if matches!(wte, LinearWeight::LowRank { .. }) {
            return Err(Error::tensor(
                format!("{p}wte.weight"),
                "is stored as low-rank factors; the token embedding must be dense",
            ));
        }
        let wpe = w.dense(&format!("{p}wpe.weight"), &[cfg.max_position_embeddings, h])?.to_dtype(DType::F32)?;
        Ok(Self { wte, wpe, vocab: v, hidden: h })
    }

    /// `[b, t, hidden]` for ids `[b, t]` at positions `pos0..pos0 + t`.
    pub fn forward(&self, ids: &Tensor, pos0: usize) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let max = self.wpe.dim(0)?;
        if pos0 + t > max {
            return Err(Error::msg(format!(
                "a sequence of {} tokens is longer than the model's max_position_embeddings ({max})",
                pos0 + t
            )));
        }
        let flat = ids.flatten_all()?;
        let v = self.vocab as u32;
        if let Some(bad) = flat.to_vec1::<u32>()?.into_iter().find(|&i| i >= v) {
            return Err(Error::msg(format!("token id {bad} is outside the vocabulary of {v} tokens")));
        }
        let h = self.hidden;
        let tok = match &self.wte {
            LinearWeight::Dense(w) => w.index_select(&flat, 0)?.to_dtype(DType::F32)?,
            LinearWeight::Matrix(f) => {
                let ids = flat.to_vec1::<u32>()?;
                let mut rows = vec![0f32; ids.len() * h];
                for (row, &id) in rows.chunks_exact_mut(h).zip(&ids) {
                    f.rows_f32(id as usize, id as usize + 1, row);
                }
                Tensor::from_vec(rows, (ids.len(), h), &Device::Cpu)?
            }
            LinearWeight::LowRank { .. } => return Err(Error::msg("the token embedding cannot be low-rank")),
        };
        let tok = tok.reshape((b, t, h))?;
        let pos = self.wpe.narrow(0, pos0, t)?;
        Ok(tok.broadcast_add(&pos)?)
    }

    fn bytes(&self) -> usize {
        self.wte.bytes() + self.wpe.elem_count() * 4
    }
}

/// The final LayerNorm and the head (tied to the token embedding, or `lm_head.weight`).
#[derive(Clone, Debug)]
pub struct Head {
    ln_f: LayerNorm,
    head: Linear,
    /// Whether the head shares the token embedding.
    pub tied: bool,
}

impl Head {
    /// The head; `wte` is the token embedding when it is already loaded (a tied head shares it), else it is read.
    pub fn load(cfg: &GptNeoConfig, w: &dyn Weights, wte: Option<&LinearWeight>) -> Result<Self> {
        let p = tensor_prefix(w)?;
        let (v, h) = (cfg.vocab_size, cfg.hidden_size);
        let ln_f = LayerNorm::new(w, &format!("{p}ln_f"), h, cfg.layer_norm_epsilon)?;
        let (head, tied) = if w.contains("lm_head.weight") {
            (linear(w, "lm_head", v, h)?, false)
        } else {
            let weight = match wte {
                Some(x) => x.clone(),
                None => w.linear(&format!("{p}wte.weight"), v, h)?,
            };
            (Linear { name: "lm_head.weight".into(), weight, bias: None }, true)
        };
        Ok(Self { ln_f, head, tied })
    }

    /// Logits for the last block's output.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.head.forward(&self.ln_f.forward(x)?)
    }
}

impl Block {
    /// Block `index` of the model.
    pub fn load(cfg: &GptNeoConfig, w: &dyn Weights, index: usize) -> Result<Self> {
        let p = tensor_prefix(w)?;
        let kind = *cfg
            .attention_kinds()?
            .get(index)
            .ok_or_else(|| Error::Config(format!("there is no block {index}: num_layers is {}", cfg.num_layers)))?;
        Block::new(w, cfg, &format!("{p}h.{index}"), kind)
    }

    /// The block on `[b, t, hidden]` at positions from 0, without a cache.
    pub fn run(&self, x: &Tensor) -> Result<Tensor> {
        self.forward(x, 0, None, &mut |_, _| Ok(()))
    }

    /// [`Block::run`], showing every linear layer's input to `observe`.
    pub fn run_observed(&self, x: &Tensor, observe: &mut dyn FnMut(&str, &Tensor) -> Result<()>) -> Result<Tensor> {
        self.forward(x, 0, None, observe)
    }

    /// The linear layer whose weight is named `name`, if it is one of this block's.
    pub fn linear(&self, name: &str) -> Option<&Linear> {
        self.linears().into_iter().find(|l| l.name == name)
    }

    /// The block's forward pass on `x` (`[b, t, h]`, positions from 0) in candle operations that all have a backward
    /// pass, each linear layer applied by `lin` (the layer, its input `[b, t, in]`): the masked softmax is composed of
    /// operations (masked scores -1e9 instead of f32::MIN, whose exp is 0 all the same), the activation is candle's.
    pub fn forward_differentiable(
        &self,
        x: &Tensor,
        lin: &dyn Fn(&Linear, &Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let a = &self.attn;
        let (b, t, hidden) = x.dims3()?;
        let h1 = self.ln_1.forward(x)?;
        let split = |y: Tensor| -> Result<Tensor> {
            Ok(y.reshape((b, t, a.heads, a.head_dim))?.transpose(1, 2)?.contiguous()?)
        };
        let q = split(lin(&a.q, &h1)?)?;
        let k = split(lin(&a.k, &h1)?)?;
        let v = split(lin(&a.v, &h1)?)?;
        let scores = q.matmul(&k.t()?.contiguous()?)?;
        let window = match a.kind {
            AttentionKind::Global => usize::MAX,
            AttentionKind::Local => a.window,
        };
        let mut mask = vec![0f32; t * t];
        for i in 0..t {
            let lo = i.saturating_sub(window.saturating_sub(1));
            for (j, m) in mask[i * t..(i + 1) * t].iter_mut().enumerate() {
                if j < lo || j > i {
                    *m = -1e9;
                }
            }
        }
        let mask = Tensor::from_vec(mask, (t, t), x.device())?;
        let scores = scores.broadcast_add(&mask)?;
        let max = scores.max_keepdim(D::Minus1)?.detach();
        let e = scores.broadcast_sub(&max)?.exp()?;
        let probs = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
        let y = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, t, hidden))?;
        let x = (x + lin(&a.out, &y)?)?;
        let hm = lin(&self.mlp.c_fc, &self.ln_2.forward(&x)?)?;
        let act = match self.mlp.act {
            Activation::GeluTanh => hm.gelu()?,
            other => other.apply(&hm)?,
        };
        Ok((&x + lin(&self.mlp.c_proj, &act)?)?)
    }

    /// Store `weight` as the weight named `name` (one of this block's six); its bias stays.
    pub fn set_weight(&mut self, name: &str, weight: LinearWeight) -> Result<()> {
        let l = [
            &mut self.attn.q,
            &mut self.attn.k,
            &mut self.attn.v,
            &mut self.attn.out,
            &mut self.mlp.c_fc,
            &mut self.mlp.c_proj,
        ]
        .into_iter()
        .find(|l| l.name == name)
        .ok_or_else(|| Error::tensor(name, "is not a linear layer of this block"))?;
        if weight.shape()? != l.weight.shape()? {
            return Err(Error::tensor(name, format!("cannot take a weight of shape {:?}", weight.shape()?)));
        }
        l.weight = weight;
        Ok(())
    }
}

/// A GPT-Neo causal language model.
#[derive(Clone, Debug)]
pub struct GptNeo {
    pub cfg: GptNeoConfig,
    emb: Embeddings,
    blocks: Vec<Block>,
    head: Head,
    /// Whether the head shares the token embedding.
    pub tied_head: bool,
}

impl GptNeo {
    /// Build the model from `w`, checking every tensor's shape against `cfg`.
    pub fn load(cfg: &GptNeoConfig, w: &dyn Weights) -> Result<Self> {
        let p = tensor_prefix(w)?;
        let emb = Embeddings::load(cfg, w)?;
        let blocks = (0..cfg.num_layers).map(|i| Block::load(cfg, w, i)).collect::<Result<Vec<_>>>()?;
        // More blocks in the file than config.json declares is a disagreement too.
        if w.contains(&format!("{p}h.{}.ln_1.weight", cfg.num_layers)) {
            return Err(Error::Config(format!(
                "num_layers is {} but the checkpoint has a block {p}h.{}",
                cfg.num_layers, cfg.num_layers
            )));
        }
        let head = Head::load(cfg, w, Some(&emb.wte))?;
        let tied_head = head.tied;
        Ok(Self { cfg: cfg.clone(), emb, blocks, head, tied_head })
    }

    /// Every linear layer, block by block (q, k, v, out_proj, c_fc, c_proj), then the head.
    pub fn linears(&self) -> Vec<&Linear> {
        let mut v: Vec<&Linear> = self.blocks.iter().flat_map(|b| b.linears()).collect();
        v.push(&self.head.head);
        v
    }

    /// How many linear layers are stored compressed (low rank or INT8).
    pub fn compressed_layers(&self) -> usize {
        self.linears().iter().filter(|l| !l.weight.is_dense()).count()
    }

    /// Bytes of every tensor the model holds (a tied head counted once).
    pub fn weight_bytes(&self) -> usize {
        let t = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        let ln = |l: &LayerNorm| t(&l.weight) + t(&l.bias);
        let lin = |l: &Linear| l.weight.bytes() + l.bias.as_ref().map_or(0, t);
        let mut total = self.emb.bytes() + ln(&self.head.ln_f);
        for b in &self.blocks {
            total += ln(&b.ln_1) + ln(&b.ln_2) + b.linears().iter().map(|l| lin(l)).sum::<usize>();
        }
        if !self.tied_head {
            total += lin(&self.head.head);
        }
        total
    }

    /// Run the blocks and the final LayerNorm. With `collect`, also return the hidden states as Hugging Face does:
    /// the embeddings, each block's output but the last, and the final normed state.
    fn trunk(
        &self,
        ids: &Tensor,
        mut cache: Option<&mut KvCache>,
        collect: bool,
        obs: Observer,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let pos0 = cache.as_ref().map_or(0, |c| c.seq_len);
        let t = ids.dim(1)?;
        let mut x = self.emb.forward(ids, pos0)?;
        let mut states = Vec::new();
        for (i, block) in self.blocks.iter().enumerate() {
            if collect {
                states.push(x.clone());
            }
            let slot = match cache.as_deref_mut() {
                Some(c) => {
                    if c.layers.len() != self.blocks.len() {
                        c.layers = vec![None; self.blocks.len()];
                    }
                    Some(&mut c.layers[i])
                }
                None => None,
            };
            x = block.forward(&x, pos0, slot, &mut *obs)?;
        }
        let x = self.head.ln_f.forward(&x)?;
        if collect {
            states.push(x.clone());
        }
        if let Some(c) = cache {
            c.seq_len += t;
        }
        Ok((x, states))
    }

    /// Logits `[b, t, vocab]` for token ids `[b, t]` (u32). With a cache, `ids` continue the cached positions.
    pub fn forward(&self, ids: &Tensor, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let (x, _) = self.trunk(ids, cache, false, &mut |_, _| Ok(()))?;
        self.head.head.forward(&x)
    }

    /// Logits of the last position only, `[b, vocab]`: what decoding needs, without the head's cost for the others.
    pub fn forward_last(&self, ids: &Tensor, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let (x, _) = self.trunk(ids, cache, false, &mut |_, _| Ok(()))?;
        let t = x.dim(1)?;
        self.head.head.forward(&x.narrow(1, t - 1, 1)?.squeeze(1)?)
    }

    /// Hidden states (see [`GptNeo::trunk`]) and logits, without a cache.
    pub fn forward_with_hidden(&self, ids: &Tensor) -> Result<(Tensor, Vec<Tensor>)> {
        let (x, states) = self.trunk(ids, None, true, &mut |_, _| Ok(()))?;
        Ok((self.head.head.forward(&x)?, states))
    }

    /// The token and position embeddings of one sequence of ids, `[1, t, hidden]` (what block 0 reads).
    pub fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        self.emb.forward(&Tensor::from_slice(ids, (1, ids.len()), &Device::Cpu)?, 0)
    }

    /// The blocks, in order.
    pub fn blocks(&self) -> &[Block] {
        &self.blocks
    }

    /// Logits `[1, t, vocab]` for the last block's output `[1, t, hidden]` (the final LayerNorm and the head).
    pub fn head_logits(&self, x: &Tensor) -> Result<Tensor> {
        self.head.forward(x)
    }

    /// Logits for one sequence of ids, `[t, vocab]`.
    pub fn logits(&self, ids: &[u32]) -> Result<Tensor> {
        let ids = Tensor::from_slice(ids, (1, ids.len()), &Device::Cpu)?;
        Ok(self.forward(&ids, None)?.squeeze(0)?)
    }

    /// Run one sequence of ids as [`GptNeo::logits`] does, showing every linear layer's input (the head's too) to
    /// `observe`.
    pub fn observe(&self, ids: &[u32], observe: &mut dyn FnMut(&str, &Tensor) -> Result<()>) -> Result<()> {
        let ids = Tensor::from_slice(ids, (1, ids.len()), &Device::Cpu)?;
        let (x, _) = self.trunk(&ids, None, false, &mut *observe)?;
        self.head.head.forward_observed(&x, observe)?;
        Ok(())
    }
}

/// What one stage of a [`StagedRun`] produced.
pub enum Stage {
    /// The embeddings or a block ran over every window.
    Ran,
    /// The head ran over window `window`: its logits, `len × vocab`, row-major.
    Logits { window: usize, logits: Vec<f32> },
}

/// GPT-Neo over several windows of ids, one stage at a time: the embeddings, then each block, over every window,
/// then the head window by window. Each stage's weights are read from `weights` when it runs and dropped after, so a
/// model larger than memory can still be run (its hidden states for the windows are all it holds).
pub struct StagedRun {
    windows: Vec<Vec<u32>>,
    /// Hidden states after the stages done so far, one `[1, t, hidden]` per window.
    hidden: Vec<Tensor>,
    stage: usize,
    head: Option<Head>,
}

impl StagedRun {
    pub fn new(windows: Vec<Vec<u32>>) -> Self {
        Self { windows, hidden: Vec::new(), stage: 0, head: None }
    }

    pub fn windows(&self) -> &[Vec<u32>] {
        &self.windows
    }

    /// Stages in all: the embeddings, each block, then the head once per window.
    pub fn total_steps(&self, cfg: &GptNeoConfig) -> usize {
        1 + cfg.num_layers + self.windows.len()
    }

    pub fn done(&self) -> usize {
        self.stage
    }

    /// Run the next stage; `None` when every stage has run.
    pub fn step(&mut self, cfg: &GptNeoConfig, weights: &dyn Weights) -> Result<Option<Stage>> {
        let layers = cfg.num_layers;
        let ids_tensor = |w: &Vec<u32>| Tensor::from_slice(w, (1, w.len()), &Device::Cpu);
        let out = match self.stage {
            0 => {
                let emb = Embeddings::load(cfg, weights)?;
                self.hidden = self.windows.iter().map(|w| emb.forward(&ids_tensor(w)?, 0)).collect::<Result<_>>()?;
                Stage::Ran
            }
            s if s <= layers => {
                let block = Block::load(cfg, weights, s - 1)?;
                for h in self.hidden.iter_mut() {
                    *h = block.run(h)?;
                }
                Stage::Ran
            }
            s if s <= layers + self.windows.len() => {
                let k = s - layers - 1;
                if self.head.is_none() {
                    self.head = Some(Head::load(cfg, weights, None)?);
                }
                let head = self.head.as_ref().ok_or_else(|| Error::msg("the head is not loaded"))?;
                let logits: Vec<f32> = head.forward(&self.hidden[k])?.flatten_all()?.to_vec1()?;
                // this window's hidden state is no longer needed
                self.hidden[k] = Tensor::zeros(1, DType::F32, &Device::Cpu)?;
                if k + 1 == self.windows.len() {
                    self.head = None;
                    self.hidden.clear();
                }
                Stage::Logits { window: k, logits }
            }
            _ => return Ok(None),
        };
        self.stage += 1;
        Ok(Some(out))
    }
}
