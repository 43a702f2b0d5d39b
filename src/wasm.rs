//! The WebAssembly boundary: the only module that knows about JavaScript, and it decides nothing. It turns `File`s
//! into byte sources read in slices, JS values into the [`Session`]'s typed inputs and its results back, and errors
//! into JS `Error`s that carry the sentence the page shows and a `kind` taken from the error's variant (the worker
//! branches on the kind). Everything here runs inside a Web Worker (`FileReaderSync` exists only there).

use crate::gpu::{Gpu, Pending};
use crate::model::checkpoint::ByteSource;
use crate::model::generate::SamplingParams;
use crate::session::memory::{MemoryBudget, WASM_LIMIT};
use crate::session::{EvalSpec, ModelFiles, Session, Which};
use crate::{Error, Result};
use serde::Serialize;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

/// Count live heap bytes, so the page's memory figures are measured.
#[global_allocator]
static ALLOC: crate::alloc::CountingAlloc = crate::alloc::CountingAlloc;

type JsResult<T> = std::result::Result<T, JsValue>;

/// An `Error` whose `message` is the sentence and whose `kind` names the variant.
fn js_err(e: Error) -> JsValue {
    let err = js_sys::Error::new(&e.to_string());
    let _ = js_sys::Reflect::set(&err, &"kind".into(), &e.kind().as_str().into());
    err.into()
}

fn to_js<T: Serialize>(v: &T) -> JsResult<JsValue> {
    v.serialize(&serde_wasm_bindgen::Serializer::json_compatible()).map_err(|e| js_err(Error::msg(e.to_string())))
}

fn from_js<T: serde::de::DeserializeOwned>(v: JsValue, what: &str) -> JsResult<T> {
    serde_wasm_bindgen::from_value(v).map_err(|e| js_err(Error::Policy(format!("{what}: {e}"))))
}

fn heap_bytes() -> f64 {
    wasm_bindgen::memory()
        .unchecked_into::<js_sys::WebAssembly::Memory>()
        .buffer()
        .unchecked_into::<js_sys::ArrayBuffer>()
        .byte_length() as f64
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
}

