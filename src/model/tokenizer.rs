//! The model's tokenizer, through the `tokenizers` crate (built without onig so it compiles to wasm32): its
//! `tokenizer.json`, or GPT-2's "slow" files (`vocab.json` and `merges.txt`, with `tokenizer_config.json` and
//! `special_tokens_map.json`) turned into the `tokenizer.json` transformers builds from them. Both ways
//! `tokenizer.json` writes BPE merges are read: `"a b"` strings and `["a", "b"]` pairs.

use crate::{Error, Result};
use serde_json::{json, Value};

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl Tokenizer {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        check_bpe_merges(bytes)?;
        let inner = tokenizers::Tokenizer::from_bytes(bytes)
            .map_err(|e| Error::Tokenizer(format!("cannot be loaded ({e})")))?;
        Ok(Self { inner })
    }

    /// GPT-2's slow tokenizer files as transformers turns them into a fast tokenizer (its `GPT2Converter`): a byte-level
    /// BPE over `vocab.json` and the merges of `merges.txt`, no prefix space unless `tokenizer_config.json` asks for
    /// one, the byte-level decoder and post-processor, and the special tokens the two JSON files name (GPT-Neo's
    /// `<|endoftext|>`) matched whole. Returns the `tokenizer.json` text (what an exported checkpoint carries) too.
    pub fn from_slow_files(
        vocab_json: &[u8],
        merges_txt: &[u8],
        tokenizer_config: Option<&[u8]>,
        special_tokens_map: Option<&[u8]>,
    ) -> Result<(Self, String)> {
        let json = slow_to_json(vocab_json, merges_txt, tokenizer_config, special_tokens_map)?;
        Ok((Self::from_bytes(json.as_bytes())?, json))
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

/// The text of the `tokenizer.json` that transformers builds from GPT-2's slow files (see
/// [`Tokenizer::from_slow_files`]).
fn slow_to_json(
    vocab_json: &[u8],
    merges_txt: &[u8],
    tokenizer_config: Option<&[u8]>,
    special_tokens_map: Option<&[u8]>,
) -> Result<String> {
    let bad = |file: &str, what: String| Error::file(file, what);
    let vocab: serde_json::Map<String, Value> = serde_json::from_slice(vocab_json)
        .map_err(|e| bad("vocab.json", format!("is not a JSON object of tokens to ids ({e})")))?;
    if let Some((t, _)) = vocab.iter().find(|(_, id)| id.as_u64().is_none_or(|i| i > u32::MAX as u64)) {
        return Err(bad("vocab.json", format!("gives token {t:?} an id that is not a whole number")));
    }
    let text = std::str::from_utf8(merges_txt).map_err(|_| bad("merges.txt", "is not UTF-8 text".into()))?;
    let mut merges = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() || (n == 0 && line.starts_with("#version")) {
            continue;
        }
        let (a, b) = line
            .split_once(' ')
            .filter(|(a, b)| !a.is_empty() && !b.is_empty() && !b.contains(' '))
            .ok_or_else(|| bad("merges.txt", format!("line {} is not two tokens separated by a space", n + 1)))?;
        for t in [a, b, &format!("{a}{b}")] {
            if !vocab.contains_key(t) {
                return Err(bad(
                    "merges.txt",
                    format!("line {} merges into {t:?}, which vocab.json does not have", n + 1),
                ));
            }
        }
        merges.push(Value::String(format!("{a} {b}")));
    }
    let read = |file: &str, bytes: Option<&[u8]>| -> Result<Value> {
        bytes
            .map_or(Ok(Value::Null), |b| serde_json::from_slice(b).map_err(|e| bad(file, format!("is not JSON ({e})"))))
    };
    let config = read("tokenizer_config.json", tokenizer_config)?;
    let special_map = read("special_tokens_map.json", special_tokens_map)?;
    // a special token is written as its text, or as {"content": text, ...}
    let content = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(str::to_string),
        _ => None,
    };
    let mut specials: Vec<String> = Vec::new();
    for source in [&special_map, &config] {
        for key in ["bos_token", "eos_token", "unk_token", "pad_token"] {
            specials.extend(source.get(key).and_then(content));
        }
        if let Some(extra) = source.get("additional_special_tokens").and_then(|v| v.as_array()) {
            specials.extend(extra.iter().filter_map(content));
        }
    }
    // newer tokenizer_config.json files list their added tokens by id
    let mut added: Vec<(u64, String)> = Vec::new();
    if let Some(decoder) = config.get("added_tokens_decoder").and_then(|v| v.as_object()) {
        for (id, t) in decoder {
            if let (Ok(id), Some(c)) = (id.parse::<u64>(), content(t)) {
                added.push((id, c));
            }
        }
    }
    for s in specials {
        if added.iter().all(|(_, c)| *c != s) {
            let id = vocab.get(&s).and_then(|v| v.as_u64()).ok_or_else(|| {
                bad("special_tokens_map.json", format!("names the special token {s:?}, which vocab.json does not have"))
            })?;
            added.push((id, s));
        }
    }
    added.sort();
    let add_prefix_space = config.get("add_prefix_space").and_then(|v| v.as_bool()).unwrap_or(false);
    let byte_level = |prefix: bool, trim: bool| json!({"type": "ByteLevel", "add_prefix_space": prefix, "trim_offsets": trim, "use_regex": true});
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added.iter().map(|(id, c)| json!({
            "id": id, "content": c, "single_word": false, "lstrip": false, "rstrip": false, "normalized": true,
            "special": true
        })).collect::<Vec<_>>(),
        "normalizer": null,
        "pre_tokenizer": byte_level(add_prefix_space, true),
        "post_processor": byte_level(true, false),
        "decoder": byte_level(true, true),
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
            "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false,
            "vocab": vocab, "merges": merges
        }
    });
    Ok(tokenizer.to_string())
}

