//! A whole checkpoint: one file, or the shards a `model.safetensors.index.json` lists, joined into one namespace of
//! tensors; its fingerprint.

use crate::model::checkpoint::safetensors::{SafetensorsFile, TensorInfo};
#[cfg(not(target_arch = "wasm32"))]
use crate::model::checkpoint::source::FileSource;
use crate::model::checkpoint::tensor::RawTensor;
use crate::{Error, Result};
use std::collections::{BTreeMap, HashMap};

/// A whole checkpoint: one file, or the shards listed by `model.safetensors.index.json`.
pub struct Checkpoint {
    files: Vec<SafetensorsFile>,
    /// tensor name -> index into `files`
    index: BTreeMap<String, usize>,
}

#[derive(serde::Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

impl Checkpoint {
    /// Join already opened files. With `index_json` (the text of `model.safetensors.index.json`), every shard it names
    /// must be among `files` (matched by the last path component) and every tensor must be where it says.
    pub fn new(files: Vec<SafetensorsFile>, index_json: Option<&str>) -> Result<Self> {
        if files.is_empty() {
            return Err(Error::msg("no .safetensors file was given"));
        }
        let mut index: BTreeMap<String, usize> = BTreeMap::new();
        for (i, f) in files.iter().enumerate() {
            for name in f.names() {
                if let Some(&j) = index.get(&name) {
                    return Err(Error::tensor(
                        &name,
                        format!("appears in both {} and {}", files[j].file_name(), f.file_name()),
                    ));
                }
                index.insert(name, i);
            }
        }
        if let Some(text) = index_json {
            let idx: ShardIndex = serde_json::from_str(text)
                .map_err(|e| Error::file("model.safetensors.index.json", format!("cannot be parsed ({e})")))?;
            let base = |p: &str| p.rsplit(['/', '\\']).next().unwrap_or(p).to_string();
            for (tensor, shard) in &idx.weight_map {
                let Some(pos) = files.iter().position(|f| base(f.file_name()) == base(shard)) else {
                    return Err(Error::file(
                        shard.clone(),
                        format!("is listed in model.safetensors.index.json (for `{tensor}`) but was not given"),
                    ));
                };
                if index.get(tensor) != Some(&pos) {
                    return Err(Error::tensor(
                        tensor,
                        format!("model.safetensors.index.json puts it in {shard}, which does not hold it"),
                    ));
                }
            }
        }
        Ok(Self { files, index })
    }

    /// Open a checkpoint directory: `model.safetensors`, or the shards of `model.safetensors.index.json`.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open_dir(dir: &std::path::Path) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        if index_path.exists() {
            let text = std::fs::read_to_string(&index_path)
                .map_err(|e| Error::file(index_path.display().to_string(), e.to_string()))?;
            let idx: ShardIndex = serde_json::from_str(&text)
                .map_err(|e| Error::file(index_path.display().to_string(), format!("cannot be parsed ({e})")))?;
            let shards: std::collections::BTreeSet<&String> = idx.weight_map.values().collect();
            let files = shards
                .into_iter()
                .map(|s| SafetensorsFile::open(Box::new(FileSource::open(&dir.join(s))?)))
                .collect::<Result<Vec<_>>>()?;
            return Self::new(files, Some(&text));
        }
        let single = dir.join("model.safetensors");
        if !single.exists() {
            return Err(Error::file(
                dir.display().to_string(),
                "holds neither model.safetensors nor model.safetensors.index.json",
            ));
        }
        Self::new(vec![SafetensorsFile::open(Box::new(FileSource::open(&single)?))?], None)
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.index.keys()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.index.get(name).and_then(|&i| self.files[i].info(name))
    }

    pub fn read(&self, name: &str) -> Result<RawTensor> {
        let &i = self.index.get(name).ok_or_else(|| Error::tensor(name, "is missing from the checkpoint"))?;
        self.files[i].read(name)
    }

    pub fn files(&self) -> &[SafetensorsFile] {
        &self.files
    }

    /// The `__metadata__` of the first file.
    pub fn metadata(&self) -> Option<&HashMap<String, String>> {
        self.files[0].metadata()
    }

    /// Sum of the files' sizes.
    pub fn file_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.file_len()).sum()
    }
}

/// A fingerprint of a checkpoint's tensor table: SHA-256 over every tensor's name, dtype, shape and byte range, and
/// the files' sizes. Cheap (no weights are read) and changes whenever the layout does.
pub fn fingerprint(ckpt: &Checkpoint) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for name in ckpt.names() {
        if let Some(i) = ckpt.info(name) {
            h.update(format!("{name}|{:?}|{:?}|({}, {})\n", i.dtype, i.shape, i.start, i.end).as_bytes());
        }
    }
    for f in ckpt.files() {
        h.update(f.file_len().to_le_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The token embedding's tensor name in this checkpoint (`transformer.wte.weight` or `wte.weight`).
pub fn embedding_name(ckpt: &Checkpoint) -> String {
    if ckpt.contains("transformer.wte.weight") { "transformer.wte.weight" } else { "wte.weight" }.to_string()
}
