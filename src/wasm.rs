//! The WebAssembly boundary: the only module that knows about JavaScript. It owns no logic; it turns `File`s into
//! byte sources, JS values into Rust types and back, and errors into `JsError`s whose message is the sentence the
//! page shows. Everything here runs inside a Web Worker (`FileReaderSync` exists only there).

use crate::bundle::ModelBundle;
use crate::checkpoint::{ByteSource, Checkpoint, SafetensorsFile};
use crate::generate::{Generation, SamplingParams};
use crate::model::GptNeo;
use crate::tokenizer::TextStream;
use crate::{Error, Result};
use serde::Serialize;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

fn js_err(e: Error) -> JsError {
    JsError::new(&e.to_string())
}

fn to_js<T: Serialize>(v: &T) -> std::result::Result<JsValue, JsError> {
    v.serialize(&serde_wasm_bindgen::Serializer::json_compatible()).map_err(|e| JsError::new(&e.to_string()))
}

fn from_js<T: serde::de::DeserializeOwned>(v: JsValue, what: &str) -> Result<T> {
    serde_wasm_bindgen::from_value(v).map_err(|e| Error::Policy(format!("{what}: {e}")))
}

/// A `File` (or `Blob`) read in slices with `FileReaderSync`, so only the bytes asked for enter wasm memory.
pub struct BlobSource {
    name: String,
    blob: web_sys::Blob,
    reader: web_sys::FileReaderSync,
}

impl BlobSource {
    pub fn new(name: String, blob: web_sys::Blob) -> Result<Self> {
        let reader = web_sys::FileReaderSync::new()
            .map_err(|_| Error::file(&name, "cannot be read here: FileReaderSync exists only inside a Web Worker"))?;
        Ok(Self { name, blob, reader })
    }

    fn read_all(&self) -> Result<Vec<u8>> {
        self.read_at(0, self.blob.size() as usize)
    }
}

impl ByteSource for BlobSource {
    fn name(&self) -> &str {
        &self.name
    }
    fn len(&self) -> u64 {
        self.blob.size() as u64
    }
    fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let end = offset + len as u64;
        if end > self.len() {
            return Err(Error::file(
                &self.name,
                format!("read of {len} bytes at {offset} runs past the end ({} bytes)", self.len()),
            ));
        }
        let slice = self
            .blob
            .slice_with_f64_and_f64(offset as f64, end as f64)
            .map_err(|_| Error::file(&self.name, "cannot be sliced"))?;
        let buf = self
            .reader
            .read_as_array_buffer(&slice)
            .map_err(|e| Error::file(&self.name, format!("cannot be read ({e:?})")))?;
        let arr = js_sys::Uint8Array::new(&buf);
        if arr.length() as usize != len {
            return Err(Error::file(&self.name, format!("short read: {} of {len} bytes", arr.length())));
        }
        let mut out = vec![0u8; len];
        arr.copy_to(&mut out);
        Ok(out)
    }
}

/// The model files picked out of what the user dropped, by name.
struct FileSet {
    config: Option<BlobSource>,
    tokenizer: Option<BlobSource>,
    index: Option<BlobSource>,
    weights: Vec<BlobSource>,
    ignored: Vec<String>,
}

fn classify(files: &js_sys::Array) -> Result<FileSet> {
    let mut set = FileSet { config: None, tokenizer: None, index: None, weights: Vec::new(), ignored: Vec::new() };
    for f in files.iter() {
        let file: web_sys::File =
            f.dyn_into().map_err(|_| Error::msg("an item given as a model file is not a File"))?;
        let name = file.name();
        let src = BlobSource::new(name.clone(), file.into())?;
        match name.as_str() {
            "config.json" => set.config = Some(src),
            "tokenizer.json" => set.tokenizer = Some(src),
            "model.safetensors.index.json" => set.index = Some(src),
            n if n.ends_with(".safetensors") => set.weights.push(src),
            _ => set.ignored.push(name),
        }
    }
    Ok(set)
}

/// Memory a wasm32 instance can address.
const WASM_LIMIT: f64 = 4.0 * 1024.0 * 1024.0 * 1024.0;

