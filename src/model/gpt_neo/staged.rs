//! The model run one stage at a time over several windows, each stage's weights read when it runs: what evaluates
//! an original larger than memory.

use crate::model::config::GptNeoConfig;
use crate::model::gpt_neo::block::Block;
use crate::model::gpt_neo::ends::{Embeddings, Head};
use crate::model::weights::Weights;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};

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
