//! Quality of a compressed model against the original on a text.
//!
//! Convention (the same as ../shared/reference/README.md): the text is tokenized whole; its first `tokens` tokens are
//! cut into non-overlapping windows of `window` tokens (a shorter last window is kept if it has at least 2 tokens);
//! each window is run from position 0 and predicts its tokens 2..W.
//! * perplexity = exp(mean negative log-likelihood over those predictions), for each model;
//! * cosine (per position, mean): cosine of the two logit vectors at every position of every window, averaged;
//! * cosine (global): one cosine over all logits flattened;
//! * MSE: mean squared logit difference over all positions and vocabulary entries;
//! * top-1: share of positions whose argmax agrees;
//! * KL: mean over positions of KL(p_original ‖ p_compressed), natural log.
//!
//! All sums in f64.

use crate::model::generate::argmax;
use crate::model::gpt_neo::GptNeo;
use crate::model::kernels::{compare_rows, exp_row};
use crate::model::tokenizer::windows;
use crate::{Error, Result};
use candle_core::Tensor;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// The original model's final hidden states (after its last LayerNorm) on the windows it has run, by the window's
/// ids: its logits on a window seen before are made again from them by the head alone, the same to the bit
/// ([`GptNeo::head_of`]), so that evaluating another compression on the same tokens runs the original's blocks no
/// more. What the metrics need of the original per position is kept this way rather than its logits (a window of
/// 512 positions is 512 × hidden floats instead of 512 × vocab). Up to `max_bytes`; a new original means a new one.
pub struct OriginalStates {
    states: HashMap<Vec<u32>, Tensor>,
    bytes: usize,
    max_bytes: usize,
    /// Windows whose states were found here.
    pub hits: usize,
}

impl Default for OriginalStates {
    fn default() -> Self {
        Self { states: HashMap::new(), bytes: 0, max_bytes: 256 << 20, hits: 0 }
    }
}

impl OriginalStates {
    /// One that keeps nothing.
    pub fn none() -> Self {
        Self { max_bytes: 0, ..Self::default() }
    }

    /// The original's logits on `ids`, `[t, vocab]`: from its kept states when it has run this window before.
    pub fn logits(&mut self, original: &GptNeo, ids: &[u32]) -> Result<Tensor> {
        if let Some(x) = self.states.get(ids) {
            self.hits += 1;
            return original.head_of(x);
        }
        let x = original.final_states(ids)?;
        let size = x.elem_count() * x.dtype().size_in_bytes() + 4 * ids.len();
        let logits = original.head_of(&x)?;
        if self.bytes + size <= self.max_bytes {
            self.bytes += size;
            self.states.insert(ids.to_vec(), x);
        }
        Ok(logits)
    }
}

/// What the figures need of one position's logits, over the vocabulary: each model's largest logit, Σ e^(logit −
/// largest), the target's logit and the (first) argmax; between the two, Σ o·c, Σ o², Σ c², Σ (o − c)² and
/// Σ e^(o − max o)(o − c). The CPU computes them from its logits, the GPU from logits it never reads back.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PositionStats {
    pub max_o: f32,
    pub sum_o: f64,
    pub target_o: f32,
    pub top_o: usize,
    pub max_c: f32,
    pub sum_c: f64,
    pub target_c: f32,
    pub top_c: usize,
    pub dot: f64,
    pub norm_o: f64,
    pub norm_c: f64,
    pub sq_err: f64,
    pub kl_raw: f64,
}

/// The running sums of an evaluation; sums of parts evaluated separately (in other workers) add up.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct Sums {
    nll_orig: f64,
    nll_comp: f64,
    predictions: usize,
    cos_sum: f64,
    positions: usize,
    dot: f64,
    norm_o: f64,
    norm_c: f64,
    sq_err: f64,
    logits: usize,
    top1_agree: usize,
    kl_sum: f64,
}

