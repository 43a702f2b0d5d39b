//! The session wing: one person's work with one model, as the page runs it — open the files, load the original,
//! compress it step by step, evaluate the two (in parts that other workers can take, or with the original streamed
//! from its file), generate from both, export — and what opening a new model invalidates. Plain Rust: the wasm edge
//! only converts `File`s, JS values and errors, and `cargo test` runs every scenario natively (tests/session.rs).
//!
//! One file a part of the work: `compress` (and export), `evaluate`, `generate`,
//! `explore` (spectra, previews, sensitivity, sweeps, the target search); [`memory`] (the heap budget) and
//! [`reports`] (what each step returns). The session's state is this module's [`Session`].
//!
//! May import: [`crate::explore`], [`crate::compression`], [`crate::evaluation`], [`crate::model`], [`crate::error`],
//! [`crate::alloc`].

mod compress;
mod evaluate;
mod explore;
mod generate;
pub mod gpu;
pub mod memory;
pub mod reports;
pub mod speed;

use crate::compression::calib::Calibrator;
use crate::compression::matrix::{Factored, LayerReport};
use crate::compression::pipeline::Compressor;
use crate::compression::policy::Policy;
use crate::compression::refit::Refit;
use crate::evaluation::metrics::{Evaluator, OriginalStates};
use crate::evaluation::streaming::StreamingEvaluator;
use crate::explore::{SensitivityRun, TargetSearch};
use crate::model::bundle::ModelBundle;
use crate::model::checkpoint::fingerprint;
pub use crate::model::folder::ModelFiles;
use crate::model::generate::Generation;
use crate::model::gpt_neo::GptNeo;
use crate::model::linear::LinearWeight;
use crate::model::tokenizer::{TextStream, Tokenizer};
use crate::model::weights::Precision;
use crate::{Error, Result};
pub use evaluate::EvalSpec;
pub use memory::MemoryBudget;
pub use reports::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Which of the session's two models.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Which {
    Original,
    Compressed,
}

impl Which {
    /// The model a page names: "original" or "compressed".
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "original" => Ok(Which::Original),
            "compressed" => Ok(Which::Compressed),
            other => Err(Error::msg(format!("there is no \"{other}\" model: original or compressed"))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Which::Original => "original",
            Which::Compressed => "compressed",
        }
    }
}

/// The compressed model and where it came from.
struct CompressedSlot {
    model: GptNeo,
    /// Present when it was compressed here (and so can be exported).
    weights: Option<HashMap<String, LinearWeight>>,
    reports: Vec<LayerReport>,
    policy: Option<Policy>,
    /// Tensor bytes of its checkpoint (as exported or as loaded).
    tensor_bytes: u64,
    /// Live heap bytes it holds, measured.
    resident_bytes: usize,
    /// A compressed checkpoint loaded from a file keeps its bundle for reading.
    file_bundle: Option<ModelBundle>,
    /// Seconds the compression took here (calibration, probes, refit, factoring); 0 when loaded from a file.
    seconds: f64,
}

/// An evaluation with the original in memory (split over workers if asked), or streamed from its file.
enum Evaluation {
    InMemory(Evaluator),
    Streamed(StreamingEvaluator),
}

/// One model session: the original model, a compression in progress or done, an evaluation, generations.
pub struct Session {
    bundle: Option<ModelBundle>,
    original: Option<GptNeo>,
    compressor: Option<Compressor>,
    calibrator: Option<Calibrator>,
    /// Whether the compression in progress collects its calibration statistics a block at a time, as its work reaches
    /// each block (all of them at once would not fit).
    calibrate_by_stage: bool,
    /// The calibration text's tokens, while a compression that probes or refits needs them.
    calibration_ids: Option<Vec<u32>>,
    refit: Option<Refit>,
    compressed: Option<CompressedSlot>,
    evaluator: Option<Evaluation>,
    /// The original's final hidden states on the windows it was evaluated on: a later evaluation on the same tokens
    /// runs only its head ([`OriginalStates`]). A new original starts a new session, and so new states.
    original_states: OriginalStates,
    /// The last compression's plain factors, by what they depend on: the next compression takes those it plans the
    /// same way instead of factoring them again ([`crate::compression::pipeline::Compressor::reuse`]).
    factor_reuse: HashMap<String, Factored>,
    /// The original's weights' own singular values, by matrix name, as compressions computed them (the spectrum pass
    /// of a later one takes them).
    plain_spectra: HashMap<String, Vec<f64>>,
    /// The last calibration's statistics, while they fit, for the next compression calibrated on the same text,
    /// tokens and window (dropped when a compression without calibration starts).
    calibrated: Option<crate::compression::calib::Calibrated>,
    /// A quality target searched one compression at a time ([`Session::target_begin`]).
    target: Option<TargetSearch>,
    /// A sensitivity table measured a matrix at a time ([`Session::sensitivity_begin`]).
    sensitivity: Option<SensitivityRun>,
    /// When the compression in progress began ([`crate::clock::now`]).
    compress_started: f64,
    generations: Vec<(Which, Generation, TextStream)>,
    memory: MemoryBudget,
    /// The GPU, when one is in use, and the models put on it.
    gpu: Option<gpu::GpuState>,
    /// The heap's size, for [`Session::memory`].
    heap: fn() -> f64,
}

