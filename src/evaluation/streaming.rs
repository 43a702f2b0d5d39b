//! An evaluation that never holds the original model in memory: it reads it from its checkpoint one stage at a time
//! (embeddings, each block, the head), with the figures and conventions of [`crate::evaluation::metrics`].

use crate::evaluation::metrics::{EvalReport, Sums};
use crate::model::config::GptNeoConfig;
use crate::model::gpt_neo::{GptNeo, Stage, StagedRun};
use crate::model::tokenizer::windows;
use crate::model::weights::Weights;
use crate::Result;

/// An evaluation that never holds the original model: a [`StagedRun`] reads its embeddings, each block and its head
/// from the checkpoint one at a time and runs them over every window before the next is read, so a model larger
/// than memory can still be compared with its (small) compressed version. Same figures and conventions as
/// [`crate::evaluation::metrics::Evaluator`].
pub struct StreamingEvaluator {
    run: StagedRun,
    tokens: usize,
    window: usize,
    sums: Sums,
    compare: bool,
    skip: usize,
}

impl StreamingEvaluator {
    pub fn new(ids: &[u32], tokens: usize, window: usize) -> Result<Self> {
        let windows = windows(ids, tokens, window)?;
        let tokens = windows.iter().map(|w| w.len()).sum();
        Ok(Self { run: StagedRun::new(windows), tokens, window, sums: Sums::default(), compare: false, skip: 0 })
    }

    /// The same evaluation on the text's tokens after the first `skip`.
    pub fn after(ids: &[u32], skip: usize, tokens: usize, window: usize) -> Result<Self> {
        Ok(Self { skip, ..Self::new(ids.get(skip..).unwrap_or(&[]), tokens, window)? })
    }

    /// Steps in all: the embeddings, each block, then the head once per window.
    pub fn total_steps(&self, cfg: &GptNeoConfig) -> usize {
        self.run.total_steps(cfg)
    }

    pub fn done(&self) -> usize {
        self.run.done()
    }

    /// One stage. `original` reads the original checkpoint; `compressed` is compared at the head. `false` when done.
    pub fn step(&mut self, cfg: &GptNeoConfig, original: &dyn Weights, compressed: Option<&GptNeo>) -> Result<bool> {
        match self.run.step(cfg, original)? {
            None => Ok(false),
            Some(Stage::Ran) => Ok(true),
            Some(Stage::Logits { window, logits }) => {
                let ids = &self.run.windows()[window];
                let lc: Option<Vec<f32>> =
                    compressed.map(|c| c.logits(ids).and_then(|t| Ok(t.flatten_all()?.to_vec1()?))).transpose()?;
                self.compare = lc.is_some();
                // one window's sums, then added in window order, as the in-memory evaluator does
                let mut one = Sums::default();
                one.accumulate(ids, &logits, lc.as_deref(), cfg.vocab_size);
                self.sums.add(&one);
                Ok(true)
            }
        }
    }

    pub fn report(&self) -> EvalReport {
        self.sums.report(self.compare, self.skip, self.tokens, self.window, self.run.windows().len())
    }
}
