//! The session wing: one person's work with one model, as the page runs it — open the files, load the original,
//! compress it step by step, evaluate the two (in parts that other workers can take, or with the original streamed
//! from its file), generate from both, export — and what opening a new model invalidates. Plain Rust: the wasm edge
//! only converts `File`s, JS values and errors, and `cargo test` runs every scenario natively (tests/session.rs).
//!
//! May import: [`crate::explore`], [`crate::compression`], [`crate::evaluation`], [`crate::model`], [`crate::error`],
//! [`crate::alloc`].

pub mod memory;
pub mod reports;

use crate::compression::calib::Calibrator;
use crate::compression::format::{decode_factored, encode_factored, Export};
use crate::compression::pipeline::{considered_matrices, reader, totals, Compressor, LayerReport, StepInfo};
use crate::compression::policy::{Method, Policy};
use crate::compression::refit::Refit;
use crate::compression::sensitivity::Probe;
use crate::compression::svd;
use crate::evaluation::metrics::{Evaluator, PartialSums};
use crate::evaluation::streaming::StreamingEvaluator;
use crate::explore::{policy_label, Point, SensitivityRow, SensitivityRun, TargetSearch};
use crate::model::bundle::ModelBundle;
use crate::model::checkpoint::{embedding_name, fingerprint, ByteSource, Checkpoint, SafetensorsFile};
use crate::model::generate::{Generation, SamplingParams};
use crate::model::gpt_neo::GptNeo;
use crate::model::linear::LinearWeight;
use crate::model::tokenizer::{strided_windows, TextStream, Tokenizer};
use crate::model::weights::{is_compressed, CheckpointWeights, Precision};
use crate::{Error, Result};
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
    pub fn name(self) -> &'static str {
        match self {
            Which::Original => "original",
            Which::Compressed => "compressed",
        }
    }
}

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

/// What an evaluation reads: the text's tokens after the first `skip`, the next `tokens` of them in windows of
/// `window`; this instance takes part `part` of `parts` (every `parts`-th window; 0 of 1 for all).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalSpec {
    pub text: String,
    #[serde(default)]
    pub skip: usize,
    pub tokens: usize,
    pub window: usize,
    #[serde(default)]
    pub part: usize,
    #[serde(default = "one")]
    pub parts: usize,
}

