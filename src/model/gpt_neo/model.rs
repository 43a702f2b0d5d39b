//! The whole model: embeddings, blocks, head; logits with or without a key-value cache, hidden states, the inputs of
//! every linear layer shown to an observer.

use crate::model::config::GptNeoConfig;
use crate::model::gpt_neo::block::{Block, LayerNorm};
use crate::model::gpt_neo::ends::{Embeddings, Head};
use crate::model::linear::{Linear, Observer};
use crate::model::weights::{tensor_prefix, Weights};
use crate::{Error, Result};
use candle_core::{Device, Tensor};

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

    /// The embeddings and the head (what the GPU wing uploads besides the blocks).
    pub(crate) fn ends(&self) -> (&Embeddings, &Head) {
        (&self.emb, &self.head)
    }

    /// The blocks, in order.
    pub fn blocks(&self) -> &[Block] {
        &self.blocks
    }

    /// Logits `[1, t, vocab]` for the last block's output `[1, t, hidden]` (the final LayerNorm and the head).
    pub fn head_logits(&self, x: &Tensor) -> Result<Tensor> {
        self.head.forward(x)
    }

    /// Logits for one sequence of ids, `[t, vocab]`: [`GptNeo::head_of`] the [`GptNeo::final_states`].
    pub fn logits(&self, ids: &[u32]) -> Result<Tensor> {
        self.head_of(&self.final_states(ids)?)
    }

    /// The hidden states of one sequence of ids after the final LayerNorm, `[1, t, hidden]`: what the head reads.
    pub fn final_states(&self, ids: &[u32]) -> Result<Tensor> {
        let ids = Tensor::from_slice(ids, (1, ids.len()), &Device::Cpu)?;
        Ok(self.trunk(&ids, None, false, &mut |_, _| Ok(()))?.0)
    }

    /// The head alone on [`GptNeo::final_states`]: the logits `[t, vocab]`, the same to the bit as [`GptNeo::logits`].
    pub fn head_of(&self, states: &Tensor) -> Result<Tensor> {
        Ok(self.head.head.forward(states)?.squeeze(0)?)
    }

    /// Show the head's input for the last block's output `x` (`[1, t, hidden]`: the final LayerNorm of it) to
    /// `observe`, without running the head.
    pub fn observe_head(&self, x: &Tensor, observe: &mut dyn FnMut(&str, &Tensor) -> Result<()>) -> Result<()> {
        self.head.head.observe_input(&self.head.ln_f.forward(x)?, observe)?;
        Ok(())
    }

    /// Where the linear layer named `name` reads its input: block `i`'s layers at stage `i`, the head after every block
    /// (stage `num_layers`); `None` for a name that is no linear layer of this model.
    pub fn stage_of(&self, name: &str) -> Option<usize> {
        match self.blocks.iter().position(|b| b.linear(name).is_some()) {
            Some(i) => Some(i),
            None => (self.head.head.name == name).then_some(self.blocks.len()),
        }
    }
}
