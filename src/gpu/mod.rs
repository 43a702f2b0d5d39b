//! The GPU wing: GPT-Neo's forward pass and the evaluation's metrics on `wgpu` — WebGPU in the browser, Vulkan,
//! Metal or DX12 natively, one code path and one set of WGSL kernels (`wgsl/`).
//!
//! * [`Gpu`] — the adapter and device, the limits asked of it, errors and a lost device caught as sentences.
//! * [`kernels`] — the compiled kernels and a [`kernels::Batch`] of dispatches recorded, then submitted at once.
//! * [`tensor`] — a weight matrix in its GPU storage (f32, f16 or bf16 in pairs, INT8 four to a word), split by rows
//!   where it is larger than one binding; uploaded a tensor at a time from memory or from the checkpoint's bytes.
//! * [`model`] — the model on the GPU: a window at once for evaluation, a token at a time with a key-value cache.
//! * [`metrics`] — the head and the per-position figures of two models' logits, which never leave the GPU.
//! * [`run`] — an evaluation and a generation driven to their end (the command line, benchmarks, tests).
//! * [`bench`] — the kernels measured against the adapter's own bandwidth and throughput.
//!
//! Reading results back is asynchronous on the web: work is submitted by plain functions, and a [`Readback`] is
//! awaited by whoever drives it (natively [`block_on`] waits).
//!
//! May import: [`crate::model`], [`crate::evaluation`], [`crate::error`].

pub mod bench;
pub mod kernels;
pub mod metrics;
pub mod model;
pub mod run;
pub mod tensor;
#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests;

use crate::{Error, Result};
use serde::Serialize;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

/// What the page and the reports say about the device: the adapter's name and backend, and the limits obtained.
#[derive(Clone, Debug, Serialize)]
pub struct AdapterFacts {
    pub name: String,
    pub backend: String,
    pub driver: String,
    /// The largest buffer and storage binding the device accepts, in bytes.
    pub max_buffer_bytes: u64,
    pub max_binding_bytes: u64,
    /// A CPU that presents itself as a GPU (lavapipe, SwiftShader).
    pub software: bool,
}

impl AdapterFacts {
    /// "llvmpipe (LLVM 15.0.6, 256 bits) (Vulkan, software)".
    pub fn label(&self) -> String {
        format!("{} ({}{})", self.name, self.backend, if self.software { ", software" } else { "" })
    }
}

/// Errors the device reported outside any scope, and why it was lost, kept until the next check.
#[derive(Default)]
struct Faults {
    errors: Vec<String>,
    lost: Option<String>,
}

/// The device and its queue, the kernels compiled for it, and the faults it has reported.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub facts: AdapterFacts,
    pub(crate) kernels: kernels::Kernels,
    faults: Arc<Mutex<Faults>>,
    /// Which products' kernels run, measured when the device is made.
    plan: Mutex<kernels::Plan>,
    /// A smaller largest binding than the device's, to test splitting on any adapter (`u64::MAX`: none).
    binding_cap: u64,
}

impl Gpu {
    /// The first high-performance adapter there is, with the largest buffers it allows; `None` when there is none
    /// (no WebGPU in this browser, no driver natively).
    pub async fn new() -> Result<Option<Gpu>> {
        Self::with_binding_cap(u64::MAX).await
    }

