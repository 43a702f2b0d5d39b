//! The WebGPU device and the session's GPU steps, as the coordinating worker calls them (`www/gpu.js`).

use super::{from_js, js_err, to_js, JsResult, Workspace};
use crate::gpu::{Gpu, Pending};
use crate::session::{EvalSpec, Which};
use crate::Error;
use wasm_bindgen::prelude::*;

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

#[wasm_bindgen]
impl Workspace {
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