impl Sums {
    /// Add one window: `ids` and the logits of the original (`lo`) and, if compared, the compressed model (`lc`),
    /// both `ids.len() × vocab`.
    pub(crate) fn accumulate(&mut self, ids: &[u32], lo: &[f32], lc: Option<&[f32]>, vocab: usize) {
        let (mut po, mut pc) = (Vec::new(), Vec::new());
        for (p, o) in lo.chunks_exact(vocab).enumerate() {
            // e^(o − max) once per position: its sum gives log Σ e^o, and it weighs the KL terms
            let (max_o, sum_o) = exp_row(o, &mut po);
            let target = ids.get(p + 1).map(|&t| t as usize);
            let mut s = PositionStats {
                max_o,
                sum_o,
                target_o: target.map_or(0.0, |t| o[t]),
                top_o: argmax(o),
                ..PositionStats::default()
            };
            if let Some(lc) = lc {
                let c = &lc[p * vocab..(p + 1) * vocab];
                let (max_c, sum_c) = exp_row(c, &mut pc);
                let [dot, norm_o, norm_c, sq_err, kl_raw] = compare_rows(o, c, &po);
                s = PositionStats {
                    max_c,
                    sum_c,
                    target_c: target.map_or(0.0, |t| c[t]),
                    dot,
                    norm_o,
                    norm_c,
                    sq_err,
                    kl_raw,
                    top_c: argmax(c),
                    ..s
                };
            }
            self.add_position(&s, target.is_some(), lc.is_some(), vocab);
        }
    }

    /// Add one position's [`PositionStats`] (`target`: whether it predicts a token; `compare`: whether the
    /// compressed model's terms are there).
    pub fn add_position(&mut self, s: &PositionStats, target: bool, compare: bool, vocab: usize) {
        let lse_o = s.max_o as f64 + s.sum_o.ln();
        if target {
            self.nll_orig += lse_o - s.target_o as f64;
            self.predictions += 1;
        }
        self.positions += 1;
        if !compare {
            return;
        }
        let lse_c = s.max_c as f64 + s.sum_c.ln();
        if target {
            self.nll_comp += lse_c - s.target_c as f64;
        }
        // KL(p_o ‖ p_c) = Σ p_o (log p_o − log p_c) = Σ p_o (o − c) − lse_o + lse_c, as Σ p_o = 1
        let kl = s.kl_raw / s.sum_o - lse_o + lse_c;
        let (no, nc) = (s.norm_o, s.norm_c);
        self.cos_sum += if no > 0.0 && nc > 0.0 { s.dot / (no.sqrt() * nc.sqrt()) } else { 0.0 };
        self.dot += s.dot;
        self.norm_o += no;
        self.norm_c += nc;
        self.sq_err += s.sq_err;
        self.logits += vocab;
        self.kl_sum += kl.max(0.0);
        self.top1_agree += (s.top_o == s.top_c) as usize;
    }

    pub(crate) fn report(
        &self,
        compare: bool,
        skip: usize,
        tokens: usize,
        window: usize,
        windows: usize,
    ) -> EvalReport {
        let n = self.positions.max(1) as f64;
        let cmp = |v: f64| compare.then_some(v);
        let which =
            if skip == 0 { format!("first {tokens} tokens") } else { format!("tokens {skip}..{}", skip + tokens) };
        EvalReport {
            skip_tokens: skip,
            tokens,
            window,
            windows,
            predictions: self.predictions,
            ppl_original: (self.nll_orig / self.predictions.max(1) as f64).exp(),
            ppl_compressed: cmp((self.nll_comp / self.predictions.max(1) as f64).exp()),
            cosine: cmp(self.cos_sum / n),
            cosine_global: cmp(if self.norm_o > 0.0 && self.norm_c > 0.0 {
                self.dot / (self.norm_o.sqrt() * self.norm_c.sqrt())
            } else {
                0.0
            }),
            mse: cmp(self.sq_err / self.logits.max(1) as f64),
            top1: cmp(self.top1_agree as f64 / n),
            kl: cmp(self.kl_sum / n),
            convention: format!(
                "{which} in {windows} non-overlapping windows of {window}; each window predicts its tokens 2..W ({} predictions); cosine per position averaged over {} positions; cosine_global over all logits flattened; KL(original‖compressed) averaged over positions",
                self.predictions, self.positions
            ),
        }
    }

    pub(crate) fn add(&mut self, o: &Sums) {
        self.nll_orig += o.nll_orig;
        self.nll_comp += o.nll_comp;
        self.predictions += o.predictions;
        self.cos_sum += o.cos_sum;
        self.positions += o.positions;
        self.dot += o.dot;
        self.norm_o += o.norm_o;
        self.norm_c += o.norm_c;
        self.sq_err += o.sq_err;
        self.logits += o.logits;
        self.top1_agree += o.top1_agree;
        self.kl_sum += o.kl_sum;
    }
}

/// What one part of a split evaluation hands back to be merged: each evaluated window's sums by window index, one
/// list per compressed model.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct PartialSums {
    sums: Vec<Vec<(usize, Sums)>>,
    compare: bool,
}

