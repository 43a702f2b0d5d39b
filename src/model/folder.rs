//! A model's folder as people have it from the Hub (`git clone`, a download, a few files chosen by hand), sorted by
//! name into what this program reads, before any file's bytes are read: `config.json`; the tokenizer as
//! `tokenizer.json`, or GPT-2's slow files `vocab.json` + `merges.txt` (with `tokenizer_config.json` and
//! `special_tokens_map.json`); the weights as safetensors (one file, or shards with `model.safetensors.index.json`),
//! or else as `pytorch_model.bin` (one file, or shards with `pytorch_model.bin.index.json`). Everything else
//! (`flax_model.msgpack`, `tf_model.h5`, `rust_model.ot`, a README, `.gitattributes`, the weights of the format not
//! used) is listed as ignored and never read.

use crate::model::checkpoint::{ByteSource, Checkpoint, PytorchFile, SafetensorsFile, TensorFile};
use crate::{Error, Result};
use serde::Serialize;

/// The files a person handed over, by name; nothing is read until [`ModelFiles::choose`].
#[derive(Default)]
pub struct ModelFiles {
    files: Vec<(String, Box<dyn ByteSource>)>,
}

/// A file that is not read, and why.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Ignored {
    pub name: String,
    pub why: String,
}

/// The tokenizer as it was handed over.
pub enum TokenizerFiles {
    /// `tokenizer.json`.
    Json(Vec<u8>),
    /// GPT-2's slow files.
    Slow { vocab: Vec<u8>, merges: Vec<u8>, config: Option<Vec<u8>>, special: Option<Vec<u8>> },
}

/// What a folder holds for this program: the small JSON and text files read whole, the weights still unread
/// ([`Chosen::checkpoint`] opens them, reading their headers only).
pub struct Chosen {
    pub config: Option<Vec<u8>>,
    pub tokenizer: Option<TokenizerFiles>,
    /// "safetensors" or "pytorch_model.bin".
    pub weights_format: &'static str,
    weights: Vec<Box<dyn ByteSource>>,
    /// The shard index's name and text.
    index: Option<(&'static str, String)>,
    pub ignored: Vec<Ignored>,
}

impl Chosen {
    /// Open the weights: each file's header (safetensors) or directory and pickle (PyTorch), joined as the index says.
    pub fn checkpoint(self) -> Result<Checkpoint> {
        let safetensors = self.weights_format == "safetensors";
        let open = |s: Box<dyn ByteSource>| -> Result<Box<dyn TensorFile>> {
            Ok(if safetensors { Box::new(SafetensorsFile::open(s)?) } else { Box::new(PytorchFile::open(s)?) })
        };
        let files = self.weights.into_iter().map(open).collect::<Result<Vec<_>>>()?;
        Checkpoint::from_files(files, self.index.as_ref().map(|(n, t)| (*n, t.as_str())))
    }
}

/// Weights of formats this program does not read, by how their files are named.
const OTHER_WEIGHTS: [(&str, &str); 6] = [
    ("flax_model", "Flax weights"),
    ("tf_model", "TensorFlow weights"),
    ("rust_model.ot", "rust-bert weights"),
    ("model.ckpt", "TensorFlow checkpoint"),
    (".onnx", "ONNX model"),
    (".gguf", "GGUF model"),
];

fn is_safetensors(n: &str) -> bool {
    n.ends_with(".safetensors")
}

/// `pytorch_model.bin` or a shard of it (`pytorch_model-00001-of-00002.bin`).
fn is_pytorch(n: &str) -> bool {
    n == "pytorch_model.bin" || (n.starts_with("pytorch_model-") && n.ends_with(".bin"))
}

impl ModelFiles {
    /// One more file, by its name (the last path component is what counts).
    pub fn add(&mut self, name: &str, source: Box<dyn ByteSource>) -> Result<()> {
        let base = name.rsplit(['/', '\\']).next().unwrap_or(name).to_string();
        self.files.push((base, source));
        Ok(())
    }

