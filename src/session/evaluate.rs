//! Evaluating the compressed model against the original: in parts other workers can take and merge, or with the
//! original streamed from its file a stage at a time.

use super::{Evaluation, Session};
use crate::evaluation::metrics::{Evaluator, PartialSums};
use crate::evaluation::streaming::StreamingEvaluator;
use crate::model::checkpoint::embedding_name;
use crate::model::weights::{CheckpointWeights, Precision};
use crate::session::reports::*;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// What an evaluation reads: the text's tokens after the first `skip`, the next `tokens` of them in windows of
/// `window`; this instance takes part `part` of `parts` (every `parts`-th window; 0 of 1 for all).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalSpec {
    pub text: String,
    #[serde(default)]
    pub skip: usize,
    pub tokens: usize,
    pub window: usize,
    #[serde(default)]
    pub part: usize,
    #[serde(default = "one")]
    pub parts: usize,
}

fn one() -> usize {
    1
}

impl Session {
    /// Start evaluating (see [`EvalSpec`]). When the original model is not in memory (too large), it is streamed
    /// from its file a block at a time (one part only).
    pub fn eval_begin(&mut self, spec: &EvalSpec) -> Result<EvalBegin> {
        let b = self
            .bundle
            .as_ref()
            .ok_or_else(|| Error::msg("the original model is needed for the comparison: open it first"))?;
        let (skip, tokens, window) = (spec.skip, spec.tokens, spec.window);
        let max = b.cfg.max_position_embeddings;
        if window > max {
            return Err(Error::Policy(format!("the window of {window} tokens is longer than the model reads ({max})")));
        }
        let ids = b.tokenizer()?.encode(&spec.text)?;
        let text_tokens = ids.len();
        let (ev, out) = if self.original.is_some() {
            let ev = Evaluator::after(&ids, skip, tokens, window, spec.part, spec.parts)?;
            let out = EvalBegin { steps: ev.total_windows(), all_steps: ev.all_windows(), unit: "window", text_tokens };
            (Evaluation::InMemory(ev), out)
        } else {
            if spec.parts != 1 {
                return Err(Error::msg("a streamed evaluation runs in one worker"));
            }
            // memory: the head (the token embedding as stored), one block, the hidden states, two windows of logits
            let elem = b.ckpt.info(&embedding_name(&b.ckpt)).map_or(4, |i| i.dtype.bitsize() / 8);
            let (h, v) = (b.cfg.hidden_size, b.cfg.vocab_size);
            let block = (4 * h * h + 2 * h * b.cfg.intermediate_size()) * 4;
            let need = v * h * elem + block + tokens.min(text_tokens) * h * 4 + 2 * window * v * 4;
            self.memory.check(
                "evaluating with the original read from its file (its head, a block, two windows of logits)",
                need as f64,
                0.9,
                "the compressed checkpoint can still be exported",
            )?;
            let ev = StreamingEvaluator::after(&ids, skip, tokens, window)?;
            let steps = ev.total_steps(&b.cfg);
            (Evaluation::Streamed(ev), EvalBegin { steps, all_steps: steps, unit: "stage", text_tokens })
        };
        self.evaluator = Some(ev);
        Ok(out)
    }

    /// The next step of the evaluation (a window, or a stage when streamed), or `None` when finished.
    pub fn eval_step(&mut self) -> Result<Option<Progress>> {
        let c = self.compressed.as_ref().map(|c| &c.model);
        let (done, total) = match self.evaluator.as_mut().ok_or_else(|| Error::msg("no evaluation was started"))? {
            Evaluation::InMemory(ev) => {
                let o = self.original.as_ref().ok_or_else(|| Error::msg("the original model is not loaded"))?;
                if !ev.step_with(o, c.as_slice(), &mut self.original_states)? {
                    return Ok(None);
                }
                (ev.done(), ev.total_windows())
            }
            Evaluation::Streamed(ev) => {
                let b = self.bundle.as_ref().ok_or_else(|| Error::msg("no original model is open"))?;
                let w = CheckpointWeights { ckpt: &b.ckpt, precision: Precision::AsStored };
                if !ev.step(&b.cfg, &w, c)? {
                    return Ok(None);
                }
                (ev.done(), ev.total_steps(&b.cfg))
            }
        };
        Ok(Some(Progress { done, total }))
    }

    /// This part's sums, for [`Session::eval_merge`] in another instance.
    pub fn eval_partial(&self) -> Result<PartialSums> {
        match self.evaluator.as_ref().ok_or_else(|| Error::msg("no evaluation was started"))? {
            Evaluation::InMemory(ev) => Ok(ev.partial()),
            Evaluation::Streamed(_) => Err(Error::msg("a streamed evaluation is not split")),
        }
    }

    /// Add another part's sums (from [`Session::eval_partial`]) to this evaluation.
    pub fn eval_merge(&mut self, partial: &PartialSums) -> Result<()> {
        match self.evaluator.as_mut().ok_or_else(|| Error::msg("no evaluation was started"))? {
            Evaluation::InMemory(ev) => ev.merge(partial),
            Evaluation::Streamed(_) => Err(Error::msg("a streamed evaluation is not split")),
        }
    }

    /// The evaluation's figures with sizes and layer counts.
    pub fn eval_report(&self) -> Result<EvalSummary> {
        let b = self.bundle.as_ref().ok_or_else(|| Error::msg("no original model is open"))?;
        let (eval, streamed) = match self.evaluator.as_ref().ok_or_else(|| Error::msg("no evaluation was started"))? {
            Evaluation::InMemory(ev) => (ev.report(), false),
            Evaluation::Streamed(ev) => (ev.report(), true),
        };
        let c = self.compressed.as_ref().map(|c| CompressedSizes {
            model: &c.model,
            tensor_bytes: c.tensor_bytes,
            resident_bytes: c.resident_bytes,
        });
        Ok(EvalSummary::new(eval, streamed, b, self.original.as_ref(), c))
    }

    /// Windows whose original logits were made from the kept states ([`OriginalStates`]) rather than by running
    /// the original again, since the model was opened.
    pub fn original_windows_reused(&self) -> usize {
        self.original_states.hits
    }
}
