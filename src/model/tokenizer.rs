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

/// The first `tokens` ids in windows of `window` that start every `stride` tokens: overlapping when `stride` is below
/// `window`, so that each token is seen in several contexts; `None` (or a stride of at least `window`) is
/// [`windows`]. Every window lies inside the first `tokens` ids and together they cover them all: the last window is
/// the first whose end reaches the `tokens`-th id.
pub fn strided_windows(ids: &[u32], tokens: usize, window: usize, stride: Option<usize>) -> Result<Vec<Vec<u32>>> {
    let stride = match stride {
        Some(0) => return Err(crate::Error::Policy("the calibration stride must be at least 1 token".into())),
        Some(s) if s < window => s,
        _ => return windows(ids, tokens, window),
    };
    let n = window_span(ids, tokens, window)?;
    let mut out = Vec::with_capacity(n / stride + 1);
    let mut start = 0;
    while start + 2 <= n {
        let end = (start + window).min(n);
        out.push(ids[start..end].to_vec());
        if end == n {
            break;
        }
        start += stride;
    }
    Ok(out)
}

/// Cut the first `tokens` ids into windows of `window`.
pub fn windows(ids: &[u32], tokens: usize, window: usize) -> Result<Vec<Vec<u32>>> {
    let n = window_span(ids, tokens, window)?;
    Ok(ids[..n].chunks(window).filter(|w| w.len() >= 2).map(|w| w.to_vec()).collect())
}

/// How many of `ids` windows of `window` over the first `tokens` read, once the settings are checked.
fn window_span(ids: &[u32], tokens: usize, window: usize) -> Result<usize> {
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
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strided_windows_overlap_inside_the_first_tokens_and_cover_them() {
        let ids: Vec<u32> = (0..100).collect();
        let w = strided_windows(&ids, 40, 16, Some(8)).unwrap();
        let starts: Vec<u32> = w.iter().map(|w| w[0]).collect();
        assert_eq!(starts, [0, 8, 16, 24]);
        assert!(w.iter().all(|w| w.len() == 16 && w.windows(2).all(|p| p[1] == p[0] + 1)));
        assert_eq!(*w.last().unwrap().last().unwrap(), 39, "the last window ends at the 40th id, not past it");
        // a stride that does not divide: the last window is cut at the end
        let w = strided_windows(&ids, 40, 16, Some(10)).unwrap();
        assert_eq!(w.iter().map(|w| (w[0], w.len())).collect::<Vec<_>>(), [(0, 16), (10, 16), (20, 16), (30, 10)]);
        // fewer ids than tokens
        let w = strided_windows(&ids[..20], 40, 16, Some(8)).unwrap();
        assert_eq!(w.iter().map(|w| (w[0], w.len())).collect::<Vec<_>>(), [(0, 16), (8, 12)]);
        // no stride, or one of a window or more: side by side
        for s in [None, Some(16), Some(50)] {
            assert_eq!(strided_windows(&ids, 40, 16, s).unwrap(), windows(&ids, 40, 16).unwrap());
        }
        assert!(strided_windows(&ids, 40, 16, Some(0)).is_err());
        assert!(strided_windows(&ids, 40, 1, Some(1)).is_err());
    }
}
