//! Sensitivity: how much the model's output moves when one weight matrix alone is compressed.
//!
//! A [`Probe`] runs the original model once over a few calibration windows and keeps every block's input and the
//! final logits. The damage of a replaced matrix is then measured by running only the blocks from its own onwards
//! (the ones before it are unchanged): KL(p_original ‖ p_probe) averaged over positions (natural log), the cosine of
//! the two logit vectors per position (mean), and the share of positions whose argmax agrees.
//!
//! It answers the origin report's question — which layers can be compressed — and weighs the loss allocation
//! ([`crate::compression::policy::BudgetMode::Loss`]): a matrix's sensitivity is the KL its probe causes per unit of
//! its output error on the calibration activations.

use crate::model::gpt_neo::{Block, GptNeo};
use crate::model::kernels::{compare_rows, exp_row};
use crate::model::linear::LinearWeight;
use crate::{Error, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// What compressing one matrix alone did to the logits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Damage {
    /// Mean over positions of KL(p_original ‖ p_compressed), nats.
    pub kl: f64,
    /// Mean over positions of the cosine between the two logit vectors.
    pub cosine: f64,
    /// Share of positions whose argmax agrees.
    pub top1: f64,
    /// Positions measured.
    pub positions: usize,
}

/// The original model's block inputs and logits on a few windows, to measure single-matrix damage quickly.
pub struct Probe {
    model: GptNeo,
    /// `inputs[b][w]`: block b's input on window w, `[1, t, hidden]`; `inputs[num_layers]` is the last block's output.
    inputs: Vec<Vec<Tensor>>,
    /// The original's logits per window, `t × vocab`, row-major.
    logits: Vec<Vec<f32>>,
    vocab: usize,
}

impl Probe {
    /// Run `model` over the first `tokens` of `ids` in windows of `window`.
    pub fn new(model: &GptNeo, ids: &[u32], tokens: usize, window: usize) -> Result<Self> {
        let windows = crate::model::tokenizer::windows(ids, tokens, window)?;
        let layers = model.blocks().len();
        let mut inputs: Vec<Vec<Tensor>> = vec![Vec::with_capacity(windows.len()); layers + 1];
        let mut logits = Vec::with_capacity(windows.len());
        for w in &windows {
            let mut x = model.embed(w)?;
            for (b, block) in model.blocks().iter().enumerate() {
                inputs[b].push(x.clone());
                x = block.run(&x)?;
            }
            logits.push(model.head_logits(&x)?.flatten_all()?.to_vec1::<f32>()?);
            inputs[layers].push(x);
        }
        Ok(Self { model: model.clone(), inputs, logits, vocab: model.cfg.vocab_size })
    }

    /// Positions the probe measures.
    pub fn positions(&self) -> usize {
        self.logits.iter().map(|l| l.len() / self.vocab.max(1)).sum()
    }

    /// The block holding the matrix named `name`, if any.
    pub fn block_of(&self, name: &str) -> Option<usize> {
        self.model.blocks().iter().position(|b| b.linear(name).is_some())
    }

    /// The damage of storing `weight` as the matrix `name` (a block's linear layer), everything else original.
    pub fn damage(&self, name: &str, weight: LinearWeight) -> Result<Damage> {
        self.damage_of(&HashMap::from([(name.to_string(), weight)]))
    }

    /// The damage of storing every matrix of `weights` as given (each a block's linear layer), everything else
    /// original: the blocks before the first replaced one are not run again.
    pub fn damage_of(&self, weights: &HashMap<String, LinearWeight>) -> Result<Damage> {
        let mut blocks: Vec<Block> = self.model.blocks().to_vec();
        let mut first = blocks.len();
        for (name, weight) in weights {
            let b = self
                .block_of(name)
                .ok_or_else(|| Error::tensor(name, "is not a linear layer of a block; its damage is not measured"))?;
            blocks[b].set_weight(name, weight.clone())?;
            first = first.min(b);
        }
        let mut sums = DamageSums::default();
        for (w, original) in self.logits.iter().enumerate() {
            let mut x = self.inputs[first][w].clone();
            for block in &blocks[first..] {
                x = block.run(&x)?;
            }
            let logits: Vec<f32> = self.model.head_logits(&x)?.flatten_all()?.to_vec1()?;
            sums.add(original, &logits, self.vocab);
        }
        Ok(sums.finish())
    }
}

/// Running sums of [`Damage`].
#[derive(Default)]
struct DamageSums {
    kl: f64,
    cosine: f64,
    agree: usize,
    positions: usize,
    po: Vec<f32>,
    pc: Vec<f32>,
}

impl DamageSums {
    fn add(&mut self, original: &[f32], compressed: &[f32], vocab: usize) {
        for (o, c) in original.chunks_exact(vocab).zip(compressed.chunks_exact(vocab)) {
            let (mo, sum_o) = exp_row(o, &mut self.po);
            let (mc, sum_c) = exp_row(c, &mut self.pc);
            let [dot, oo, cc, _, pd] = compare_rows(o, c, &self.po);
            // KL = Σ p_o (o − c) − log Σ e^o + log Σ e^c
            let kl = pd / sum_o - (mo as f64 + sum_o.ln()) + (mc as f64 + sum_c.ln());
            self.kl += kl.max(0.0);
            self.cosine += if oo > 0.0 && cc > 0.0 { dot / (oo.sqrt() * cc.sqrt()) } else { 0.0 };
            self.agree += usize::from(crate::model::generate::argmax(o) == crate::model::generate::argmax(c));
            self.positions += 1;
        }
    }

    fn finish(&self) -> Damage {
        let n = self.positions.max(1) as f64;
        Damage { kl: self.kl / n, cosine: self.cosine / n, top1: self.agree as f64 / n, positions: self.positions }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damage_sums_are_zero_for_equal_logits_and_positive_otherwise() {
        let o = vec![1.0f32, 2.0, 3.0, 0.5, -1.0, 2.0];
        let mut s = DamageSums::default();
        s.add(&o, &o, 3);
        let d = s.finish();
        assert!(d.kl.abs() < 1e-6 && (d.cosine - 1.0).abs() < 1e-6 && d.top1 == 1.0 && d.positions == 2, "{d:?}");
        let c = vec![3.0f32, 2.0, 1.0, 0.5, -1.0, 2.0];
        let mut s = DamageSums::default();
        s.add(&o, &c, 3);
        let d = s.finish();
        // first row: p = softmax(1,2,3), q = softmax(3,2,1): KL = Σ p (log p − log q) = 2 (p3 − p1)
        let e: Vec<f64> = [1.0f64, 2.0, 3.0].iter().map(|x| x.exp()).collect();
        let z: f64 = e.iter().sum();
        let kl = 2.0 * (e[2] - e[0]) / z;
        assert!((d.kl - kl / 2.0).abs() < 1e-5, "{} vs {}", d.kl, kl / 2.0);
        assert_eq!(d.top1, 0.5);
    }
}