fn heap_bytes() -> f64 {
    wasm_bindgen::memory()
        .unchecked_into::<js_sys::WebAssembly::Memory>()
        .buffer()
        .unchecked_into::<js_sys::ArrayBuffer>()
        .byte_length() as f64
}

/// Bytes as GiB, or MiB below one GiB (so a small figure still says something).
fn gib(x: f64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if x >= 1024.0 * MIB {
        format!("{:.2} GiB", x / (1024.0 * MIB))
    } else {
        format!("{:.1} MiB", x / MIB)
    }
}

#[derive(Serialize)]
struct OpenReport {
    summary: crate::bundle::BundleSummary,
    missing: Vec<String>,
    ignored: Vec<String>,
    /// "original", or "compressed" for a checkpoint this program exported
    kind: &'static str,
    /// For a compressed checkpoint: whether the loaded original is the model it was made from.
    matches_original: bool,
    /// Layer reports carried by a compressed checkpoint.
    layers: Option<serde_json::Value>,
    policy: Option<serde_json::Value>,
}

/// Count live heap bytes, so the page's memory figures are measured.
#[global_allocator]
static ALLOC: crate::alloc::CountingAlloc = crate::alloc::CountingAlloc;

/// The compressed model and where it came from.
struct CompressedSlot {
    model: GptNeo,
    /// Present when it was compressed here (and so can be exported).
    weights: Option<std::collections::HashMap<String, crate::linear::LinearWeight>>,
    reports: Vec<crate::compress::LayerReport>,
    policy: Option<crate::policy::Policy>,
    /// Tensor bytes of its checkpoint (as exported or as loaded).
    tensor_bytes: usize,
    /// Live heap bytes it holds, measured.
    resident_bytes: usize,
    /// A compressed checkpoint loaded from a file keeps its bundle for reading.
    file_bundle: Option<ModelBundle>,
}

/// An evaluation with the original in memory (split over workers if asked), or streamed from its file.
enum Evaluation {
    InMemory(crate::metrics::Evaluator),
    Streamed(crate::metrics::StreamingEvaluator),
}

/// One model session in a worker: the original model, a compression in progress or done, an evaluation, generations.
#[wasm_bindgen]
pub struct Workspace {
    bundle: Option<ModelBundle>,
    original: Option<GptNeo>,
    compressor: Option<crate::compress::Compressor>,
    calibrator: Option<crate::calib::Calibrator>,
    compressed: Option<CompressedSlot>,
    evaluator: Option<Evaluation>,
    generations: Vec<(String, Generation, TextStream)>,
    config_json: String,
    tokenizer_json: Option<String>,
    /// Heap bytes this instance may use: the 4 GiB wasm32 can address, or less (see [`Workspace::set_memory_limit`]).
    memory_limit: f64,
}

fn none(what: &str) -> impl FnOnce() -> JsError + '_ {
    move || js_err(Error::msg(what.to_string()))
}

type JsResult<T> = std::result::Result<T, JsError>;

#[wasm_bindgen]
impl Workspace {
    #[wasm_bindgen(constructor)]
    pub fn new() -> Workspace {
        console_error_panic_hook();
        Workspace {
            bundle: None,
            original: None,
            compressor: None,
            calibrator: None,
            compressed: None,
            evaluator: None,
            generations: Vec::new(),
            config_json: String::new(),
            tokenizer_json: None,
            memory_limit: WASM_LIMIT,
        }
    }

    /// Cap the heap this instance plans for (bytes; at most 4 GiB): models that would not fit are refused with a
    /// sentence before anything is allocated. Tests use it to play a large model with a small one.
    pub fn set_memory_limit(&mut self, bytes: f64) {
        self.memory_limit = bytes.clamp(0.0, WASM_LIMIT);
    }

