//! The WebAssembly boundary: the only module that knows about JavaScript, and it decides nothing. It turns `File`s
//! into byte sources read in slices, JS values into the [`Session`]'s typed inputs and its results back, and errors
//! into JS `Error`s that carry the sentence the page shows and a `kind` taken from the error's variant (the worker
//! branches on the kind). Everything here runs inside a Web Worker (`FileReaderSync` exists only there): `files`
//! (the user's `File`s as byte sources), `gpu` (the WebGPU device and the session's GPU steps), the rest here.

use crate::model::generate::SamplingParams;
use crate::session::memory::{MemoryBudget, WASM_LIMIT};
use crate::session::{EvalSpec, Session, Which};
use crate::Error;
use serde::Serialize;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

mod files;
mod gpu;

use files::model_files;

/// Count live heap bytes, so the page's memory figures are measured.
#[global_allocator]
static ALLOC: crate::alloc::CountingAlloc = crate::alloc::CountingAlloc;

pub(super) type JsResult<T> = std::result::Result<T, JsValue>;

/// An `Error` whose `message` is the sentence and whose `kind` names the variant.
pub(super) fn js_err(e: Error) -> JsValue {
    let err = js_sys::Error::new(&e.to_string());
    let _ = js_sys::Reflect::set(&err, &"kind".into(), &e.kind().as_str().into());
    err.into()
}

pub(super) fn to_js<T: Serialize>(v: &T) -> JsResult<JsValue> {
    v.serialize(&serde_wasm_bindgen::Serializer::json_compatible()).map_err(|e| js_err(Error::msg(e.to_string())))
}

pub(super) fn from_js<T: serde::de::DeserializeOwned>(v: JsValue, what: &str) -> JsResult<T> {
    serde_wasm_bindgen::from_value(v).map_err(|e| js_err(Error::Policy(format!("{what}: {e}"))))
}

fn heap_bytes() -> f64 {
    wasm_bindgen::memory()
        .unchecked_into::<js_sys::WebAssembly::Memory>()
        .buffer()
        .unchecked_into::<js_sys::ArrayBuffer>()
        .byte_length() as f64
}

/// The core's default compression policy, so the page's form and the core share one default.
#[wasm_bindgen]
pub fn default_policy() -> JsResult<JsValue> {
    to_js(&crate::compression::policy::Policy::default())
}

/// The randomized SVD as the pipeline runs it, profiled on a synthetic matrix (`spec`:
/// [`crate::compression::svd::ProfileSpec`]): what `./build.sh bench` runs in the browser.
#[wasm_bindgen]
pub fn profile_svd(spec: JsValue) -> JsResult<JsValue> {
    let spec: crate::compression::svd::ProfileSpec = from_js(spec, "SVD profile")?;
    to_js(&spec.run().map_err(js_err)?)
}

/// How fast this worker computes ([`crate::session::speed`]): what the page's estimates start from.
#[wasm_bindgen]
pub fn measure_speed() -> JsResult<JsValue> {
    to_js(&crate::session::speed::measure().map_err(js_err)?)
}

/// Trap on purpose (a panic, which aborts: `RuntimeError: unreachable`), as an allocation failure or a bug would:
/// the end-to-end tests make a worker die this way mid-job, to show that the page notices and recovers.
#[wasm_bindgen]
pub fn test_trap(what: &str) {
    panic!("test trap: {what}");
}

/// One model session in a worker (see [`Session`]).
#[wasm_bindgen]
pub struct Workspace(pub(crate) Session);

#[wasm_bindgen]
impl Workspace {
    // JavaScript makes it with `new Workspace()`; nothing in Rust wants a Default
    #[allow(clippy::new_without_default)]
    #[wasm_bindgen(constructor)]
    pub fn new() -> Workspace {
        console_error_panic_hook();
        Workspace(Session::new(MemoryBudget::new(WASM_LIMIT, Some(heap_bytes)), Some(heap_bytes)))
    }

    /// Cap the heap this instance plans for (bytes; at most 4 GiB).
    pub fn set_memory_limit(&mut self, bytes: f64) {
        self.0.set_memory_limit(bytes.clamp(0.0, WASM_LIMIT));
    }

    /// Take the user's files (an array of `File`).
    pub fn open(&mut self, files: js_sys::Array) -> JsResult<JsValue> {
        let files = model_files(&files).map_err(js_err)?;
        to_js(&self.0.open(files).map_err(js_err)?)
    }

    /// Load the original model's weights; `progress(done, total, name)` after each tensor.
    pub fn load(&mut self, progress: Option<js_sys::Function>) -> JsResult<JsValue> {
        let report = |done: usize, total: usize, name: &str| {
            if let Some(f) = &progress {
                let _ = f.call3(&JsValue::NULL, &(done as f64).into(), &(total as f64).into(), &name.into());
            }
        };
        to_js(&self.0.load(&report).map_err(js_err)?)
    }

    /// Start compressing with `policy` (a Policy as JSON); the activation-aware method reads `calibration_text`.
    pub fn compress_begin(&mut self, policy: JsValue, calibration_text: Option<String>) -> JsResult<JsValue> {
        let policy = from_js(policy, "compression policy")?;
        to_js(&self.0.compress_begin(policy, calibration_text.as_deref()).map_err(js_err)?)
    }

    /// One step of the compression, or `null` when every step is done.
    pub fn compress_step(&mut self) -> JsResult<JsValue> {
        to_js(&self.0.compress_step().map_err(js_err)?)
    }

    /// The work other workers can do now: `{phase, todo}`, or `null` ([`Session::compress_shareable`]).
    pub fn compress_shareable(&self) -> JsResult<JsValue> {
        to_js(&self.0.compress_shareable())
    }

