//! The files a person hands over, sorted by name into what a model needs.

use crate::model::checkpoint::ByteSource;
use crate::Result;

/// The model files a person handed over, picked out by name: config.json, tokenizer.json, the shard index (all read
/// whole: they are small) and the safetensors files (read by byte range).
#[derive(Default)]
pub struct ModelFiles {
    pub config: Option<Vec<u8>>,
    pub tokenizer: Option<Vec<u8>>,
    pub index: Option<Vec<u8>>,
    pub weights: Vec<Box<dyn ByteSource>>,
    /// Names of files that are none of these.
    pub ignored: Vec<String>,
}

impl ModelFiles {
    /// Sort one file into its place by its name; `read_all` is called only for the small JSON files.
    pub fn add(&mut self, name: &str, source: Box<dyn ByteSource>) -> Result<()> {
        let all = |s: Box<dyn ByteSource>| s.read_at(0, usize::try_from(s.len()).unwrap_or(usize::MAX));
        match name {
            "config.json" => self.config = Some(all(source)?),
            "tokenizer.json" => self.tokenizer = Some(all(source)?),
            "model.safetensors.index.json" => self.index = Some(all(source)?),
            n if n.ends_with(".safetensors") => self.weights.push(source),
            _ => self.ignored.push(name.to_string()),
        }
        Ok(())
    }
}
