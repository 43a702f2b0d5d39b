//! One transformer block: LayerNorm, causal self-attention (global or local), LayerNorm, MLP, with residual
//! connections; its six linear layers named and shaped in one place; its forward pass with a cache, observed, or
//! differentiable.

use crate::model::config::{AttentionKind, GptNeoConfig};
use crate::model::linear::{Linear, LinearWeight, Observer};
use crate::model::weights::{tensor_prefix, Weights};
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor, D};

/// LayerNorm over the last dimension, f32.
#[derive(Clone, Debug)]
pub(crate) struct LayerNorm {
    pub(crate) weight: Tensor,
    pub(crate) bias: Tensor,
    pub(crate) eps: f64,
}

impl LayerNorm {
    pub(super) fn new(w: &dyn Weights, prefix: &str, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: w.dense(&format!("{prefix}.weight"), &[dim])?.to_dtype(DType::F32)?,
            bias: w.dense(&format!("{prefix}.bias"), &[dim])?.to_dtype(DType::F32)?,
            eps,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        let xn = xc.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        Ok(xn.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)?)
    }
}

pub(super) fn linear(w: &dyn Weights, prefix: &str, out: usize, inp: usize) -> Result<Linear> {
    let name = format!("{prefix}.weight");
    let weight = w.linear(&name, out, inp)?;
    let bias_name = format!("{prefix}.bias");
    let bias = if w.contains(&bias_name) { Some(w.dense(&bias_name, &[out])?.to_dtype(DType::F32)?) } else { None };
    Ok(Linear { name, weight, bias })
}

#[derive(Clone, Debug)]
pub(crate) struct SelfAttention {
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
pub(crate) struct Mlp {
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
    pub(crate) ln_1: LayerNorm,
    pub(crate) attn: SelfAttention,
    pub(crate) ln_2: LayerNorm,
    pub(crate) mlp: Mlp,
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

    pub(super) fn forward(
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