fn live_heap() -> f64 {
    crate::alloc::live_bytes() as f64
}

impl Session {
    /// A session that plans for `memory`; `heap` tells how large the heap has grown (for [`Session::memory`]).
    pub fn new(memory: MemoryBudget, heap: Option<fn() -> f64>) -> Self {
        Session {
            bundle: None,
            original: None,
            compressor: None,
            calibrator: None,
            calibrate_by_stage: false,
            calibration_ids: None,
            refit: None,
            compressed: None,
            evaluator: None,
            original_states: OriginalStates::default(),
            factor_reuse: HashMap::new(),
            plain_spectra: HashMap::new(),
            calibrated: None,
            target: None,
            sensitivity: None,
            compress_started: 0.0,
            generations: Vec::new(),
            memory,
            gpu: None,
            heap: heap.unwrap_or(live_heap),
        }
    }

    /// Cap the heap this session plans for: what would not fit is refused with a sentence before it is allocated.
    pub fn set_memory_limit(&mut self, bytes: f64) {
        self.memory.set_limit(bytes);
    }

    /// Take the user's files: config.json, tokenizer.json, *.safetensors and the shard index, or one compressed
    /// checkpoint exported by this program. Reads only config, tokenizer and the safetensors headers. An original
    /// checkpoint replaces the session; a compressed one becomes the compressed model (compared with the loaded
    /// original when it was made from it).
    pub fn open(&mut self, files: ModelFiles) -> Result<OpenReport> {
        let bundle = ModelBundle::from_files(files)?;
        let compressed = bundle.is_compressed();
        let summary = bundle.summary()?;
        let mut missing = Vec::new();
        if bundle.tokenizer.is_none() {
            missing.push("tokenizer.json, or vocab.json and merges.txt (needed to turn text into tokens)".to_string());
        }
        let ignored = bundle.ignored.iter().map(|i| format!("{} ({})", i.name, i.why)).collect();
        let meta = |k: &str| {
            bundle
                .ckpt
                .metadata()
                .and_then(|m| m.get(k))
                .and_then(|v| serde_json::from_str::<serde_json::Value>(v).ok())
        };
        let (layers, policy) = (meta("layers"), meta("policy"));
        if compressed {
            // checked before anything of the session is dropped or loaded: a refused file leaves the session as it was
            let policy_v: Option<Policy> = match &policy {
                Some(p) => {
                    let file = bundle.ckpt.files()[0].file_name();
                    let damaged = |e: String| Error::file(file, format!("has damaged metadata: `policy` {e}"));
                    let p: Policy = serde_json::from_value(p.clone())
                        .map_err(|e| damaged(format!("is not a compression policy ({e})")))?;
                    p.validate().map_err(|e| damaged(format!("is not valid ({e})")))?;
                    Some(p)
                }
                None => None,
            };
            let source = meta("source");
            let matches_original =
                match (&self.bundle, source.as_ref().and_then(|s| s.get("fingerprint")).and_then(|f| f.as_str())) {
                    (Some(orig), Some(fp)) => fingerprint(&orig.ckpt) == fp,
                    _ => false,
                };
            self.generations.retain(|(w, _, _)| *w != Which::Compressed);
            self.compressed = None;
            self.gpu_forget(false);
            self.evaluator = None;
            let need = bundle.estimate_model_bytes(true) as f64;
            self.memory.check("the compressed model", need, 0.8, "the file itself is fine")?;
            let (model, resident, _) = crate::alloc::measure(|| bundle.load_model(false));
            let model = model?;
            let tensor_bytes = bundle.tensor_bytes();
            let reports = model.linears().iter().map(|l| LayerReport::loaded(l, layers.as_ref())).collect();
            if !matches_original {
                // compared with nothing: it becomes the session's only model
                self.bundle = None;
                self.original = None;
                self.gpu_forget(true);
                self.sensitivity = None;
                self.generations.clear();
            }
            self.compressed = Some(CompressedSlot {
                model,
                weights: None,
                reports,
                policy: policy_v,
                tensor_bytes,
                resident_bytes: resident,
                file_bundle: Some(bundle),
                seconds: 0.0,
            });
            return Ok(OpenReport {
                summary,
                missing,
                ignored,
                kind: OpenedKind::Compressed,
                matches_original,
                layers,
                policy,
            });
        }
        let gpu = self.gpu.take();
        *self = Session::new(self.memory, Some(self.heap));
        self.gpu = gpu;
        self.gpu_forget(true);
        self.bundle = Some(bundle);
        Ok(OpenReport {
            summary,
            missing,
            ignored,
            kind: OpenedKind::Original,
            matches_original: false,
            layers: None,
            policy: None,
        })
    }

