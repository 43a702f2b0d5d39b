//! A model as the user hands it over: `config.json`, the checkpoint (safetensors or `pytorch_model.bin`, one file or
//! shards) and the tokenizer (`tokenizer.json`, or GPT-2's slow files), as [`crate::model::folder`] chose them.

use crate::model::checkpoint::{dtype_name, Checkpoint};
use crate::model::config::GptNeoConfig;
use crate::model::folder::{Ignored, ModelFiles, TokenizerFiles};
use crate::model::gpt_neo::GptNeo;
use crate::model::tokenizer::Tokenizer;
use crate::model::weights::{CheckpointWeights, Precision};
use crate::{Error, Result};
use serde::Serialize;
use std::collections::BTreeMap;

pub struct ModelBundle {
    pub cfg: GptNeoConfig,
    pub ckpt: Checkpoint,
    pub tokenizer: Option<Tokenizer>,
    /// config.json's text (what an exported checkpoint carries).
    pub config_json: String,
    /// The tokenizer as `tokenizer.json` text, whichever form it came in (what an exported checkpoint carries).
    pub tokenizer_json: Option<String>,
    /// Where the tokenizer came from: "tokenizer.json", "vocab.json + merges.txt", "the compressed checkpoint".
    pub tokenizer_source: Option<&'static str>,
    /// The files handed over that were not read.
    pub ignored: Vec<Ignored>,
}

/// One tensor of a checkpoint, as `slc inspect` and the page list it.
#[derive(Clone, Debug, Serialize)]
pub struct TensorSummary {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    pub bytes: u64,
}

/// What was found in a checkpoint.
#[derive(Clone, Debug, Serialize)]
pub struct BundleSummary {
    pub model_type: String,
    pub num_layers: usize,
    pub hidden_size: usize,
    pub num_heads: usize,
    pub intermediate_size: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub window_size: usize,
    pub attention: Vec<crate::model::config::AttentionKind>,
    /// Parameters in the checkpoint's float tensors (buffers such as attention masks excluded).
    pub parameters: usize,
    /// Tensor dtypes and how many tensors have each.
    pub dtypes: BTreeMap<String, usize>,
    pub file_bytes: u64,
    pub files: Vec<String>,
    pub tied_head: bool,
    /// `lm_head.weight` was saved as a copy of the token embedding: recognised as tied, stored once.
    pub head_copy: bool,
    pub has_tokenizer: bool,
    /// Where the tokenizer came from: "tokenizer.json", "vocab.json + merges.txt", "the compressed checkpoint".
    pub tokenizer_source: Option<String>,
    /// Set when the checkpoint is one this program exported in compressed form.
    pub compressed: bool,
    pub tensors: Vec<TensorSummary>,
}

/// Tensors some hub checkpoints carry that are buffers, not weights.
pub fn is_buffer(name: &str) -> bool {
    name.ends_with("attn.attention.bias") || name.ends_with("attn.attention.masked_bias")
}

impl ModelBundle {
    pub fn from_parts(config_json: &str, tokenizer_json: Option<&[u8]>, ckpt: Checkpoint) -> Result<Self> {
        let cfg = GptNeoConfig::from_json(config_json)?;
        let tokenizer = tokenizer_json.map(Tokenizer::from_bytes).transpose()?;
        let tokenizer_source = tokenizer_json.map(|_| "tokenizer.json");
        let tokenizer_json = tokenizer_json.map(|t| String::from_utf8_lossy(t).into_owned());
        if let Some(t) = &tokenizer {
            // a model may have more embedding rows than tokens (padded vocabularies), never fewer
            if t.vocab_size() > cfg.vocab_size {
                return Err(Error::Tokenizer(format!(
                    "has {} tokens, but the model's vocab_size is {} (config.json): it belongs to another model, and \
                     its ids past {} would have no embedding",
                    t.vocab_size(),
                    cfg.vocab_size,
                    cfg.vocab_size - 1
                )));
            }
        }
        if crate::model::weights::is_compressed(&ckpt) {
            crate::model::weights::check_compressed_metadata(&ckpt)?;
        }
        Ok(Self {
            cfg,
            ckpt,
            tokenizer,
            config_json: config_json.to_string(),
            tokenizer_json,
            tokenizer_source,
            ignored: Vec::new(),
        })
    }

