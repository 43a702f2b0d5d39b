//! Generating from the original and the compressed model, a token at a time each.

use super::{Session, Which};
use crate::model::generate::{Generation, SamplingParams};
use crate::model::tokenizer::TextStream;
use crate::session::reports::*;
use crate::{Error, Result};

impl Session {
    /// Start generating from `prompt` with the model `which`.
    pub fn generate_start(&mut self, which: Which, prompt: &str, params: SamplingParams) -> Result<()> {
        let ids = self.encode(prompt)?;
        let model = self.model(which)?;
        let need = Generation::memory_bytes(&model.cfg, ids.len(), params.max_new_tokens);
        self.memory.check(
            &format!("generating {} tokens with the {} model", params.max_new_tokens, which.name()),
            need,
            0.8,
            "the models are still loaded: ask for fewer tokens or a shorter prompt",
        )?;
        let g = Generation::new(model, &ids, params)?;
        self.generations.retain(|(w, _, _)| *w != which);
        self.gpu_drop_decoder(which);
        self.generations.push((which, g, TextStream::default()));
        Ok(())
    }

    /// The next token of the generation `which`, or `None` when it is finished.
    pub fn generate_next(&mut self, which: Which) -> Result<Option<GenStep>> {
        let pos = self
            .generations
            .iter()
            .position(|(w, _, _)| *w == which)
            .ok_or_else(|| Error::msg(format!("no generation with the {} model was started", which.name())))?;
        let (w, mut g, mut stream) = self.generations.swap_remove(pos);
        let step = (|| -> Result<Option<GenStep>> {
            let model = self.model(which)?;
            let tok = self.tokenizer()?;
            Ok(match g.step(model)? {
                Some(id) => Some(GenStep { id, text: stream.push(tok, id)?, token: tok.token_text(id)?, done: g.done }),
                None => None,
            })
        })();
        self.generations.push((w, g, stream));
        step
    }
}