/// Results of an evaluation, as `slc eval --json` prints them.
#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    /// Tokens of the text skipped before the evaluated ones (those a calibration read).
    pub skip_tokens: usize,
    pub tokens: usize,
    pub window: usize,
    pub windows: usize,
    pub predictions: usize,
    pub ppl_original: f64,
    pub ppl_compressed: Option<f64>,
    /// cosine of the logit vectors per position, averaged over positions
    pub cosine: Option<f64>,
    /// cosine over all logits flattened
    pub cosine_global: Option<f64>,
    pub mse: Option<f64>,
    pub top1: Option<f64>,
    pub kl: Option<f64>,
    pub convention: String,
}

/// An evaluation advanced one window at a time. The original model runs once per window however many compressed
/// models are compared with it.
pub struct Evaluator {
    windows: Vec<Vec<u32>>,
    /// This part evaluates windows `offset, offset + stride, …` (one part: 0, 1).
    offset: usize,
    stride: usize,
    next: usize,
    tokens: usize,
    window: usize,
    /// One map per compressed model (or one, unused, when none is compared): window index → that window's sums.
    /// Reports add the windows in index order, so however the windows were split between parts, the merged figures
    /// are bit for bit those of one evaluation.
    sums: Vec<BTreeMap<usize, Sums>>,
    compare: bool,
    skip: usize,
}

impl Evaluator {
    pub fn new(ids: &[u32], tokens: usize, window: usize) -> Result<Self> {
        let windows = windows(ids, tokens, window)?;
        let tokens = windows.iter().map(|w| w.len()).sum();
        Ok(Self { windows, offset: 0, stride: 1, next: 0, tokens, window, sums: Vec::new(), compare: false, skip: 0 })
    }

    /// The same evaluation on the text's tokens after the first `skip` (which a calibration has read).
    pub fn after(ids: &[u32], skip: usize, tokens: usize, window: usize, part: usize, parts: usize) -> Result<Self> {
        let rest = ids.get(skip..).unwrap_or(&[]);
        Ok(Self { skip, ..Self::new_part(rest, tokens, window, part, parts)? })
    }

    /// Part `part` of `parts` of the same evaluation (every `parts`-th window), for workers that run in parallel;
    /// [`Evaluator::merge`] adds the other parts' [`Evaluator::partial`] sums into one of them.
    pub fn new_part(ids: &[u32], tokens: usize, window: usize, part: usize, parts: usize) -> Result<Self> {
        if parts == 0 || part >= parts {
            return Err(Error::Policy(format!("evaluation part {part} of {parts} does not exist")));
        }
        Ok(Self { offset: part, stride: parts, ..Self::new(ids, tokens, window)? })
    }

    /// Windows this part evaluates.
    pub fn total_windows(&self) -> usize {
        self.windows.len().saturating_sub(self.offset).div_ceil(self.stride)
    }

    /// Windows of the whole evaluation (all parts).
    pub fn all_windows(&self) -> usize {
        self.windows.len()
    }

    pub fn done(&self) -> usize {
        self.next
    }

    pub fn partial(&self) -> PartialSums {
        let sums = self.sums.iter().map(|m| m.iter().map(|(&k, s)| (k, s.clone())).collect()).collect();
        PartialSums { sums, compare: self.compare }
    }

    /// Add the sums of another part of the same evaluation.
    pub fn merge(&mut self, other: &PartialSums) -> Result<()> {
        if other.sums.is_empty() {
            return Ok(());
        }
        if self.sums.is_empty() {
            self.sums = vec![BTreeMap::new(); other.sums.len()];
            self.compare = other.compare;
        }
        if self.sums.len() != other.sums.len() || self.compare != other.compare {
            return Err(Error::msg("the parts of an evaluation compared different models"));
        }
        for (mine, theirs) in self.sums.iter_mut().zip(&other.sums) {
            for (k, s) in theirs {
                if *k >= self.windows.len() || mine.insert(*k, s.clone()).is_some() {
                    return Err(Error::msg(format!("evaluation window {k} was merged twice or does not exist")));
                }
            }
        }
        Ok(())
    }

    /// Evaluate the next window with the original and (if given) the compressed model. `false` when finished.
    pub fn step(&mut self, original: &GptNeo, compressed: Option<&GptNeo>) -> Result<bool> {
        self.step_many(original, compressed.as_slice())
    }