    /// [`Gpu::new`] pretending that no binding holds more than `cap` bytes: tensors are split as they would be on
    /// an adapter with that limit.
    pub async fn with_binding_cap(cap: u64) -> Result<Option<Gpu>> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let options = wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            force_fallback_adapter: false,
            compatible_surface: None,
            apply_limit_buckets: false,
        };
        let Ok(adapter) = instance.request_adapter(&options).await else { return Ok(None) };
        let info = adapter.get_info();
        let offered = adapter.limits();
        // the large buffers a model needs (the 1.3B tied embedding is 412 MB in f32), whatever the adapter offers
        let required_limits = wgpu::Limits {
            max_buffer_size: offered.max_buffer_size,
            max_storage_buffer_binding_size: offered.max_storage_buffer_binding_size,
            max_storage_buffers_per_shader_stage: offered.max_storage_buffers_per_shader_stage.max(8),
            max_compute_workgroup_storage_size: offered.max_compute_workgroup_storage_size,
            ..wgpu::Limits::downlevel_defaults()
        };
        let desc = wgpu::DeviceDescriptor {
            label: Some("semantic-llm-compressor"),
            required_features: wgpu::Features::empty(),
            required_limits,
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        };
        let (device, queue) = adapter
            .request_device(&desc)
            .await
            .map_err(|e| Error::Gpu(format!("the adapter {} gave no device ({e})", info.name)))?;
        let faults = Arc::new(Mutex::new(Faults::default()));
        let f = faults.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut f) = f.lock() {
                f.errors.push(e.to_string());
            }
        }));
        let f = faults.clone();
        device.set_device_lost_callback(move |reason, message| {
            if let Ok(mut f) = f.lock() {
                f.lost = Some(format!("{reason:?}: {message}"));
            }
        });
        let limits = device.limits();
        let facts = AdapterFacts {
            name: if info.name.is_empty() { "unnamed adapter".into() } else { info.name.clone() },
            backend: match info.backend {
                wgpu::Backend::Vulkan => "Vulkan",
                wgpu::Backend::Metal => "Metal",
                wgpu::Backend::Dx12 => "DirectX 12",
                wgpu::Backend::Gl => "OpenGL",
                wgpu::Backend::BrowserWebGpu => "WebGPU",
                _ => "other",
            }
            .to_string(),
            driver: format!("{} {}", info.driver, info.driver_info).trim().to_string(),
            max_buffer_bytes: limits.max_buffer_size,
            max_binding_bytes: limits.max_storage_buffer_binding_size,
            software: info.device_type == wgpu::DeviceType::Cpu,
        };
        let kernels = kernels::Kernels::new(&device);
        let plan = Mutex::new(kernels::Plan::default());
        let gpu = Gpu { device, queue, facts, kernels, faults, plan, binding_cap: cap };
        gpu.check("compiling the kernels")?;
        let plan = bench::tune(&gpu).await?;
        gpu.set_plan(plan);
        Ok(Some(gpu))
    }

    /// The kernels products run with.
    pub fn plan(&self) -> kernels::Plan {
        self.plan.lock().map(|p| *p).unwrap_or_default()
    }

    /// Run products with `plan`'s kernels from now on.
    pub fn set_plan(&self, plan: kernels::Plan) {
        if let Ok(mut p) = self.plan.lock() {
            *p = plan;
        }
    }

    /// An error for what the device reported since the last check, naming what was being done.
    pub fn check(&self, doing: &str) -> Result<()> {
        let mut f = self.faults.lock().map_err(|_| Error::Gpu("the GPU's error record was poisoned".into()))?;
        if let Some(why) = &f.lost {
            return Err(Error::Gpu(format!("the GPU device was lost while {doing} ({why})")));
        }
        if !f.errors.is_empty() {
            let all = std::mem::take(&mut f.errors);
            let oom = all.iter().any(|e| e.to_lowercase().contains("out of memory"));
            let what = if oom { "ran out of memory" } else { "reported an error" };
            return Err(Error::Gpu(format!("the GPU {what} while {doing}: {}", all.join("; "))));
        }
        Ok(())
    }

    /// The largest storage buffer one binding may hold (and one buffer), in bytes.
    pub fn max_binding(&self) -> u64 {
        self.facts.max_binding_bytes.min(self.facts.max_buffer_bytes).min(self.binding_cap)
    }

    /// A storage buffer of `bytes` (at least 4), zeroed, that kernels read and write and copies read and write.
    pub fn buffer(&self, label: &str, bytes: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes.max(4).next_multiple_of(4),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        })
    }

    /// A storage buffer holding `data`.
    pub fn upload(&self, label: &str, data: &[u8]) -> wgpu::Buffer {
        let b = self.buffer(label, data.len() as u64);
        self.write(&b, 0, data);
        b
    }

    /// Write `data` at `offset` (bytes) of `buffer`, padding its end to a whole word.
    pub fn write(&self, buffer: &wgpu::Buffer, offset: u64, data: &[u8]) {
        if data.len().is_multiple_of(4) {
            self.queue.write_buffer(buffer, offset, data);
        } else {
            let mut padded = data.to_vec();
            padded.resize(data.len().next_multiple_of(4), 0);
            self.queue.write_buffer(buffer, offset, &padded);
        }
    }

    /// Copy `bytes` of `src` from `offset` into a buffer the CPU can read, and submit: the figures come back
    /// through [`Readback::read`].
    pub fn read_back(&self, src: &wgpu::Buffer, offset: u64, bytes: u64) -> Readback {
        let size = bytes.max(4).next_multiple_of(4);
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("read back"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("read back") });
        enc.copy_buffer_to_buffer(src, offset, &staging, 0, size);
        self.queue.submit([enc.finish()]);
        Readback { buffer: staging, bytes, device: self.device.clone(), faults: self.faults.clone() }
    }

    /// Wait until the queue's work is done (natively; on the web the browser runs it and a read back waits).
    pub fn wait(&self) -> Result<()> {
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(format!("waiting for the GPU failed ({e})")))?;
        Ok(())
    }
}

