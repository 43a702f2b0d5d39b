//! The two ends of the model: the token and position embeddings, and the final LayerNorm with the head.

use crate::model::config::GptNeoConfig;
use crate::model::gpt_neo::block::{linear, LayerNorm};
use crate::model::linear::{Linear, LinearWeight};
use crate::model::weights::{tensor_prefix, Weights};
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};

/// Token and position embeddings.
#[derive(Clone, Debug)]
pub struct Embeddings {
    /// The token embedding, `[vocab, hidden]`: f32, or f16/bf16 as stored.
    pub(crate) wte: LinearWeight,
    pub(crate) wpe: Tensor,
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

    pub(super) fn bytes(&self) -> usize {
        self.wte.bytes() + self.wpe.elem_count() * 4
    }
}

/// The final LayerNorm and the head (tied to the token embedding, or `lm_head.weight`).
#[derive(Clone, Debug)]
pub struct Head {
    pub(crate) ln_f: LayerNorm,
    pub(crate) head: Linear,
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