    /// A model from the files a person handed over ([`ModelFiles::choose`]): config.json and the tokenizer may be
    /// absent when the checkpoint is a compressed one that carries them.
    pub fn from_files(files: ModelFiles) -> Result<Self> {
        let mut chosen = files.choose()?;
        let config = chosen
            .config
            .take()
            .map(|b| String::from_utf8(b).map_err(|_| Error::Config("is not UTF-8 text".into())))
            .transpose()?;
        // another architecture is said before its weights are opened
        if let Some(c) = &config {
            GptNeoConfig::from_json(c)?;
        }
        let (tokenizer, ignored) = (chosen.tokenizer.take(), std::mem::take(&mut chosen.ignored));
        let checkpoint = chosen.checkpoint()?;
        let (tok_json, source): (Option<Vec<u8>>, Option<&'static str>) = match tokenizer {
            Some(TokenizerFiles::Json(json)) => (Some(json), Some("tokenizer.json")),
            Some(TokenizerFiles::Slow { vocab, merges, config, special }) => {
                let (_, json) = Tokenizer::from_slow_files(&vocab, &merges, config.as_deref(), special.as_deref())?;
                (Some(json.into_bytes()), Some("vocab.json + merges.txt"))
            }
            None => (None, None),
        };
        let mut b = Self::from_checkpoint(config.as_deref(), tok_json.as_deref(), checkpoint)?;
        if tok_json.is_some() {
            b.tokenizer_source = source;
        }
        b.ignored = ignored;
        Ok(b)
    }

    /// Like [`ModelBundle::from_parts`], but config.json and tokenizer.json may be absent when the checkpoint is a
    /// compressed one that carries them.
    pub fn from_checkpoint(config_json: Option<&str>, tokenizer_json: Option<&[u8]>, ckpt: Checkpoint) -> Result<Self> {
        let embedded_cfg = crate::model::weights::embedded_config(&ckpt);
        let config = config_json
            .map(str::to_string)
            .or(embedded_cfg)
            .ok_or_else(|| Error::file("config.json", "is missing: drop it together with the model's weights"))?;
        let embedded_tok = crate::model::weights::embedded_tokenizer(&ckpt);
        let embedded = tokenizer_json.is_none() && embedded_tok.is_some();
        let tok: Option<Vec<u8>> = tokenizer_json.map(<[u8]>::to_vec).or(embedded_tok.map(String::into_bytes));
        let mut b = Self::from_parts(&config, tok.as_deref(), ckpt)?;
        if embedded {
            b.tokenizer_source = Some("the compressed checkpoint");
        }
        Ok(b)
    }