    /// Evaluate the next window with the original and every model of `compressed` (always the same list).
    pub fn step_many(&mut self, original: &GptNeo, compressed: &[&GptNeo]) -> Result<bool> {
        self.step_with(original, compressed, &mut OriginalStates::none())
    }

    /// [`Evaluator::step_many`], the original's logits made from `states` where it has run the window before (and
    /// kept there otherwise).
    pub fn step_with(
        &mut self,
        original: &GptNeo,
        compressed: &[&GptNeo],
        states: &mut OriginalStates,
    ) -> Result<bool> {
        let index = self.offset + self.next * self.stride;
        let Some(ids) = self.windows.get(index) else { return Ok(false) };
        if self.sums.is_empty() {
            self.sums = vec![BTreeMap::new(); compressed.len().max(1)];
            self.compare = !compressed.is_empty();
        }
        if self.compare && self.sums.len() != compressed.len() {
            return Err(Error::msg("an evaluation must compare the same models at every window"));
        }
        let vocab = original.cfg.vocab_size;
        let lo: Vec<f32> = states.logits(original, ids)?.flatten_all()?.to_vec1()?;
        for (s, model) in self.sums.iter_mut().zip(compressed.iter().map(Some).chain(std::iter::repeat(None))) {
            let lc: Option<Vec<f32>> =
                model.map(|c| c.logits(ids).and_then(|t| Ok(t.flatten_all()?.to_vec1()?))).transpose()?;
            let mut one = Sums::default();
            one.accumulate(ids, &lo, lc.as_deref(), vocab);
            s.insert(index, one);
        }
        self.next += 1;
        Ok(true)
    }

    /// The window the next step evaluates: its index and ids, or `None` when this part is finished.
    pub fn next_window(&self) -> Option<(usize, &[u32])> {
        let index = self.offset + self.next * self.stride;
        self.windows.get(index).map(|w| (index, w.as_slice()))
    }

    /// Take the next window's figures as computed elsewhere (the GPU): its [`PositionStats`], one a position, with
    /// the compressed model's terms when `compare`.
    pub fn accept_window(&mut self, stats: &[PositionStats], compare: bool, vocab: usize) -> Result<()> {
        let Some((index, ids)) = self.next_window() else { return Err(Error::msg("the evaluation has finished")) };
        let n = ids.len();
        if stats.len() != n {
            return Err(Error::msg(format!("{} positions' figures for a window of {n}", stats.len())));
        }
        if self.sums.is_empty() {
            self.sums = vec![BTreeMap::new()];
            self.compare = compare;
        }
        if self.sums.len() != 1 || self.compare != compare {
            return Err(Error::msg("an evaluation must compare the same models at every window"));
        }
        let mut one = Sums::default();
        for (p, s) in stats.iter().enumerate() {
            one.add_position(s, p + 1 < n, compare, vocab);
        }
        self.sums[0].insert(index, one);
        self.next += 1;
        Ok(())
    }

    /// The report for the first (or only) compressed model.
    pub fn report(&self) -> EvalReport {
        self.report_for(0)
    }

    /// One report per compressed model.
    pub fn reports(&self) -> Vec<EvalReport> {
        (0..self.sums.len().max(1)).map(|i| self.report_for(i)).collect()
    }

    fn report_for(&self, i: usize) -> EvalReport {
        let mut total = Sums::default();
        for s in self.sums.get(i).into_iter().flat_map(|m| m.values()) {
            total.add(s);
        }
        total.report(self.compare, self.skip, self.tokens, self.window, self.windows.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_cover_every_window_once() {
        let ids: Vec<u32> = (0..5000).collect();
        let whole = Evaluator::new(&ids, 5000, 512).unwrap();
        let parts: Vec<Evaluator> = (0..3).map(|p| Evaluator::new_part(&ids, 5000, 512, p, 3).unwrap()).collect();
        assert_eq!(parts.iter().map(|p| p.total_windows()).sum::<usize>(), whole.total_windows());
        assert!(Evaluator::new_part(&ids, 5000, 512, 3, 3).is_err());
    }

    #[test]
    fn windows_follow_the_convention() {
        let ids: Vec<u32> = (0..1000).collect();
        let w = windows(&ids, 8192, 512).unwrap();
        assert_eq!(w.len(), 2);
        assert_eq!(w[1].len(), 488);
        let w = windows(&ids, 1025, 512).unwrap();
        assert_eq!(w.len(), 2, "a 1-token tail predicts nothing and is dropped");
        assert!(windows(&ids, 10, 1).is_err());
    }
}