    /// Take the user's files (an array of `File`): config.json, tokenizer.json, *.safetensors and the shard index, or
    /// one compressed checkpoint exported by this program. Reads only config, tokenizer and the safetensors headers.
    /// An original checkpoint replaces the session; a compressed one becomes the compressed model (compared with the
    /// loaded original when it was made from it).
    pub fn open(&mut self, files: js_sys::Array) -> JsResult<JsValue> {
        let set = classify(&files).map_err(js_err)?;
        if set.weights.is_empty() {
            return Err(js_err(Error::msg(
                "no .safetensors file among the files: a model needs model.safetensors (or its shards)",
            )));
        }
        let config = set
            .config
            .as_ref()
            .map(|c| {
                c.read_all().and_then(|b| String::from_utf8(b).map_err(|_| Error::Config("is not UTF-8 text".into())))
            })
            .transpose()
            .map_err(js_err)?;
        let tok = set.tokenizer.as_ref().map(|t| t.read_all()).transpose().map_err(js_err)?;
        let index = set
            .index
            .as_ref()
            .map(|i| i.read_all().map(|b| String::from_utf8_lossy(&b).into_owned()))
            .transpose()
            .map_err(js_err)?;
        let files = set
            .weights
            .into_iter()
            .map(|w| SafetensorsFile::open(Box::new(w)))
            .collect::<Result<Vec<_>>>()
            .map_err(js_err)?;
        let ckpt = Checkpoint::new(files, index.as_deref()).map_err(js_err)?;
        let compressed = crate::export::is_compressed(&ckpt);
        if !compressed && config.is_none() {
            return Err(js_err(Error::file(
                "config.json",
                "is missing: drop it together with the model's .safetensors file(s)",
            )));
        }
        let bundle = ModelBundle::from_checkpoint(config.as_deref(), tok.as_deref(), ckpt).map_err(js_err)?;
        let summary = bundle.summary().map_err(js_err)?;
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
            let source = meta("source");
            let matches_original =
                match (&self.bundle, source.as_ref().and_then(|s| s.get("fingerprint")).and_then(|f| f.as_str())) {
                    (Some(orig), Some(fp)) => crate::export::fingerprint(&orig.ckpt) == fp,
                    _ => false,
                };
            self.generations.retain(|(w, _, _)| w != "compressed");
            self.compressed = None;
            self.evaluator = None;
            let need = bundle.estimate_model_bytes(true) as f64;
            if !self.fits(need, 0.8) {
                return Err(self.no_room("the compressed model", need, "the file itself is fine"));
            }
            let (model, resident, _) = crate::alloc::measure(|| bundle.load_model(false));
            let model = model.map_err(js_err)?;
            let tensor_bytes = bundle.tensor_bytes();
            let reports = layer_reports_from_meta(&model, layers.as_ref());
            let policy_v = policy.as_ref().and_then(|p| serde_json::from_value(p.clone()).ok());
            if !matches_original {
                // compared with nothing: it becomes the session's only model
                self.bundle = None;
                self.original = None;
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
            });
            return to_js(&OpenReport {
                summary,
                missing,
                ignored: set.ignored,
                kind: "compressed",
                matches_original,
                layers,
                policy,
            });
        }
        let limit = self.memory_limit;
        *self = Workspace::new();
        self.memory_limit = limit;
        self.config_json = config.unwrap_or_default();
        self.tokenizer_json = tok.map(|t| String::from_utf8_lossy(&t).into_owned());
        self.bundle = Some(bundle);
        to_js(&OpenReport {
            summary,
            missing,
            ignored: set.ignored,
            kind: "original",
            matches_original: false,
            layers: None,
            policy: None,
        })
    }

    /// Load the original model's weights (f32, or kept in f16/bf16 when f32 would not fit in wasm memory). Returns
    /// `{bytes, keep_half, resident_bytes}`.
    pub fn load(&mut self, progress: Option<js_sys::Function>) -> JsResult<JsValue> {
        let b = self.bundle.as_ref().ok_or_else(none("no original model is open"))?;
        let f32_bytes = b.estimate_model_bytes(false) as f64;
        let half_bytes = b.estimate_model_bytes(true) as f64;
        let keep_half = if self.fits(f32_bytes, 0.8) {
            false
        } else if self.fits(half_bytes, 0.8) {
            true
        } else {
            return Err(self.no_room(
                "the original model (its 16-bit weights kept as stored)",
                half_bytes,
                "it can still be compressed and exported, but not run here",
            ));
        };
        let total = b.tensor_count();
        let report = |done: usize, name: &str| {
            if let Some(f) = &progress {
                let _ = f.call3(&JsValue::NULL, &(done as f64).into(), &(total as f64).into(), &name.into());
            }
        };
        let (model, resident, _) = crate::alloc::measure(|| b.load_model_with_progress(keep_half, &report));
        let model = model.map_err(js_err)?;
        let bytes = model.weight_bytes();
        self.original = Some(model);
        #[derive(Serialize)]
        struct Loaded {
            bytes: usize,
            keep_half: bool,
            resident_bytes: usize,
            tensor_bytes: usize,
        }
        to_js(&Loaded { bytes, keep_half, resident_bytes: resident, tensor_bytes: b.tensor_bytes() })
    }

    /// Start compressing the original with `policy` (a [`crate::policy::Policy`] as JSON). Returns
    /// `{total_steps, matrices}`.
    /// `calibration_text` is read by the whitened method (its first `calibration_tokens` tokens, through the original
    /// model, which must be loaded).
    pub fn compress_begin(&mut self, policy: JsValue, calibration_text: Option<String>) -> JsResult<JsValue> {
        let b = self
            .bundle
            .as_ref()
            .ok_or_else(none("no original model is open: load the demo model or drop a checkpoint first"))?;
        let policy: crate::policy::Policy = from_js(policy, "compression policy").map_err(js_err)?;
        self.compressed = None;
        self.evaluator = None;
        self.generations.retain(|(w, _, _)| w != "compressed");
        let mats = crate::compress::considered_matrices(&b.cfg, &b.ckpt).map_err(js_err)?;
        let c = crate::compress::Compressor::new(policy, mats).map_err(js_err)?;
        self.calibrator = None;
        if c.needs_calibration() {
            if self.original.is_none() {
                return Err(js_err(Error::Policy(
                    "activation-aware SVD runs the original model on calibration text, and it is not loaded here"
                        .into(),
                )));
            }
            let text = calibration_text.ok_or_else(none("activation-aware SVD needs a calibration text"))?;
            let ids = b.tokenizer().and_then(|t| t.encode(&text)).map_err(js_err)?;
            let cal = crate::calib::Calibrator::new(&ids, c.policy.calibration_tokens, c.policy.calibration_window)
                .map_err(js_err)?;
            self.calibrator = Some(cal);
        }
        #[derive(Serialize)]
        struct Begin<'a> {
            total_steps: usize,
            matrices: &'a [crate::policy::MatrixInfo],
            calibration_tokens: Option<usize>,
        }
        let cal = self.calibrator.as_ref();
        let out = to_js(&Begin {
            total_steps: c.total_steps() + cal.map_or(0, |c| c.total_windows()),
            matrices: &c.mats,
            calibration_tokens: cal.map(|c| c.tokens()),
        });
        self.compressor = Some(c);
        out
    }

    /// One step of the compression: `{phase, done, total, name, layer}` (`layer` is the matrix's report when one was
    /// just factored), or `null` when every step is done.
    pub fn compress_step(&mut self) -> JsResult<JsValue> {
        let b = self.bundle.as_ref().ok_or_else(none("no original model is open"))?;
        let c = self.compressor.as_mut().ok_or_else(none("no compression was started"))?;
        if let Some(cal) = self.calibrator.as_mut() {
            let o = self.original.as_ref().ok_or_else(none("the original model is not loaded"))?;
            if cal.step(o).map_err(js_err)? {
                let info = crate::compress::StepInfo {
                    phase: "calibrate",
                    done: cal.done(),
                    total: cal.total_windows(),
                    name: format!("calibration window {}/{}", cal.done(), cal.total_windows()),
                };
                return to_js(&info);
            }
            if let Some(cal) = self.calibrator.take() {
                c.set_calibration(cal.finish());
            }
        }
        let read = crate::compress::reader(&b.ckpt);
        let reports_before = c.reports.len();
        match c.step(&read).map_err(js_err)? {
            None => Ok(JsValue::NULL),
            Some(info) => {
                #[derive(Serialize)]
                struct Step<'a> {
                    #[serde(flatten)]
                    info: crate::compress::StepInfo,
                    layer: Option<&'a crate::compress::LayerReport>,
                }
                let layer = if c.reports.len() > reports_before { c.reports.last() } else { None };
                to_js(&Step { info, layer })
            }
        }
    }

    /// Build the compressed model once every step is done. Returns `{totals, tensor_bytes, file_bytes,
    /// resident_bytes}`.
    pub fn compress_finish(&mut self) -> JsResult<JsValue> {
        let b = self.bundle.as_ref().ok_or_else(none("no original model is open"))?;
        let c = self.compressor.as_ref().ok_or_else(none("no compression was started"))?;
        // the compressed model holds its factors (already allocated) and the dense tensors as stored
        let dense: usize = b.tensor_bytes()
            - c.mats.iter().filter(|m| c.weights().contains_key(&m.name)).map(|m| m.dense_bytes()).sum::<usize>();
        if !self.fits(dense as f64, 0.9) {
            return Err(self.no_room("the compressed model's dense tensors", dense as f64, "skip fewer layers"));
        }
        let c = self.compressor.take().ok_or_else(none("no compression was started"))?;
        let done = c.finish(&b.cfg, &b.ckpt).map_err(js_err)?;
        let export = crate::export::Export::new(
            &b.ckpt,
            &self.config_json,
            self.tokenizer_json.as_deref(),
            &done.weights,
            &done.reports,
            &done.policy,
        )
        .map_err(js_err)?;
        let totals = crate::compress::totals(&done.reports);
        #[derive(Serialize)]
        struct Finished {
            totals: crate::compress::CompressionTotals,
            bytes_original: usize,
            tensor_bytes: usize,
            file_bytes: usize,
            resident_bytes: usize,
            layers_total: usize,
            layers_compressed: usize,
        }
        let out = Finished {
            layers_total: done.model.linears().len(),
            layers_compressed: done.model.compressed_layers(),
            totals,
            bytes_original: b.tensor_bytes(),
            tensor_bytes: export.data_bytes,
            file_bytes: export.file_bytes(),
            resident_bytes: done.resident_bytes,
        };
        self.compressed = Some(CompressedSlot {
            model: done.model,
            weights: Some(done.weights),
            reports: done.reports,
            policy: Some(done.policy),
            tensor_bytes: export.data_bytes,
            resident_bytes: done.resident_bytes,
            file_bundle: None,
        });
        to_js(&out)
    }

    /// The compressed model's layer reports.
    pub fn layer_reports(&self) -> JsResult<JsValue> {
        let c = self.compressed.as_ref().ok_or_else(none("there is no compressed model"))?;
        to_js(&c.reports)
    }

    /// Start evaluating on `text`: its first `tokens` tokens in windows of `window`; this instance takes part `part`
    /// of `parts` (every `parts`-th window; 0 of 1 for all). When the original model is not in memory (too large), it
    /// is streamed from its file a block at a time (one part only). Returns `{steps, all_steps, unit, text_tokens}`.
    /// `skip` leaves out the text's first tokens (those a calibration read).
    #[allow(clippy::too_many_arguments)]
    pub fn eval_begin(
        &mut self,
        text: &str,
        skip: usize,
        tokens: usize,
        window: usize,
        part: usize,
        parts: usize,
    ) -> JsResult<JsValue> {
        let b =
            self.bundle.as_ref().ok_or_else(none("the original model is needed for the comparison: open it first"))?;
        let max = b.cfg.max_position_embeddings;
        if window > max {
            return Err(js_err(Error::Policy(format!(
                "the window of {window} tokens is longer than the model reads ({max})"
            ))));
        }
        let ids = b.tokenizer().and_then(|t| t.encode(text)).map_err(js_err)?;
        #[derive(Serialize)]
        struct Begin {
            steps: usize,
            all_steps: usize,
            unit: &'static str,
            text_tokens: usize,
        }
        let text_tokens = ids.len();
        let (ev, out) = if self.original.is_some() {
            let ev = crate::metrics::Evaluator::after(&ids, skip, tokens, window, part, parts).map_err(js_err)?;
            let out = Begin { steps: ev.total_windows(), all_steps: ev.all_windows(), unit: "window", text_tokens };
            (Evaluation::InMemory(ev), out)
        } else {
            if parts != 1 {
                return Err(js_err(Error::msg("a streamed evaluation runs in one worker")));
            }
            // memory: the head (the token embedding as stored), one block, the hidden states, two windows of logits
            let elem = b.ckpt.info(&crate::compress::embedding_name(&b.ckpt)).map_or(4, |i| i.dtype.bitsize() / 8);
            let (h, v) = (b.cfg.hidden_size, b.cfg.vocab_size);
            let block = (4 * h * h + 2 * h * b.cfg.intermediate_size()) * 4;
            let need = v * h * elem + block + tokens.min(text_tokens) * h * 4 + 2 * window * v * 4;
            if !self.fits(need as f64, 0.9) {
                return Err(self.no_room(
                    "evaluating with the original read from its file (its head, a block, two windows of logits)",
                    need as f64,
                    "the compressed checkpoint can still be exported",
                ));
            }
            let ev = crate::metrics::StreamingEvaluator::after(&ids, skip, tokens, window).map_err(js_err)?;
            let steps = ev.total_steps(&b.cfg);
            (Evaluation::Streamed(ev), Begin { steps, all_steps: steps, unit: "stage", text_tokens })
        };
        self.evaluator = Some(ev);
        to_js(&out)
    }

    /// The next step of the evaluation (a window, or a stage when streamed): `{done, total}`, or `null` when finished.
    pub fn eval_step(&mut self) -> JsResult<JsValue> {
        let c = self.compressed.as_ref().map(|c| &c.model);
        let (done, total) = match self.evaluator.as_mut().ok_or_else(none("no evaluation was started"))? {
            Evaluation::InMemory(ev) => {
                let o = self.original.as_ref().ok_or_else(none("the original model is not loaded"))?;
                if !ev.step(o, c).map_err(js_err)? {
                    return Ok(JsValue::NULL);
                }
                (ev.done(), ev.total_windows())
            }
            Evaluation::Streamed(ev) => {
                let b = self.bundle.as_ref().ok_or_else(none("no original model is open"))?;
                let w = crate::model::CheckpointWeights { ckpt: &b.ckpt, keep_half: true };
                if !ev.step(&b.cfg, &w, c).map_err(js_err)? {
                    return Ok(JsValue::NULL);
                }
                (ev.done(), ev.total_steps(&b.cfg))
            }
        };
        #[derive(Serialize)]
        struct Step {
            done: usize,
            total: usize,
        }
        to_js(&Step { done, total })
    }

    /// This part's sums, for [`Workspace::eval_merge`] in another instance.
    pub fn eval_partial(&self) -> JsResult<JsValue> {
        match self.evaluator.as_ref().ok_or_else(none("no evaluation was started"))? {
            Evaluation::InMemory(ev) => to_js(&ev.partial()),
            Evaluation::Streamed(_) => Err(js_err(Error::msg("a streamed evaluation is not split"))),
        }
    }

    /// Add another part's sums (from [`Workspace::eval_partial`]) to this evaluation.
    pub fn eval_merge(&mut self, partial: JsValue) -> JsResult<()> {
        let p: crate::metrics::PartialSums = from_js(partial, "evaluation part").map_err(js_err)?;
        match self.evaluator.as_mut().ok_or_else(none("no evaluation was started"))? {
            Evaluation::InMemory(ev) => ev.merge(&p).map_err(js_err),
            Evaluation::Streamed(_) => Err(js_err(Error::msg("a streamed evaluation is not split"))),
        }
    }

    /// The evaluation's figures with sizes and layer counts: the page's summary.
    pub fn eval_report(&self) -> JsResult<JsValue> {
        let b = self.bundle.as_ref().ok_or_else(none("no original model is open"))?;
        let (report, streamed) = match self.evaluator.as_ref().ok_or_else(none("no evaluation was started"))? {
            Evaluation::InMemory(ev) => (ev.report(), false),
            Evaluation::Streamed(ev) => (ev.report(), true),
        };
        #[derive(Serialize)]
        struct Summary {
            #[serde(flatten)]
            eval: crate::metrics::EvalReport,
            streamed: bool,
            bytes_original: usize,
            bytes_compressed: Option<usize>,
            resident_bytes_original: Option<usize>,
            resident_bytes_compressed: Option<usize>,
            layers_compressed: Option<usize>,
            layers_total: usize,
        }
        let c = self.compressed.as_ref();
        to_js(&Summary {
            eval: report,
            streamed,
            bytes_original: b.tensor_bytes(),
            bytes_compressed: c.map(|c| c.tensor_bytes),
            resident_bytes_original: self.original.as_ref().map(|o| o.weight_bytes()),
            resident_bytes_compressed: c.map(|c| c.resident_bytes),
            layers_compressed: c.map(|c| c.model.compressed_layers()),
            // every block's six linear layers and the head
            layers_total: 6 * b.cfg.num_layers + 1,
        })
    }

    /// The compressed checkpoint as a list of `Uint8Array` pieces (for a `Blob`), with config.json and
    /// tokenizer.json inside its metadata so the file alone loads back.
    pub fn export(&self) -> JsResult<js_sys::Array> {
        let b = self.bundle.as_ref().ok_or_else(none("no original model is open"))?;
        let c = self.compressed.as_ref().ok_or_else(none("there is no compressed model to export: compress first"))?;
        let (weights, policy) = match (&c.weights, &c.policy) {
            (Some(w), Some(p)) => (w, p),
            _ => {
                return Err(js_err(Error::msg("this compressed model was loaded from a file; it is already exported")))
            }
        };
        let export = crate::export::Export::new(
            &b.ckpt,
            &self.config_json,
            self.tokenizer_json.as_deref(),
            weights,
            &c.reports,
            policy,
        )
        .map_err(js_err)?;
        let parts = js_sys::Array::new();
        export
            .write(&b.ckpt, &mut |bytes| {
                parts.push(&js_sys::Uint8Array::from(bytes));
                Ok(())
            })
            .map_err(js_err)?;
        Ok(parts)
    }

    /// Token ids of a text.
    pub fn encode(&self, text: &str) -> JsResult<Vec<u32>> {
        self.tokenizer().and_then(|t| t.encode(text)).map_err(js_err)
    }

    /// Start generating from `prompt` with the model `which` ("original" or "compressed"); `params` as
    /// [`SamplingParams`].
    pub fn generate_start(&mut self, which: &str, prompt: &str, params: JsValue) -> JsResult<()> {
        let params: SamplingParams = if params.is_undefined() || params.is_null() {
            SamplingParams::default()
        } else {
            from_js(params, "generation settings").map_err(js_err)?
        };
        let ids = self.encode(prompt)?;
        let model = self.model(which).map_err(js_err)?;
        let g = Generation::new(model, &ids, params).map_err(js_err)?;
        self.generations.retain(|(w, _, _)| w != which);
        self.generations.push((which.to_string(), g, TextStream::default()));
        Ok(())
    }

    /// The next token of the generation `which`: `{id, text, token, done}`, or `null` when it is finished.
    pub fn generate_next(&mut self, which: &str) -> JsResult<JsValue> {
        let pos = self
            .generations
            .iter()
            .position(|(w, _, _)| w == which)
            .ok_or_else(|| js_err(Error::msg(format!("no generation with the {which} model was started"))))?;
        #[derive(Serialize)]
        struct Step {
            id: u32,
            text: String,
            token: String,
            done: bool,
        }
        let (w, mut g, mut stream) = self.generations.swap_remove(pos);
        let step = (|| -> Result<Option<Step>> {
            let model = self.model(which)?;
            let tok = self.tokenizer()?;
            Ok(match g.step(model)? {
                Some(id) => Some(Step { id, text: stream.push(tok, id)?, token: tok.token_text(id)?, done: g.done }),
                None => None,
            })
        })();
        self.generations.push((w, g, stream));
        match step.map_err(js_err)? {
            Some(s) => to_js(&s),
            None => Ok(JsValue::NULL),
        }
    }

    /// Singular values of one weight matrix of the original (for the spectrum plot).
    pub fn spectrum(&self, name: &str) -> JsResult<Vec<f32>> {
        let b = self.bundle.as_ref().ok_or_else(none("no original model is open"))?;
        let m = crate::compress::considered_matrices(&b.cfg, &b.ckpt)
            .map_err(js_err)?
            .into_iter()
            .find(|m| m.name == name)
            .ok_or_else(|| js_err(Error::tensor(name, "is not a weight matrix of this model")))?;
        let w = crate::compress::reader(&b.ckpt)(name).map_err(js_err)?;
        let s = crate::svd::singular_values(&w, m.out, m.inp).map_err(js_err)?;
        Ok(s.into_iter().map(|x| x as f32).collect())
    }

    /// Heap bytes in use (measured by the counting allocator) and the size of wasm memory.
    pub fn memory(&self) -> JsResult<JsValue> {
        #[derive(Serialize)]
        struct Mem {
            live_bytes: usize,
            wasm_memory_bytes: f64,
        }
        to_js(&Mem { live_bytes: crate::alloc::live_bytes(), wasm_memory_bytes: heap_bytes() })
    }
}