/// Checks what the `tokenizers` crate's BPE builder takes on trust (and panics on): that every merge's result is a
/// token of the vocabulary. A merge whose parts are missing, or a file that is not JSON, is left to the crate, which
/// reports it.
fn check_bpe_merges(bytes: &[u8]) -> Result<()> {
    let Ok(json) = serde_json::from_slice::<Value>(bytes) else { return Ok(()) };
    let model = &json["model"];
    let (Some(vocab), Some(merges)) = (model["vocab"].as_object(), model["merges"].as_array()) else { return Ok(()) };
    let prefix = model["continuing_subword_prefix"].as_str().unwrap_or("");
    for (n, merge) in merges.iter().enumerate() {
        let (a, b) = match merge {
            Value::String(s) => match s.split(' ').collect::<Vec<_>>()[..] {
                [a, b] => (a, b),
                _ => continue,
            },
            Value::Array(pair) => match pair.as_slice() {
                [Value::String(a), Value::String(b)] => (a.as_str(), b.as_str()),
                _ => continue,
            },
            _ => continue,
        };
        if !vocab.contains_key(a) || !vocab.contains_key(b) {
            continue;
        }
        let merged = b.get(prefix.len()..).map(|rest| format!("{a}{rest}"));
        if merged.as_ref().is_none_or(|m| !vocab.contains_key(m)) {
            return Err(Error::Tokenizer(format!(
                "cannot be loaded (merge {} joins {a:?} and {b:?} into a token its vocabulary does not have)",
                n + 1
            )));
        }
    }
    Ok(())
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

    #[test]
    fn a_merge_into_a_token_the_vocabulary_lacks_is_refused_not_a_panic() {
        // the tokenizers crate copies the joined token into a buffer as long as the vocabulary's longest token
        let vocab = br#"{"a": 0, "b": 1, "c": 2, "bc": 3, "abc": 4}"#;
        let err = Tokenizer::from_slow_files(vocab, b"#version: 0.2\nbc b\n", None, None).err().unwrap();
        assert!(err.to_string().contains("line 2 merges into \"bcb\""), "{err}");
        let (tok, _) = Tokenizer::from_slow_files(vocab, b"b c\na bc\n", None, None).unwrap();
        assert_eq!(tok.encode("abc").unwrap(), [4]);
        for merges in [r#"["bc b"]"#, r#"[["bc", "b"]]"#] {
            let json = format!(
                r#"{{"version": "1.0", "model": {{"type": "BPE", "vocab": {{"a": 0, "b": 1, "c": 2, "bc": 3, "abc": 4}}, "merges": {merges}}}}}"#
            );
            let err = Tokenizer::from_bytes(json.as_bytes()).err().unwrap();
            assert!(err.to_string().contains("merge 1 joins \"bc\" and \"b\""), "{err}");
        }
    }
}
