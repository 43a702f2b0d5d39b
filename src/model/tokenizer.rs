//! The model's `tokenizer.json`, through the `tokenizers` crate (built without onig so it compiles to wasm32).
//! Both ways `tokenizer.json` writes BPE merges are read: `"a b"` strings and `["a", "b"]` pairs.

use crate::{Error, Result};

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl Tokenizer {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_bytes(bytes)
            .map_err(|e| Error::Tokenizer(format!("cannot be loaded ({e})")))?;
        Ok(Self { inner })
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        let bytes = std::fs::read(path)
            .map_err(|e| Error::file(path.display().to_string(), format!("cannot be read ({e})")))?;
        Self::from_bytes(&bytes)
    }

    /// Token ids of `text`, no special tokens added (GPT-Neo adds none).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc =
            self.inner.encode(text, false).map_err(|e| Error::Tokenizer(format!("cannot encode the text ({e})")))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(|e| Error::Tokenizer(format!("cannot decode ids ({e})")))
    }

    /// The text of a single token, for display (may be a partial UTF-8 character, shown with U+FFFD).
    pub fn token_text(&self, id: u32) -> Result<String> {
        self.decode(&[id])
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

/// Turns a growing list of ids into text pieces, holding back a piece that ends inside a UTF-8 character (byte-level
/// BPE splits multi-byte characters across tokens).
#[derive(Default, Clone, Debug)]
pub struct TextStream {
    ids: Vec<u32>,
    emitted: usize,
}

impl TextStream {
    /// Add one id; return the new text that is complete, if any.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let text = tok.decode(&self.ids)?;
        if text.ends_with('\u{FFFD}') || text.len() < self.emitted || !text.is_char_boundary(self.emitted) {
            return Ok(String::new());
        }
        let piece = text[self.emitted..].to_string();
        self.emitted = text.len();
        Ok(piece)
    }
}

/// Cut the first `tokens` ids into windows of `window`.
pub fn windows(ids: &[u32], tokens: usize, window: usize) -> Result<Vec<Vec<u32>>> {
    if window < 2 {
        return Err(crate::Error::Policy(format!("the evaluation window must be at least 2 tokens, not {window}")));
    }
    let n = tokens.min(ids.len());
    if n < 2 {
        return Err(crate::Error::Policy(format!(
            "the evaluation text has {} tokens; at least 2 are needed",
            ids.len()
        )));
    }
    Ok(ids[..n].chunks(window).filter(|w| w.len() >= 2).map(|w| w.to_vec()).collect())
}