    /// Open a model's folder ([`crate::model::folder`]: whichever of the Hub's layouts it is in).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open_dir(dir: &std::path::Path) -> Result<Self> {
        Self::from_files(ModelFiles::from_dir(dir)?)
    }

    /// Bytes of the checkpoint's tensor data, buffers excluded: the size figure the reports compare.
    pub fn tensor_bytes(&self) -> u64 {
        self.ckpt.names().filter(|n| !is_buffer(n)).filter_map(|n| self.ckpt.info(n)).map(|i| i.bytes()).sum()
    }

    pub fn tokenizer(&self) -> Result<&Tokenizer> {
        self.tokenizer
            .as_ref()
            .ok_or_else(|| Error::file("tokenizer.json", "was not given; it is needed to turn text into tokens"))
    }

    /// Whether this is a compressed checkpoint this program wrote (FORMAT.md).
    pub fn is_compressed(&self) -> bool {
        crate::model::weights::is_compressed(&self.ckpt)
    }

    /// Build the model. A compressed checkpoint keeps its INT8 factors and stored dtypes; a plain one is converted
    /// to f32 unless `keep_half` (16-bit matrices kept as stored).
    pub fn load_model(&self, keep_half: bool) -> Result<GptNeo> {
        let precision = if keep_half { Precision::AsStored } else { Precision::F32 };
        self.load_model_with_progress(precision, &|_, _| {})
    }

    /// [`ModelBundle::load_model`], calling `progress(done, name)` after every tensor (about
    /// [`ModelBundle::tensor_count`] calls in all).
    pub fn load_model_with_progress(&self, precision: Precision, progress: &dyn Fn(usize, &str)) -> Result<GptNeo> {
        let compressed;
        let plain;
        let inner: &dyn crate::model::weights::Weights = if self.is_compressed() {
            compressed = crate::model::weights::CompressedWeights { ckpt: &self.ckpt };
            &compressed
        } else {
            plain = CheckpointWeights { ckpt: &self.ckpt, precision };
            &plain
        };
        GptNeo::load(
            &self.cfg,
            &crate::model::weights::WithProgress { inner, done: std::cell::Cell::new(0), report: progress },
        )
    }

    /// Tensors the model reads (buffers excluded; a compressed matrix's factors count once).
    pub fn tensor_count(&self) -> usize {
        let weights = self.ckpt.names().filter(|n| !is_buffer(n) && !n.contains(".weight.")).count();
        weights
            + self
                .ckpt
                .names()
                .filter(|n| {
                    n.ends_with(".weight.U.q")
                        || n.ends_with(".weight.U")
                        || n.ends_with(".weight.q")
                        || n.ends_with(".weight.codes")
                })
                .count()
    }

    /// Bytes the model takes once loaded, from the tensors' shapes and stored dtypes (f32 unless `keep_half`).
    pub fn estimate_model_bytes(&self, keep_half: bool) -> u64 {
        self.estimate_bytes_at(if keep_half { Precision::AsStored } else { Precision::F32 })
    }

    /// Bytes the model takes once loaded at `precision` (a compressed checkpoint: as stored).
    pub fn estimate_bytes_at(&self, precision: Precision) -> u64 {
        let half = |name: &str, dtype: safetensors::Dtype, dims: usize| match precision {
            _ if self.is_compressed() => matches!(dtype, safetensors::Dtype::F16 | safetensors::Dtype::BF16),
            Precision::F32 => false,
            Precision::AsStored => matches!(dtype, safetensors::Dtype::F16 | safetensors::Dtype::BF16),
            // every matrix read as a linear weight (the token embedding with its tied head too); not the positions
            Precision::F16 => dims == 2 && !name.contains("wpe"),
        };
        let mut total = 0u64;
        for name in self.ckpt.names() {
            if is_buffer(name) {
                continue;
            }
            if let Some(info) = self.ckpt.info(name) {
                let n = info.numel();
                let size = match info.dtype {
                    safetensors::Dtype::I8 | safetensors::Dtype::U8 => 1,
                    d if half(name, d, info.shape.len()) => 2,
                    _ => 4,
                };
                total = total.saturating_add(n.saturating_mul(size));
            }
        }
        total
    }

    pub fn summary(&self) -> Result<BundleSummary> {
        let mut dtypes = BTreeMap::new();
        let mut parameters = 0;
        let mut tensors = Vec::new();
        for name in self.ckpt.names() {
            let Some(info) = self.ckpt.info(name) else { continue };
            *dtypes.entry(dtype_name(info.dtype)).or_insert(0) += 1;
            if !is_buffer(name) {
                parameters += info.numel() as usize;
            }
            tensors.push(TensorSummary {
                name: name.clone(),
                dtype: dtype_name(info.dtype),
                shape: info.shape.clone(),
                bytes: info.bytes(),
            });
        }
        let compressed = self.is_compressed();
        if compressed {
            parameters = crate::model::weights::original_parameters(&self.ckpt).unwrap_or(parameters);
        }
        let c = &self.cfg;
        Ok(BundleSummary {
            model_type: c.model_type.clone().unwrap_or_default(),
            num_layers: c.num_layers,
            hidden_size: c.hidden_size,
            num_heads: c.num_heads,
            intermediate_size: c.intermediate_size(),
            vocab_size: c.vocab_size,
            max_position_embeddings: c.max_position_embeddings,
            window_size: c.window_size,
            attention: c.attention_kinds()?,
            parameters,
            dtypes,
            file_bytes: self.ckpt.file_bytes(),
            files: self.ckpt.files().iter().map(|f| f.file_name().to_string()).collect(),
            tied_head: !self.ckpt.contains("lm_head.weight"),
            head_copy: self.ckpt.head_copy(),
            has_tokenizer: self.tokenizer.is_some(),
            tokenizer_source: self.tokenizer_source.map(str::to_string),
            compressed,
            tensors,
        })
    }
}