impl Default for Workspace {
    fn default() -> Self {
        Self::new()
    }
}

impl Workspace {
    /// Heap bytes still available under the limit: what wasm memory has not grown to yet, plus what the allocator
    /// holds free inside it.
    fn free_bytes(&self) -> f64 {
        let heap = heap_bytes();
        (self.memory_limit - heap).max(0.0) + (heap - crate::alloc::live_bytes() as f64).max(0.0)
    }

    /// Whether `bytes` more can be allocated while `share` of the free heap is the most it may take (the rest is
    /// for the work around it: loading reads each tensor and converts it, so it keeps more room).
    fn fits(&self, bytes: f64, share: f64) -> bool {
        bytes <= share * self.free_bytes()
    }

    /// The error for `what` needing `bytes` that do not fit, and what can still be done.
    fn no_room(&self, what: &str, bytes: f64, still: &str) -> JsError {
        js_err(Error::Memory(format!(
            "{what} needs about {}, and only {} of this tab's {} is free; {still}",
            gib(bytes),
            gib(self.free_bytes()),
            gib(self.memory_limit)
        )))
    }

    fn model(&self, which: &str) -> Result<&GptNeo> {
        match which {
            "original" => self.original.as_ref(),
            "compressed" => self.compressed.as_ref().map(|c| &c.model),
            _ => None,
        }
        .ok_or_else(|| Error::msg(format!("the {which} model is not loaded")))
    }