impl ByteSource for BlobSource {
    fn name(&self) -> &str {
        &self.name
    }
    fn len(&self) -> u64 {
        self.blob.size() as u64
    }
    fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let end = self.range_end(offset, len)?;
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

/// The user's `File`s, sorted by name.
fn model_files(files: &js_sys::Array) -> Result<ModelFiles> {
    let mut set = ModelFiles::default();
    for f in files.iter() {
        let file: web_sys::File =
            f.dyn_into().map_err(|_| Error::msg("an item given as a model file is not a File"))?;
        let name = file.name();
        set.add(&name, Box::new(BlobSource::new(name.clone(), file.into())?))?;
    }
    Ok(set)
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

/// A GPU device, until a [`Workspace`] takes it.
#[wasm_bindgen]
pub struct GpuDevice(Gpu);

#[wasm_bindgen]
impl GpuDevice {
    /// The adapter's name, backend and limits.
    pub fn facts(&self) -> JsResult<JsValue> {
        to_js(&self.0.facts)
    }
}

/// The first WebGPU adapter's device, or `undefined` when this browser offers none.
#[wasm_bindgen]
pub async fn gpu_device() -> JsResult<Option<GpuDevice>> {
    Ok(Gpu::new().await.map_err(js_err)?.map(GpuDevice))
}

/// The GPU kernels against the adapter's own bandwidth and throughput ([`crate::gpu::bench`]), on a device of its
/// own; `spec` as [`crate::gpu::bench::BenchSpec`].
#[wasm_bindgen]
pub async fn gpu_bench(spec: JsValue) -> JsResult<JsValue> {
    let spec: crate::gpu::bench::BenchSpec = from_js(spec, "GPU benchmark")?;
    let gpu = Gpu::new().await.map_err(js_err)?.ok_or_else(|| js_err(Error::Gpu("no WebGPU adapter".into())))?;
    let bounds = crate::gpu::bench::bounds(&gpu).await.map_err(js_err)?;
    let kernels = crate::gpu::bench::kernels(&gpu, &spec, &bounds).await.map_err(js_err)?;
    to_js(&serde_json::json!({"adapter": gpu.facts, "plan": gpu.plan(), "bounds": bounds, "kernels": kernels}))
}

/// Work submitted to the GPU: [`GpuWork::wait`] for its bytes (or its error, of kind "gpu").
#[wasm_bindgen]
pub struct GpuWork(Pending);

#[wasm_bindgen]
impl GpuWork {
    pub async fn wait(self) -> JsResult<Vec<u8>> {
        self.0.wait().await.map_err(js_err)
    }
}

/// One model session in a worker (see [`Session`]).
#[wasm_bindgen]
pub struct Workspace(Session);

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

    /// Run evaluations and generations on `device` from now on; the adapter's facts.
    pub fn gpu_attach(&mut self, device: GpuDevice) -> JsResult<JsValue> {
        to_js(&self.0.gpu_attach(device.0))
    }

    /// The adapter in use, or `null`.
    pub fn gpu_facts(&self) -> JsResult<JsValue> {
        to_js(&self.0.gpu_facts())
    }

    /// Stop using the GPU (after a fault): what it held.
    pub fn gpu_detach(&mut self) -> Option<String> {
        self.0.gpu_detach()
    }

    /// Put the models on the GPU; `progress(done, total, what)` after each block.
    pub fn gpu_prepare(&mut self, progress: Option<js_sys::Function>) -> JsResult<GpuWork> {
        let mut report = |done: usize, total: usize, what: &str| {
            if let Some(f) = &progress {
                let _ = f.call3(&JsValue::NULL, &(done as f64).into(), &(total as f64).into(), &what.into());
            }
        };
        Ok(GpuWork(self.0.gpu_prepare(&mut report).map_err(js_err)?))
    }

    /// Start an evaluation on the GPU: `spec` as for `eval_begin` (one part).
    pub fn gpu_eval_begin(&mut self, spec: JsValue) -> JsResult<JsValue> {
        let spec: EvalSpec = from_js(spec, "evaluation settings")?;
        to_js(&self.0.gpu_eval_begin(&spec).map_err(js_err)?)
    }

    /// The next window, submitted; `undefined` when finished.
    pub fn gpu_eval_submit(&mut self) -> JsResult<Option<GpuWork>> {
        Ok(self.0.gpu_eval_submit().map_err(js_err)?.map(GpuWork))
    }

    /// A window's bytes read back: `{done, total}`.
    pub fn gpu_eval_accept(&mut self, bytes: Vec<u8>) -> JsResult<JsValue> {
        to_js(&self.0.gpu_eval_accept(&bytes).map_err(js_err)?)
    }

    /// The next step of the generation `which_model` on the GPU, submitted; `undefined` when finished.
    pub fn gpu_generate_submit(&mut self, which_model: &str) -> JsResult<Option<GpuWork>> {
        let which = Which::parse(which_model).map_err(js_err)?;
        Ok(self.0.gpu_generate_submit(which).map_err(js_err)?.map(GpuWork))
    }

    /// The logits read back: the next token, `{id, text, token, done}`.
    pub fn gpu_generate_accept(&mut self, which_model: &str, bytes: Vec<u8>) -> JsResult<JsValue> {
        let which = Which::parse(which_model).map_err(js_err)?;
        to_js(&self.0.gpu_generate_accept(which, &bytes).map_err(js_err)?)
    }
}

/// Panics (which abort) are also written to the console, with their message.
fn console_error_panic_hook() {
    static SET: std::sync::Once = std::sync::Once::new();
    SET.call_once(|| {
        std::panic::set_hook(Box::new(|info| web_sys::console::error_1(&format!("panic: {info}").into())))
    });
}