    /// Load the original model's weights (f32, or kept in f16/bf16 when f32 would not fit), calling
    /// `progress(done, total, tensor)` after each tensor.
    pub fn load(&mut self, progress: &dyn Fn(usize, usize, &str)) -> Result<Loaded> {
        self.gpu_forget(true);
        let b = self.bundle.as_ref().ok_or_else(|| Error::msg("no original model is open"))?;
        // f32 if it fits; else 16-bit matrices as stored; else every matrix in f16
        let at = |p: Precision| (p, b.estimate_bytes_at(p) as f64);
        let tries = [at(Precision::F32), at(Precision::AsStored), at(Precision::F16)];
        let tensor_bytes = b.tensor_bytes();
        if self.gpu.is_some() && !self.memory.fits(tries[0].1, 0.8) {
            // the GPU reads it from its file as stored; no copy of it is made here
            return Ok(Loaded {
                bytes: 0,
                keep_half: false,
                precision: Precision::AsStored,
                resident_bytes: 0,
                tensor_bytes,
                on_gpu_only: true,
            });
        }
        let Some(&(precision, _)) = tries.iter().find(|(_, bytes)| self.memory.fits(*bytes, 0.8)) else {
            return Err(self.memory.no_room(
                "the original model (every matrix in f16)",
                tries[2].1,
                "it can still be compressed and exported, but not run here",
            ));
        };
        let keep_half = precision != Precision::F32;
        let total = b.tensor_count();
        let report = |done: usize, name: &str| progress(done, total, name);
        let (model, resident, _) = crate::alloc::measure(|| b.load_model_with_progress(precision, &report));
        let model = model?;
        let bytes = model.weight_bytes();
        self.original = Some(model);
        Ok(Loaded { bytes, keep_half, precision, resident_bytes: resident, tensor_bytes, on_gpu_only: false })
    }

    fn bundle_and_original(&self) -> Result<(&ModelBundle, &GptNeo)> {
        let b = self.bundle.as_ref().ok_or_else(|| Error::msg("no original model is open"))?;
        let o = self.original.as_ref().ok_or_else(|| Error::msg("the original model is not loaded"))?;
        Ok((b, o))
    }

    /// The compressed model's layer reports.
    pub fn layer_reports(&self) -> Result<&[LayerReport]> {
        Ok(&self.compressed.as_ref().ok_or_else(|| Error::msg("there is no compressed model"))?.reports)
    }

    /// Token ids of a text.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer()?.encode(text)
    }

    /// Heap bytes in use (measured by the counting allocator) and the size of the heap.
    pub fn memory(&self) -> Memory {
        Memory { live_bytes: crate::alloc::live_bytes(), wasm_memory_bytes: (self.heap)() }
    }

    fn model(&self, which: Which) -> Result<&GptNeo> {
        match which {
            Which::Original => self.original.as_ref(),
            Which::Compressed => self.compressed.as_ref().map(|c| &c.model),
        }
        .ok_or_else(|| Error::msg(format!("the {} model is not loaded", which.name())))
    }

    fn tokenizer(&self) -> Result<&Tokenizer> {
        if let Some(b) = &self.bundle {
            return b.tokenizer();
        }
        match self.compressed.as_ref().and_then(|c| c.file_bundle.as_ref()) {
            Some(b) => b.tokenizer(),
            None => Err(Error::msg("no model is open")),
        }
    }
}
