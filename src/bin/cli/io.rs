//! What the commands share: reading a model with a text, writing a file, the machine's cores.

use semantic_llm_compressor::model::bundle::ModelBundle;
use semantic_llm_compressor::model::gpt_neo::GptNeo;
use semantic_llm_compressor::{Error, Result};

pub(super) fn write_file(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|e| Error::file(path.display().to_string(), format!("cannot be written ({e})")))
}

/// The original model and the tokens of a text.
pub(super) fn model_and_text(
    model: &std::path::Path,
    text: &std::path::Path,
) -> Result<(ModelBundle, GptNeo, Vec<u32>)> {
    let b = ModelBundle::open_dir(model)?;
    let text = std::fs::read_to_string(text)
        .map_err(|e| Error::file(text.display().to_string(), format!("cannot be read ({e})")))?;
    let m = b.load_model(false)?;
    let ids = b.tokenizer()?.encode(&text)?;
    Ok((b, m, ids))
}

/// The machine's cores.
pub(super) fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
