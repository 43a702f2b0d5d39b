//! A whole checkpoint: one file, or the shards an index (`model.safetensors.index.json`,
//! `pytorch_model.bin.index.json`) lists, joined into one namespace of tensors, in whichever format they are; a head
//! saved as a copy of the token embedding recognised as tied; its fingerprint.

use crate::model::checkpoint::tensor::{RawTensor, TensorFile, TensorInfo};
use crate::{Error, Result};
use std::collections::{BTreeMap, HashMap};

/// A whole checkpoint: one file, or the shards its index lists.
pub struct Checkpoint {
    files: Vec<Box<dyn TensorFile>>,
    /// tensor name -> index into `files`
    index: BTreeMap<String, usize>,
    /// `lm_head.weight` was saved beside the token embedding with the same values: recognised as tied and left out
    /// (stored once).
    head_copy: bool,
}

#[derive(serde::Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

impl Checkpoint {
    /// Join already opened files of one format (safetensors, say). With `index_json` (the text of
    /// `model.safetensors.index.json`), every shard it names must be among `files` (matched by the last path
    /// component) and every tensor must be where it says.
    pub fn new<F: TensorFile + 'static>(files: Vec<F>, index_json: Option<&str>) -> Result<Self> {
        let files = files.into_iter().map(|f| Box::new(f) as Box<dyn TensorFile>).collect();
        Self::from_files(files, index_json.map(|text| ("model.safetensors.index.json", text)))
    }

    /// Join already opened files; `index` is the shard index's file name and text, when there is one.
    pub fn from_files(files: Vec<Box<dyn TensorFile>>, index: Option<(&str, &str)>) -> Result<Self> {
        let index_json = index.map(|(_, text)| text);
        let index_name = index.map_or("the shard index", |(name, _)| name);
        if files.is_empty() {
            return Err(Error::msg("no weights file was given"));
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
            let idx: ShardIndex =
                serde_json::from_str(text).map_err(|e| Error::file(index_name, format!("cannot be parsed ({e})")))?;
            let base = |p: &str| p.rsplit(['/', '\\']).next().unwrap_or(p).to_string();
            for (tensor, shard) in &idx.weight_map {
                let Some(pos) = files.iter().position(|f| base(f.file_name()) == base(shard)) else {
                    return Err(Error::file(
                        shard.clone(),
                        format!("is listed in {index_name} (for `{tensor}`) but was not given"),
                    ));
                };
                if index.get(tensor) != Some(&pos) {
                    return Err(Error::tensor(
                        tensor,
                        format!("{index_name} puts it in {shard}, which does not hold it"),
                    ));
                }
            }
        }
        let mut ckpt = Self { files, index, head_copy: false };
        if ckpt.head_is_embedding_copy()? {
            ckpt.index.remove("lm_head.weight");
            ckpt.head_copy = true;
        }
        Ok(ckpt)
    }

    /// Whether `lm_head.weight` holds the token embedding's values: the same bytes of the same file (PyTorch saves a
    /// tied head as a second name of one storage), or, of the same dtype and shape, equal values (compared a slice at a
    /// time, stopping at the first difference).
    fn head_is_embedding_copy(&self) -> Result<bool> {
        let emb = embedding_name(self);
        let (Some(h), Some(e)) = (self.index.get("lm_head.weight"), self.index.get(&emb)) else { return Ok(false) };
        let (Some(hi), Some(ei)) = (self.info("lm_head.weight"), self.info(&emb)) else { return Ok(false) };
        if hi.dtype != ei.dtype || hi.shape != ei.shape {
            return Ok(false);
        }
        if h == e && hi.start == ei.start && hi.end == ei.end {
            return Ok(true);
        }
        const SLICE: u64 = 4 << 20;
        let mut at = 0;
        while at < hi.bytes() {
            let n = SLICE.min(hi.bytes() - at) as usize;
            if self.read_slice("lm_head.weight", at, n)? != self.read_slice(&emb, at, n)? {
                return Ok(false);
            }
            at += n as u64;
        }
        Ok(true)
    }

    /// `len` bytes of tensor `name`'s data from byte `offset` of it.
    pub fn read_slice(&self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        let &i = self.index.get(name).ok_or_else(|| Error::tensor(name, "is missing from the checkpoint"))?;
        self.files[i].read_slice(name, offset, len)
    }

    /// Whether a head saved as a copy of the token embedding was recognised as tied and left out.
    pub fn head_copy(&self) -> bool {
        self.head_copy
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

    pub fn files(&self) -> &[Box<dyn TensorFile>] {
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