fn one() -> usize {
    1
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
    /// The calibration text's tokens, while a compression that probes or refits needs them.
    calibration_ids: Option<Vec<u32>>,
    refit: Option<Refit>,
    compressed: Option<CompressedSlot>,
    evaluator: Option<Evaluation>,
    /// A quality target searched one compression at a time ([`Session::target_begin`]).
    target: Option<TargetSearch>,
    /// A sensitivity table measured a matrix at a time ([`Session::sensitivity_begin`]).
    sensitivity: Option<SensitivityRun>,
    /// When the compression in progress began ([`crate::clock::now`]).
    compress_started: f64,
    generations: Vec<(Which, Generation, TextStream)>,
    config_json: String,
    tokenizer_json: Option<String>,
    memory: MemoryBudget,
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
            calibration_ids: None,
            refit: None,
            compressed: None,
            evaluator: None,
            target: None,
            sensitivity: None,
            compress_started: 0.0,
            generations: Vec::new(),
            config_json: String::new(),
            tokenizer_json: None,
            memory,
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
        if files.weights.is_empty() {
            return Err(Error::msg(
                "no .safetensors file among the files: a model needs model.safetensors (or its shards)",
            ));
        }
        let config = files
            .config
            .map(|b| String::from_utf8(b).map_err(|_| Error::Config("is not UTF-8 text".into())))
            .transpose()?;
        let index = files.index.map(|b| String::from_utf8_lossy(&b).into_owned());
        let opened = files.weights.into_iter().map(SafetensorsFile::open).collect::<Result<Vec<_>>>()?;
        let ckpt = Checkpoint::new(opened, index.as_deref())?;
        let compressed = is_compressed(&ckpt);
        if !compressed && config.is_none() {
            return Err(Error::file(
                "config.json",
                "is missing: drop it together with the model's .safetensors file(s)",
            ));
        }
        let tok = files.tokenizer;
        let bundle = ModelBundle::from_checkpoint(config.as_deref(), tok.as_deref(), ckpt)?;
        let summary = bundle.summary()?;
        let mut missing = Vec::new();
        if bundle.tokenizer.is_none() {
            missing.push("tokenizer.json (needed to turn text into tokens)".to_string());
        }
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
                ignored: files.ignored,
                kind: OpenedKind::Compressed,
                matches_original,
                layers,
                policy,
            });
        }
        *self = Session::new(self.memory, Some(self.heap));
        self.config_json = config.unwrap_or_default();
        self.tokenizer_json = tok.map(|t| String::from_utf8_lossy(&t).into_owned());
        self.bundle = Some(bundle);
        Ok(OpenReport {
            summary,
            missing,
            ignored: files.ignored,
            kind: OpenedKind::Original,
            matches_original: false,
            layers: None,
            policy: None,
        })
    }

    /// Load the original model's weights (f32, or kept in f16/bf16 when f32 would not fit), calling
    /// `progress(done, total, tensor)` after each tensor.
    pub fn load(&mut self, progress: &dyn Fn(usize, usize, &str)) -> Result<Loaded> {
        let b = self.bundle.as_ref().ok_or_else(|| Error::msg("no original model is open"))?;
        // f32 if it fits; else 16-bit matrices as stored; else every matrix in f16
        let at = |p: Precision| (p, b.estimate_bytes_at(p) as f64);
        let tries = [at(Precision::F32), at(Precision::AsStored), at(Precision::F16)];
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
        Ok(Loaded { bytes, keep_half, precision, resident_bytes: resident, tensor_bytes: b.tensor_bytes() })
    }

    /// Start compressing the original with `policy`. The activation-aware method reads the first
    /// `calibration_tokens` tokens of `calibration_text` through the original model, which must be loaded.
    pub fn compress_begin(&mut self, policy: Policy, calibration_text: Option<&str>) -> Result<CompressBegin<'_>> {
        let b = self
            .bundle
            .as_ref()
            .ok_or_else(|| Error::msg("no original model is open: load the demo model or drop a checkpoint first"))?;
        self.compressed = None;
        self.evaluator = None;
        self.generations.retain(|(w, _, _)| *w != Which::Compressed);
        self.compress_started = crate::clock::now();
        let c = Compressor::new(policy, considered_matrices(&b.cfg, &b.ckpt)?)?;
        self.calibrator = None;
        self.calibration_ids = None;
        self.refit = None;
        if c.needs_calibration() {
            if self.original.is_none() {
                return Err(Error::Policy(
                    "activation-aware SVD runs the original model on calibration text, and it is not loaded here"
                        .into(),
                ));
            }
            let text = calibration_text.ok_or_else(|| Error::msg("activation-aware SVD needs a calibration text"))?;
            let ids = b.tokenizer()?.encode(text)?;
            self.calibrator = Some(Calibrator::new(&ids, c.policy.calibration_tokens, c.policy.calibration_window)?);
            self.calibration_ids = Some(ids);
        }
        let cal = self.calibrator.as_ref();
        let total_steps = c.total_steps(b.cfg.num_layers) + cal.map_or(0, |c| c.total_windows());
        let calibration_tokens = cal.map(|c| c.tokens());
        let c = self.compressor.insert(c);
        Ok(CompressBegin { total_steps, matrices: &c.mats, calibration_tokens, can_split: c.can_split() })
    }

    /// Factor matrix `index` of the compression begun here, for the worker that coordinates it: the result as bytes
    /// for [`Session::compress_accept`] (a helper opens the same files, begins the same policy, and holds nothing but
    /// the matrix it works on).
    pub fn compress_factor_out(&self, index: usize) -> Result<Vec<u8>> {
        let b = self.bundle.as_ref().ok_or_else(|| Error::msg("no original model is open"))?;
        let c = self.compressor.as_ref().ok_or_else(|| Error::msg("no compression was started"))?;
        encode_factored(&c.job(index)?.run(&reader(&b.ckpt))?)
    }

    /// Keep a matrix another worker factored ([`Session::compress_factor_out`]).
    pub fn compress_accept(&mut self, bytes: Vec<u8>) -> Result<CompressStep<'_>> {
        let c = self.compressor.as_mut().ok_or_else(|| Error::msg("no compression was started"))?;
        let f = decode_factored(bytes)?;
        let (index, name) = (f.index, f.report.name.clone());
        c.accept(f)?;
        let info = StepInfo { phase: "factor", done: c.accepted(), total: c.mats.len(), name, index: Some(index) };
        Ok(CompressStep { info, layer: c.report(index) })
    }

    /// One step of the compression (a calibration window, a spectrum or a matrix), or `None` when every step is done.
    pub fn compress_step(&mut self) -> Result<Option<CompressStep<'_>>> {
        let b = self.bundle.as_ref().ok_or_else(|| Error::msg("no original model is open"))?;
        let c = self.compressor.as_mut().ok_or_else(|| Error::msg("no compression was started"))?;
        if let Some(cal) = self.calibrator.as_mut() {
            let o = self.original.as_ref().ok_or_else(|| Error::msg("the original model is not loaded"))?;
            if cal.step(o)? {
                let info = StepInfo {
                    phase: "calibrate",
                    done: cal.done(),
                    total: cal.total_windows(),
                    name: format!("calibration window {}/{}", cal.done(), cal.total_windows()),
                    index: None,
                };
                return Ok(Some(CompressStep { info, layer: None }));
            }
            if let Some(cal) = self.calibrator.take() {
                c.set_calibration(cal.finish());
            }
        }
        if let (true, Some(ids)) = (c.needs_probe(), self.calibration_ids.as_ref()) {
            let o = self.original.as_ref().ok_or_else(|| Error::msg("the original model is not loaded"))?;
            let p = &c.policy;
            let tokens = p.sensitivity_tokens.min(p.calibration_tokens).min(ids.len());
            // the original's logits and every block's input on those tokens, in f32
            let cfg = &b.cfg;
            let bytes = 4.0 * tokens as f64 * (cfg.vocab_size + (cfg.num_layers + 1) * cfg.hidden_size) as f64;
            let what =
                if p.needs_sensitivity() { "the loss allocation's probes" } else { "the allocation check's probe" };
            self.memory.check(what, bytes, 0.9, "use fewer sensitivity tokens")?;
            if p.checks_allocation() {
                // the mode's ranks and the same fraction of each matrix, both factored before either is kept: each
                // about the budget's share of the considered matrices, a byte per INT8 code or four per f32 entry
                let params: usize = c.mats.iter().filter(|m| !m.tied).map(|m| m.params()).sum();
                let per = if p.quant_bits == 8 { 1.0 } else { 4.0 };
                let alt = 2.0 * p.budget.unwrap_or(1.0) * params as f64 * per;
                self.memory.check(
                    "the allocation check's two sets of factors",
                    alt,
                    0.9,
                    "turn the allocation check off",
                )?;
            }
            c.set_probe(Probe::new(o, ids, tokens, p.calibration_window)?);
        }
        // the refit: once the plans are made, one block per step, then the matrices outside the blocks
        if c.policy.method == Method::Refit && !c.plans_made() {
            if let Some(info) = c.spectrum_step(&reader(&b.ckpt))? {
                return Ok(Some(CompressStep { info, layer: None }));
            }
        }
        if c.policy.method == Method::Refit && !c.refitted() && c.plans_made() {
            // the allocation check's factors, before the refit fits its own to the ranks kept
            if let Some(info) = c.check_step(&reader(&b.ckpt))? {
                return Ok(Some(CompressStep { info, layer: None }));
            }
        }
        if c.policy.method == Method::Refit && !c.refitted() {
            let o = self.original.as_ref().ok_or_else(|| Error::msg("the original model is not loaded"))?;
            if self.refit.is_none() {
                let ids =
                    self.calibration_ids.as_ref().ok_or_else(|| Error::msg("the refit needs calibration text"))?;
                // both paths' hidden states, and one block's inputs on both paths (q/k/v, out_proj, c_fc, c_proj)
                // (overlapping windows hold a token once per window it is in)
                let p = &c.policy;
                let windows = strided_windows(ids, p.calibration_tokens, p.calibration_window, p.refit_stride)?;
                let (cfg, rows) = (&b.cfg, windows.iter().map(Vec::len).sum::<usize>() as f64);
                let per_token = (2 * cfg.hidden_size + 2 * (5 * cfg.hidden_size + cfg.intermediate_size())) as f64;
                let mut bytes = 4.0 * rows * per_token;
                if p.refine_steps > 0 {
                    bytes += crate::compression::refine::graph_bytes(cfg, p.calibration_window);
                }
                let advice = if p.refit_stride.is_some() {
                    "use fewer calibration tokens or a larger refit stride"
                } else {
                    "use fewer calibration tokens"
                };
                self.memory.check("the refit's calibration states", bytes, 0.9, advice)?;
                self.refit = Some(Refit::on_windows(o, &windows)?);
            }
            let r = self.refit.as_mut().ok_or_else(|| Error::msg("the refit has not started"))?;
            let mut last = None;
            r.step(c, &mut |i| last = Some(i.clone()))?;
            if let Some(mut info) = last {
                if info.phase != "refine" {
                    info.name = format!("block {}/{} refitted ({})", r.done(), r.total_blocks(), info.name);
                }
                return Ok(Some(CompressStep { info, layer: None }));
            }
        }
        let Some(info) = c.step(&reader(&b.ckpt))? else { return Ok(None) };
        let layer = if info.phase == "factor" { info.index.and_then(|i| c.report(i)) } else { None };
        Ok(Some(CompressStep { info, layer }))
    }

    /// Build the compressed model once every step is done.
    pub fn compress_finish(&mut self) -> Result<Finished> {
        let b = self.bundle.as_ref().ok_or_else(|| Error::msg("no original model is open"))?;
        let c = self.compressor.as_ref().ok_or_else(|| Error::msg("no compression was started"))?;
        // the compressed model holds its factors (already allocated) and the dense tensors as stored
        let dense = b.tensor_bytes()
            - c.mats.iter().filter(|m| c.weights().contains_key(&m.name)).map(|m| m.dense_bytes() as u64).sum::<u64>();
        self.memory.check("the compressed model's dense tensors", dense as f64, 0.9, "skip fewer layers")?;
        // what only the compression needed (the refit's states, the calibration tokens) is not the model's memory
        self.refit = None;
        self.calibrator = None;
        self.calibration_ids = None;
        let c = self.compressor.take().ok_or_else(|| Error::msg("no compression was started"))?;
        let done = c.finish(&b.cfg, &b.ckpt)?;
        let export = Export::new(
            &b.ckpt,
            &self.config_json,
            self.tokenizer_json.as_deref(),
            &done.weights,
            &done.reports,
            &done.policy,
        )?;
        let t = totals(&done.reports);
        let out = Finished {
            layers_total: done.model.linears().len(),
            layers_compressed: done.model.compressed_layers(),
            bytes_untouched: b.tensor_bytes().saturating_sub(t.bytes_considered),
            totals: t,
            bytes_original: b.tensor_bytes(),
            tensor_bytes: export.data_bytes,
            file_bytes: export.file_bytes(),
            resident_bytes: done.resident_bytes,
            allocation_check: done.allocation_check.clone(),
        };
        self.compressed = Some(CompressedSlot {
            model: done.model,
            weights: Some(done.weights),
            reports: done.reports,
            policy: Some(done.policy),
            tensor_bytes: export.data_bytes,
            resident_bytes: done.resident_bytes,
            file_bundle: None,
            seconds: crate::clock::now() - self.compress_started,
        });
        Ok(out)
    }

    /// Start searching the smallest budget whose compression with `base` meets `spec`'s target on the calibration
    /// text ([`TargetSearch`]). The page then compresses at each [`TargetState::next_budget`], evaluates on
    /// [`TargetState::split`] of the calibration text, and calls [`Session::target_record`], until no budget is left.
    pub fn target_begin(&mut self, base: &Policy, spec: &TargetSpec) -> Result<TargetState<'_>> {
        if !base.method.is_activation_aware() {
            return Err(Error::Policy(
                "a quality target is measured on the calibration text: choose an activation-aware method".into(),
            ));
        }
        let search = self.target.insert(TargetSearch::new(base, spec.target, spec.tolerance)?);
        Ok(TargetState::of(search, TargetSearch::split(base), None))
    }

    /// Record the compression just made at the search's budget, with the evaluation just run on its split.
    pub fn target_record(&mut self) -> Result<TargetState<'_>> {
        let c = self.compressed.as_ref().ok_or_else(|| Error::msg("there is no compressed model to record"))?;
        let policy = c.policy.as_ref().ok_or_else(|| Error::msg("the compressed model was not made here"))?;
        let report = match self.evaluator.as_ref().ok_or_else(|| Error::msg("no evaluation was run"))? {
            Evaluation::InMemory(ev) => ev.report(),
            Evaluation::Streamed(ev) => ev.report(),
        };
        let split = TargetSearch::split(policy);
        if report.skip_tokens != split.skip || report.window != split.window || report.tokens > split.tokens {
            return Err(Error::msg(format!(
                "the target is measured on the calibration tokens (the first {} in windows of {}), not on tokens {}..{}",
                split.tokens,
                split.window,
                report.skip_tokens,
                report.skip_tokens + report.tokens
            )));
        }
        let search = self.target.as_mut().ok_or_else(|| Error::msg("no target search was started"))?;
        if search.next_budget() != policy.budget {
            return Err(Error::msg(format!(
                "the compression at budget {:?} is not the one the target search asked for ({:?})",
                policy.budget,
                search.next_budget()
            )));
        }
        let point = Point::new(
            &policy_label(policy),
            policy.budget,
            &totals(&c.reports),
            c.model.weight_bytes(),
            &report,
            c.seconds,
        );
        let met = search.record(point)?;
        Ok(TargetState::of(search, split, Some(met)))
    }

    /// Each block matrix compressed alone with `policy` (its method, rank or probe fraction, storage), and what that
    /// did to the logits on the first `sensitivity_tokens` of `text` ([`crate::explore::sensitivity`]).
    pub fn sensitivity(&self, policy: &Policy, text: &str) -> Result<Vec<SensitivityRow>> {
        let (b, o) = self.bundle_and_original()?;
        let ids = b.tokenizer()?.encode(text)?;
        crate::explore::sensitivity(&b.cfg, &b.ckpt, o, &ids, policy, &mut |_| {})
    }

    /// [`Session::sensitivity`] a matrix at a time ([`Session::sensitivity_step`]), this session taking every
    /// `parts`-th block matrix from the `part`-th (other workers take the rest). Calibrates and runs the probe's
    /// windows first; returns how many matrices this part measures.
    pub fn sensitivity_begin(&mut self, policy: &Policy, text: &str, part: usize, parts: usize) -> Result<usize> {
        self.sensitivity = None;
        let (b, o) = self.bundle_and_original()?;
        let ids = b.tokenizer()?.encode(text)?;
        let run = SensitivityRun::new(&b.cfg, &b.ckpt, o, &ids, policy, part, parts)?;
        Ok(self.sensitivity.insert(run).total())
    }

    /// The next matrix of the sensitivity begun here, measured; `None` when the part is done.
    pub fn sensitivity_step(&mut self) -> Result<Option<SensitivityRow>> {
        let b = self.bundle.as_ref().ok_or_else(|| Error::msg("no original model is open"))?;
        let run = self.sensitivity.as_mut().ok_or_else(|| Error::msg("no sensitivity table was begun"))?;
        let row = run.step(&b.ckpt)?;
        if row.is_none() {
            self.sensitivity = None;
        }
        Ok(row)
    }

    /// What `policy` will store, matrix by matrix, before it runs ([`crate::compression::preview`]).
    pub fn preview(&self, policy: &Policy) -> Result<crate::compression::preview::Preview> {
        let b = self.bundle.as_ref().ok_or_else(|| Error::msg("no original model is open"))?;
        crate::compression::preview::preview(policy, &considered_matrices(&b.cfg, &b.ckpt)?, b.tensor_bytes())
    }

    /// Recipes × budgets, each compressed and measured ([`crate::explore::sweep`]); what a page's explorer draws.
    pub fn sweep(&self, spec: &SweepSpec) -> Result<Vec<crate::explore::Point>> {
        let (b, o) = self.bundle_and_original()?;
        let ids = b.tokenizer()?.encode(&spec.text)?;
        let recipes = spec.recipes.iter().map(|r| crate::explore::Recipe::parse(r)).collect::<Result<Vec<_>>>()?;
        let split = crate::explore::Split {
            skip: spec.base.calibration_tokens,
            tokens: spec.eval_tokens,
            window: spec.base.calibration_window,
        };
        crate::explore::sweep(&b.cfg, &b.ckpt, o, &ids, &spec.base, &recipes, &spec.budgets, split, &mut |_| {})
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

    /// Start evaluating (see [`EvalSpec`]). When the original model is not in memory (too large), it is streamed
    /// from its file a block at a time (one part only).
    pub fn eval_begin(&mut self, spec: &EvalSpec) -> Result<EvalBegin> {
        let b = self
            .bundle
            .as_ref()
            .ok_or_else(|| Error::msg("the original model is needed for the comparison: open it first"))?;
        let (skip, tokens, window) = (spec.skip, spec.tokens, spec.window);
        let max = b.cfg.max_position_embeddings;
        if window > max {
            return Err(Error::Policy(format!("the window of {window} tokens is longer than the model reads ({max})")));
        }
        let ids = b.tokenizer()?.encode(&spec.text)?;
        let text_tokens = ids.len();
        let (ev, out) = if self.original.is_some() {
            let ev = Evaluator::after(&ids, skip, tokens, window, spec.part, spec.parts)?;
            let out = EvalBegin { steps: ev.total_windows(), all_steps: ev.all_windows(), unit: "window", text_tokens };
            (Evaluation::InMemory(ev), out)
        } else {
            if spec.parts != 1 {
                return Err(Error::msg("a streamed evaluation runs in one worker"));
            }
            // memory: the head (the token embedding as stored), one block, the hidden states, two windows of logits
            let elem = b.ckpt.info(&embedding_name(&b.ckpt)).map_or(4, |i| i.dtype.bitsize() / 8);
            let (h, v) = (b.cfg.hidden_size, b.cfg.vocab_size);
            let block = (4 * h * h + 2 * h * b.cfg.intermediate_size()) * 4;
            let need = v * h * elem + block + tokens.min(text_tokens) * h * 4 + 2 * window * v * 4;
            self.memory.check(
                "evaluating with the original read from its file (its head, a block, two windows of logits)",
                need as f64,
                0.9,
                "the compressed checkpoint can still be exported",
            )?;
            let ev = StreamingEvaluator::after(&ids, skip, tokens, window)?;
            let steps = ev.total_steps(&b.cfg);
            (Evaluation::Streamed(ev), EvalBegin { steps, all_steps: steps, unit: "stage", text_tokens })
        };
        self.evaluator = Some(ev);
        Ok(out)
    }

    /// The next step of the evaluation (a window, or a stage when streamed), or `None` when finished.
    pub fn eval_step(&mut self) -> Result<Option<Progress>> {
        let c = self.compressed.as_ref().map(|c| &c.model);
        let (done, total) = match self.evaluator.as_mut().ok_or_else(|| Error::msg("no evaluation was started"))? {
            Evaluation::InMemory(ev) => {
                let o = self.original.as_ref().ok_or_else(|| Error::msg("the original model is not loaded"))?;
                if !ev.step(o, c)? {
                    return Ok(None);
                }
                (ev.done(), ev.total_windows())
            }
            Evaluation::Streamed(ev) => {
                let b = self.bundle.as_ref().ok_or_else(|| Error::msg("no original model is open"))?;
                let w = CheckpointWeights { ckpt: &b.ckpt, precision: Precision::AsStored };
                if !ev.step(&b.cfg, &w, c)? {
                    return Ok(None);
                }
                (ev.done(), ev.total_steps(&b.cfg))
            }
        };
        Ok(Some(Progress { done, total }))
    }

    /// This part's sums, for [`Session::eval_merge`] in another instance.
    pub fn eval_partial(&self) -> Result<PartialSums> {
        match self.evaluator.as_ref().ok_or_else(|| Error::msg("no evaluation was started"))? {
            Evaluation::InMemory(ev) => Ok(ev.partial()),
            Evaluation::Streamed(_) => Err(Error::msg("a streamed evaluation is not split")),
        }
    }

    /// Add another part's sums (from [`Session::eval_partial`]) to this evaluation.
    pub fn eval_merge(&mut self, partial: &PartialSums) -> Result<()> {
        match self.evaluator.as_mut().ok_or_else(|| Error::msg("no evaluation was started"))? {
            Evaluation::InMemory(ev) => ev.merge(partial),
            Evaluation::Streamed(_) => Err(Error::msg("a streamed evaluation is not split")),
        }
    }

    /// The evaluation's figures with sizes and layer counts.
    pub fn eval_report(&self) -> Result<EvalSummary> {
        let b = self.bundle.as_ref().ok_or_else(|| Error::msg("no original model is open"))?;
        let (eval, streamed) = match self.evaluator.as_ref().ok_or_else(|| Error::msg("no evaluation was started"))? {
            Evaluation::InMemory(ev) => (ev.report(), false),
            Evaluation::Streamed(ev) => (ev.report(), true),
        };
        let c = self.compressed.as_ref().map(|c| CompressedSizes {
            model: &c.model,
            tensor_bytes: c.tensor_bytes,
            resident_bytes: c.resident_bytes,
        });
        Ok(EvalSummary::new(eval, streamed, b, self.original.as_ref(), c))
    }

    /// Write the compressed checkpoint, piece by piece, with config.json and tokenizer.json inside its metadata so
    /// the file alone loads back.
    pub fn export(&self, sink: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
        let b = self.bundle.as_ref().ok_or_else(|| Error::msg("no original model is open"))?;
        let c = self
            .compressed
            .as_ref()
            .ok_or_else(|| Error::msg("there is no compressed model to export: compress first"))?;
        let (Some(weights), Some(policy)) = (&c.weights, &c.policy) else {
            return Err(Error::msg("this compressed model was loaded from a file; it is already exported"));
        };
        let export =
            Export::new(&b.ckpt, &self.config_json, self.tokenizer_json.as_deref(), weights, &c.reports, policy)?;
        export.write(&b.ckpt, sink)
    }

    /// Token ids of a text.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer()?.encode(text)
    }

    /// Start generating from `prompt` with the model `which`.
    pub fn generate_start(&mut self, which: Which, prompt: &str, params: SamplingParams) -> Result<()> {
        let ids = self.encode(prompt)?;
        let model = self.model(which)?;
        let need = Generation::memory_bytes(&model.cfg, ids.len(), params.max_new_tokens);
        self.memory.check(
            &format!("generating {} tokens with the {} model", params.max_new_tokens, which.name()),
            need,
            0.8,
            "the models are still loaded: ask for fewer tokens or a shorter prompt",
        )?;
        let g = Generation::new(model, &ids, params)?;
        self.generations.retain(|(w, _, _)| *w != which);
        self.generations.push((which, g, TextStream::default()));
        Ok(())
    }

    /// The next token of the generation `which`, or `None` when it is finished.
    pub fn generate_next(&mut self, which: Which) -> Result<Option<GenStep>> {
        let pos = self
            .generations
            .iter()
            .position(|(w, _, _)| *w == which)
            .ok_or_else(|| Error::msg(format!("no generation with the {} model was started", which.name())))?;
        let (w, mut g, mut stream) = self.generations.swap_remove(pos);
        let step = (|| -> Result<Option<GenStep>> {
            let model = self.model(which)?;
            let tok = self.tokenizer()?;
            Ok(match g.step(model)? {
                Some(id) => Some(GenStep { id, text: stream.push(tok, id)?, token: tok.token_text(id)?, done: g.done }),
                None => None,
            })
        })();
        self.generations.push((w, g, stream));
        step
    }

    /// Singular values of one weight matrix of the original (for the spectrum plot).
    pub fn spectrum(&self, name: &str) -> Result<Vec<f32>> {
        let b = self.bundle.as_ref().ok_or_else(|| Error::msg("no original model is open"))?;
        let m = considered_matrices(&b.cfg, &b.ckpt)?
            .into_iter()
            .find(|m| m.name == name)
            .ok_or_else(|| Error::tensor(name, "is not a weight matrix of this model"))?;
        let w = reader(&b.ckpt)(name)?;
        Ok(svd::singular_values(&w, m.out, m.inp)?.into_iter().map(|x| x as f32).collect())
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