/// Bytes on their way back from the GPU.
pub struct Readback {
    buffer: wgpu::Buffer,
    bytes: u64,
    /// Polled natively until the copy is done (the browser runs the queue itself).
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    device: wgpu::Device,
    faults: Arc<Mutex<Faults>>,
}

/// The state a map callback shares with the future that waits for it.
#[derive(Default)]
struct MapState {
    done: Option<std::result::Result<(), String>>,
    waker: Option<Waker>,
}

struct Mapped(Arc<Mutex<MapState>>);

impl Future for Mapped {
    type Output = std::result::Result<(), String>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Ok(mut s) = self.0.lock() else { return Poll::Ready(Err("poisoned".into())) };
        match s.done.take() {
            Some(r) => Poll::Ready(r),
            None => {
                s.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl Readback {
    /// The bytes, once the GPU has made them.
    pub async fn read(self) -> Result<Vec<u8>> {
        let state = Arc::new(Mutex::new(MapState::default()));
        let s = state.clone();
        self.buffer.map_async(wgpu::MapMode::Read, .., move |r| {
            if let Ok(mut s) = s.lock() {
                s.done = Some(r.map_err(|e| e.to_string()));
                if let Some(w) = s.waker.take() {
                    w.wake();
                }
            }
        });
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(format!("waiting for the GPU failed ({e})")))?;
        let mapped = Mapped(state).await;
        if let Ok(f) = self.faults.lock() {
            if let Some(why) = &f.lost {
                return Err(Error::Gpu(format!("the GPU device was lost ({why})")));
            }
        }
        mapped.map_err(|e| Error::Gpu(format!("the GPU's results could not be read back ({e})")))?;
        let out = {
            let view = self
                .buffer
                .get_mapped_range(..)
                .map_err(|e| Error::Gpu(format!("the GPU's results could not be read ({e})")))?;
            view[..self.bytes as usize].to_vec()
        };
        self.buffer.unmap();
        Ok(out)
    }

    /// [`Readback::read`] as f32 values.
    pub async fn read_f32(self) -> Result<Vec<f32>> {
        let bytes = self.read().await?;
        Ok(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }
}

/// The errors a piece of work may raise, caught in scopes opened before it ([`Gpu::scope`]).
pub struct Scope {
    doing: String,
    // dropped in this order (the reverse of their pushing), when the work fails before it is submitted
    validation: wgpu::ErrorScopeGuard,
    oom: wgpu::ErrorScopeGuard,
}

type ScopeResult = Pin<Box<dyn Future<Output = Option<wgpu::Error>>>>;

/// Work submitted to the GPU, to be awaited: its errors (a device out of memory says so here), then the bytes it
/// reads back, if any. Holds nothing of the session, so that the page's worker awaits it between two calls.
pub struct Pending {
    doing: String,
    errors: Vec<ScopeResult>,
    readback: Option<Readback>,
    faults: Arc<Mutex<Faults>>,
}

impl Gpu {
    /// Catch the errors of what follows until [`Gpu::pending`]: a device out of memory, a validation error.
    pub fn scope(&self, doing: &str) -> Scope {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        Scope { doing: doing.to_string(), validation, oom }
    }

    /// Close `scope` after the work is submitted; `readback` is what it reads back.
    pub fn pending(&self, scope: Scope, readback: Option<Readback>) -> Pending {
        // popped in the reverse order of their pushing
        let validation: ScopeResult = Box::pin(scope.validation.pop());
        let oom: ScopeResult = Box::pin(scope.oom.pop());
        Pending { doing: scope.doing, errors: vec![validation, oom], readback, faults: self.faults.clone() }
    }
}

impl Pending {
    /// Wait for the work: its errors as one sentence, or the bytes read back (empty when none).
    pub async fn wait(self) -> Result<Vec<u8>> {
        let mut errors = Vec::new();
        for e in self.errors {
            if let Some(e) = e.await {
                errors.push(e);
            }
        }
        if let Some(why) = self.faults.lock().ok().and_then(|f| f.lost.clone()) {
            return Err(Error::Gpu(format!("the GPU device was lost while {} ({why})", self.doing)));
        }
        if let Some(e) = errors.first() {
            let what = match e {
                wgpu::Error::OutOfMemory { .. } => "ran out of memory".to_string(),
                e => format!("reported an error ({e})"),
            };
            return Err(Error::Gpu(format!("the GPU {what} while {}", self.doing)));
        }
        match self.readback {
            Some(r) => r.read().await,
            None => Ok(Vec::new()),
        }
    }
}

/// Run a future to its end on this thread (the command line and native tests; a read back is ready as soon as the
/// device has been polled).
#[cfg(not(target_arch = "wasm32"))]
pub fn block_on<F: Future>(f: F) -> F::Output {
    pollster::block_on(f)
}