    /// Matrix `index`'s shareable work, as bytes for a helper's `run_work`.
    pub fn compress_work_out(&self, index: usize) -> JsResult<Vec<u8>> {
        self.0.compress_work_out(index).map_err(js_err)
    }

    /// A helper's side: the work done, as bytes for the coordinator's `compress_accept`.
    pub fn run_work(&self, bytes: Vec<u8>) -> JsResult<Vec<u8>> {
        self.0.run_work(bytes).map_err(js_err)
    }

    /// Keep a matrix a helper factored; the step, as `compress_step` gives it.
    pub fn compress_accept(&mut self, bytes: Vec<u8>) -> JsResult<JsValue> {
        to_js(&self.0.compress_accept(bytes).map_err(js_err)?)
    }

    pub fn compress_finish(&mut self) -> JsResult<JsValue> {
        to_js(&self.0.compress_finish().map_err(js_err)?)
    }

    pub fn layer_reports(&self) -> JsResult<JsValue> {
        to_js(&self.0.layer_reports().map_err(js_err)?)
    }

    /// Start an evaluation: `spec` is `{text, skip, tokens, window, part, parts}`.
    pub fn eval_begin(&mut self, spec: JsValue) -> JsResult<JsValue> {
        let spec: EvalSpec = from_js(spec, "evaluation settings")?;
        to_js(&self.0.eval_begin(&spec).map_err(js_err)?)
    }

    /// The next step of the evaluation, or `null` when finished.
    pub fn eval_step(&mut self) -> JsResult<JsValue> {
        to_js(&self.0.eval_step().map_err(js_err)?)
    }

    pub fn eval_partial(&self) -> JsResult<JsValue> {
        to_js(&self.0.eval_partial().map_err(js_err)?)
    }

    pub fn eval_merge(&mut self, partial: JsValue) -> JsResult<()> {
        let p = from_js(partial, "evaluation part")?;
        self.0.eval_merge(&p).map_err(js_err)
    }

    pub fn eval_report(&self) -> JsResult<JsValue> {
        to_js(&self.0.eval_report().map_err(js_err)?)
    }

    /// The compressed checkpoint as a list of `Uint8Array` pieces (for a `Blob`).
    pub fn export(&self) -> JsResult<js_sys::Array> {
        let parts = js_sys::Array::new();
        self.0
            .export(&mut |bytes| {
                parts.push(&js_sys::Uint8Array::from(bytes));
                Ok(())
            })
            .map_err(js_err)?;
        Ok(parts)
    }

    /// Start generating from `prompt` with the model `which` ("original" or "compressed"); `params` as
    /// [`SamplingParams`] (defaults when absent).
    pub fn generate_start(&mut self, which_model: &str, prompt: &str, params: JsValue) -> JsResult<()> {
        let params: Option<SamplingParams> = from_js(params, "generation settings")?;
        self.0
            .generate_start(Which::parse(which_model).map_err(js_err)?, prompt, params.unwrap_or_default())
            .map_err(js_err)
    }

    /// The next token of the generation `which`: `{id, text, token, done}`, or `null` when it is finished.
    pub fn generate_next(&mut self, which_model: &str) -> JsResult<JsValue> {
        to_js(&self.0.generate_next(Which::parse(which_model).map_err(js_err)?).map_err(js_err)?)
    }

    /// The sensitivity table, every `parts`-th matrix from the `part`-th; how many this instance measures.
    pub fn sensitivity_begin(&mut self, policy: JsValue, text: &str, part: usize, parts: usize) -> JsResult<usize> {
        let policy = from_js(policy, "compression policy")?;
        self.0.sensitivity_begin(&policy, text, part, parts).map_err(js_err)
    }

    /// The next row of the sensitivity begun, or `null` when this part is done.
    pub fn sensitivity_step(&mut self) -> JsResult<JsValue> {
        to_js(&self.0.sensitivity_step().map_err(js_err)?)
    }

    /// What `policy` will store, before it runs ([`crate::compression::preview::Preview`]).
    pub fn preview(&self, policy: JsValue) -> JsResult<JsValue> {
        let policy = from_js(policy, "compression policy")?;
        to_js(&self.0.preview(&policy).map_err(js_err)?)
    }

    /// Recipes × budgets measured ([`crate::session::SweepSpec`]): quality against stored bytes per point.
    pub fn sweep(&self, spec: JsValue) -> JsResult<JsValue> {
        let spec = from_js(spec, "sweep settings")?;
        to_js(&self.0.sweep(&spec).map_err(js_err)?)
    }

    /// Start a quality-target search ([`crate::session::TargetSpec`]) with `policy`'s method and allocation.
    pub fn target_begin(&mut self, policy: JsValue, spec: JsValue) -> JsResult<JsValue> {
        let policy = from_js(policy, "compression policy")?;
        let spec = from_js(spec, "quality target")?;
        to_js(&self.0.target_begin(&policy, &spec).map_err(js_err)?)
    }

    /// Record the compression just made at the search's budget and the evaluation just run on its split.
    pub fn target_record(&mut self) -> JsResult<JsValue> {
        to_js(&self.0.target_record().map_err(js_err)?)
    }

    pub fn spectrum(&self, name: &str) -> JsResult<Vec<f32>> {
        self.0.spectrum(name).map_err(js_err)
    }

    pub fn memory(&self) -> JsResult<JsValue> {
        to_js(&self.0.memory())
    }
}

/// Panics (which abort) are also written to the console, with their message.
fn console_error_panic_hook() {
    static SET: std::sync::Once = std::sync::Once::new();
    SET.call_once(|| {
        std::panic::set_hook(Box::new(|info| web_sys::console::error_1(&format!("panic: {info}").into())))
    });
}