    /// Every regular file of `dir` (not its subfolders).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_dir(dir: &std::path::Path) -> Result<Self> {
        let list = std::fs::read_dir(dir)
            .map_err(|e| Error::file(dir.display().to_string(), format!("cannot be listed ({e})")))?;
        let mut paths: Vec<std::path::PathBuf> = list
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file() || t.is_symlink()))
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        paths.sort();
        let mut files = Self::default();
        for p in paths {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            files.add(&name, Box::new(crate::model::checkpoint::FileSource::open(&p)?))?;
        }
        Ok(files)
    }

    /// The names handed over.
    pub fn names(&self) -> Vec<&str> {
        self.files.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// Sort the files into what is read and what is not, and read the small ones.
    pub fn choose(self) -> Result<Chosen> {
        let names: Vec<String> = self.files.iter().map(|(n, _)| n.clone()).collect();
        let has = |n: &str| names.iter().any(|m| m == n);
        let safetensors = names.iter().any(|n| is_safetensors(n));
        let pytorch = names.iter().any(|n| is_pytorch(n));
        let slow = !has("tokenizer.json") && has("vocab.json") && has("merges.txt");
        let weights_format = if safetensors { "safetensors" } else { "pytorch_model.bin" };
        let use_index = if safetensors { "model.safetensors.index.json" } else { "pytorch_model.bin.index.json" };
        if !safetensors && !pytorch {
            let other: Vec<String> = names
                .iter()
                .filter_map(|n| OTHER_WEIGHTS.iter().find(|(p, _)| n.contains(p)).map(|(_, w)| format!("{w} ({n})")))
                .collect();
            return Err(Error::msg(if other.is_empty() {
                "no weights among the files: a model needs model.safetensors (or its shards) or pytorch_model.bin"
                    .to_string()
            } else {
                format!(
                    "the files hold only {}; this program reads safetensors (model.safetensors) or pytorch_model.bin",
                    other.join(", ")
                )
            }));
        }
        let all = |s: &dyn ByteSource| s.read_at(0, usize::try_from(s.len()).unwrap_or(usize::MAX));
        // the shard index says which weights files are the model's; without one, model.safetensors (or
        // pytorch_model.bin) is, or else every file of the format (an exported checkpoint has its own name)
        let index: Option<String> = match self.files.iter().find(|(n, _)| n == use_index) {
            Some((_, s)) => Some(String::from_utf8_lossy(&all(s.as_ref())?).into_owned()),
            None => None,
        };
        let shards: Option<Vec<String>> = match &index {
            Some(text) => Some(shard_names(use_index, text)?),
            None if safetensors && has("model.safetensors") => Some(vec!["model.safetensors".into()]),
            None if !safetensors && has("pytorch_model.bin") => Some(vec!["pytorch_model.bin".into()]),
            None => None,
        };
        let listed = |n: &str| shards.as_ref().is_none_or(|s| s.iter().any(|m| m == n));
        let mut out = ChosenParts::default();
        let mut weights: Vec<Box<dyn ByteSource>> = Vec::new();
        let mut ignored = Vec::new();
        for (name, source) in self.files {
            let why: Option<String> = match name.as_str() {
                "config.json" => {
                    out.config = Some(all(source.as_ref())?);
                    None
                }
                "tokenizer.json" => {
                    out.tokenizer_json = Some(all(source.as_ref())?);
                    None
                }
                "vocab.json" | "merges.txt" | "tokenizer_config.json" | "special_tokens_map.json" if slow => {
                    let bytes = Some(all(source.as_ref())?);
                    match name.as_str() {
                        "vocab.json" => out.vocab = bytes,
                        "merges.txt" => out.merges = bytes,
                        "tokenizer_config.json" => out.tokenizer_config = bytes,
                        _ => out.special = bytes,
                    }
                    None
                }
                "vocab.json" | "merges.txt" | "tokenizer_config.json" | "special_tokens_map.json" => {
                    Some(if has("tokenizer.json") { "tokenizer.json is used" } else { "part of a tokenizer" }.into())
                }
                n if n == use_index => None,
                n if ((safetensors && is_safetensors(n)) || (!safetensors && is_pytorch(n))) && listed(n) => {
                    weights.push(source);
                    None
                }
                n if (safetensors && is_safetensors(n)) || (!safetensors && is_pytorch(n)) => {
                    Some(if index.is_some() {
                        format!("not listed in {use_index}")
                    } else {
                        "not the model's weights file".into()
                    })
                }
                n if is_pytorch(n) || n == "pytorch_model.bin.index.json" => {
                    Some("PyTorch weights: the safetensors are used".into())
                }
                n => Some(
                    OTHER_WEIGHTS
                        .iter()
                        .find(|(p, _)| n.contains(p))
                        .map_or("not used by this program", |(_, w)| w)
                        .to_string(),
                ),
            };
            if let Some(why) = why {
                ignored.push(Ignored { name, why });
            }
        }
        let tokenizer = match (out.tokenizer_json, out.vocab, out.merges) {
            (Some(json), _, _) => Some(TokenizerFiles::Json(json)),
            (None, Some(vocab), Some(merges)) => {
                Some(TokenizerFiles::Slow { vocab, merges, config: out.tokenizer_config, special: out.special })
            }
            _ => None,
        };
        let index = index.map(|t| (use_index, t));
        Ok(Chosen { config: out.config, tokenizer, weights_format, weights, index, ignored })
    }
}

/// The files a shard index lists (its `weight_map`'s values).
fn shard_names(index_name: &str, text: &str) -> Result<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: std::collections::BTreeMap<String, String>,
    }
    let idx: Index =
        serde_json::from_str(text).map_err(|e| Error::file(index_name, format!("cannot be parsed ({e})")))?;
    let mut names: Vec<String> =
        idx.weight_map.into_values().map(|p| p.rsplit(['/', '\\']).next().unwrap_or(&p).to_string()).collect();
    names.sort();
    names.dedup();
    Ok(names)
}

#[derive(Default)]
struct ChosenParts {
    config: Option<Vec<u8>>,
    tokenizer_json: Option<Vec<u8>>,
    vocab: Option<Vec<u8>>,
    merges: Option<Vec<u8>>,
    tokenizer_config: Option<Vec<u8>>,
    special: Option<Vec<u8>>,
}