    fn tokenizer(&self) -> Result<&crate::tokenizer::Tokenizer> {
        if let Some(b) = &self.bundle {
            return b.tokenizer();
        }
        match self.compressed.as_ref().and_then(|c| c.file_bundle.as_ref()) {
            Some(b) => b.tokenizer(),
            None => Err(Error::msg("no model is open")),
        }
    }
}

/// Layer reports of a loaded compressed checkpoint, from its metadata and its layers' storage.
fn layer_reports_from_meta(model: &GptNeo, layers: Option<&serde_json::Value>) -> Vec<crate::compress::LayerReport> {
    model
        .linears()
        .iter()
        .map(|l| {
            let (out, inp) = l.weight.shape().unwrap_or((0, 0));
            let meta = layers.and_then(|v| v.get(&l.name));
            let f = |k: &str| meta.and_then(|m| m.get(k)).and_then(|x| x.as_f64());
            let dense = l.weight.is_dense();
            crate::compress::LayerReport {
                name: l.name.clone(),
                shape: [out, inp],
                decision: match &l.weight {
                    w if w.is_dense() => "dense",
                    crate::linear::LinearWeight::LowRank { .. } => "low-rank",
                    _ => "int8",
                }
                .into(),
                rank: l.weight.rank(),
                storage: l.weight.describe(),
                reason: dense.then(|| "kept dense when it was compressed".to_string()),
                err_svd: f("err_svd"),
                err_stored: f("err_stored"),
                energy_kept: None,
                err_activations: f("err_activations"),
                params_before: out * inp,
                params_after: l.weight.rank().map_or(out * inp, |r| r * (out + inp + 1)),
                bytes_before: 0,
                bytes_after: l.weight.bytes(),
                singular_values: None,
                seconds: 0.0,
            }
        })
        .collect()
}

fn console_error_panic_hook() {
    use std::sync::Once;
    static SET: Once = Once::new();
    SET.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            web_sys::console::error_1(&format!("panic: {info}").into());
        }));
    });
}
