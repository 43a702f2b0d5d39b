//! The compiled kernels, and a [`Batch`] that records dispatches and copies and submits them at once: each
//! dispatch's parameters go into one uniform buffer, a 256-byte slot each, written before the work is submitted.

use super::Gpu;
use wgpu::{BindGroupLayout, Buffer, ComputePipeline};

/// How a weight matrix is stored on the GPU: the `KIND` its kernels are compiled for (`wgsl/weight.wgsl`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    F32 = 0,
    F16 = 1,
    Bf16 = 2,
    Int8PerRow = 3,
    Int8PerTensor = 4,
}

impl Kind {
    pub const ALL: [Kind; 5] = [Kind::F32, Kind::F16, Kind::Bf16, Kind::Int8PerRow, Kind::Int8PerTensor];

    /// Bits an element takes.
    pub fn bits(self) -> u64 {
        match self {
            Kind::F32 => 32,
            Kind::F16 | Kind::Bf16 => 16,
            Kind::Int8PerRow | Kind::Int8PerTensor => 8,
        }
    }

    /// Whether the rows kernel can read a matrix of `cols` columns and x at `x_off` with rows `x_stride` apart:
    /// every row of both must start on 16 bytes, as it reads whole vec4 words.
    pub fn rows_fit(self, cols: usize, x_off: usize, x_stride: usize) -> bool {
        let per_16_bytes = 128 / self.bits() as usize;
        cols.is_multiple_of(per_16_bytes) && x_off.is_multiple_of(4) && x_stride.is_multiple_of(4)
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::F32 => "f32",
            Kind::F16 => "f16",
            Kind::Bf16 => "bf16",
            Kind::Int8PerRow => "int8 per-row",
            Kind::Int8PerTensor => "int8 per-tensor",
        }
    }
}

/// A binding's kind: read-only storage, read-write storage, uniform.
#[derive(Clone, Copy)]
enum Slot {
    R,
    W,
    U,
}

/// One kernel: its pipeline and the layout of its one bind group.
pub struct Kernel {
    pipeline: ComputePipeline,
    layout: BindGroupLayout,
    name: &'static str,
}

/// Every kernel, compiled once per device (the weight-reading ones once per [`Kind`]).
pub struct Kernels {
    /// x · Wᵀ in tiles, by weight kind.
    pub linear: Vec<Kernel>,
    /// One row of x times W, by weight kind.
    pub gemv: Vec<Kernel>,
    /// x · Wᵀ without workgroup memory, eight rows of x to a workgroup, by weight kind.
    pub rows: Vec<Kernel>,
    /// The same for one row of x.
    pub rows1: Vec<Kernel>,
    /// The embeddings, by the token embedding's kind.
    pub embed: Vec<Kernel>,
    pub bmm: Kernel,
    /// The same for a few rows.
    pub bmm_small: Kernel,
    /// Attention's scores and their mix in the rows kernel's layout (`attend.wgsl`).
    pub scores: Kernel,
    pub mix: Kernel,
    pub normalize: Kernel,

    pub softmax: Kernel,
    pub layernorm: Kernel,
    /// The same, an invocation a row.
    pub layernorm_rows: Kernel,
    pub metrics: Kernel,
    pub copy: Kernel,
    pub madd: Kernel,
    pub copy16: Kernel,
    pub read16: Kernel,
}

/// Rows of x a workgroup of the rows kernel takes, and its rows of W in `4 × WG`s; the same for one row of x.
pub const ROWS: usize = 8;
pub const ROWS_G: usize = 1;
pub const ROWS1_G: usize = 1;
/// Invocations of a rows kernel's workgroup (each takes four rows of W per `G`), for many rows of x and for one:
/// 128 rows of W a workgroup for one row of x keep both threads of a 2-core software adapter busy on a 768-row
/// matrix (measured on lavapipe: 55–64% of the bandwidth bound with 256 rows, 76–79% with 128).
pub const ROWS_WG: usize = 64;
pub const ROWS1_WG: usize = 32;

/// Which of two kernels computes a product of many rows of x, which one of one row, and which layout attention over
/// a window runs in: the tiled ones (workgroup memory, lanes along k, a workgroup a row of the softmax) suit GPUs;
/// the rows kernels (no workgroup memory or barrier, lanes along W's rows or the keys, x and the queries read
/// uniformly) suit adapters that run invocations as the SIMD lanes of CPU threads. Measured on each adapter when
/// its device is made ([`super::Gpu::new`]); both are tested against the CPU on every adapter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Plan {
    pub many: Variant,
    pub one: Variant,
    pub attention: Variant,
}

impl Plan {
    /// The same variant for everything.
    pub fn all(v: Variant) -> Self {
        Plan { many: v, one: v, attention: v }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Variant {
    /// `linear.wgsl` for many rows, `gemv.wgsl` for one, `bmm.wgsl` and `softmax.wgsl` for attention.
    Tiled,
    /// `rows.wgsl`, `attend.wgsl`.
    Rows,
}

impl Default for Plan {
    fn default() -> Self {
        Plan::all(Variant::Tiled)
    }
}

const WEIGHT: &str = include_str!("wgsl/weight.wgsl");
const PRODUCT: &str = include_str!("wgsl/product.wgsl");

fn layout(device: &wgpu::Device, slots: &[Slot]) -> BindGroupLayout {
    let entries: Vec<wgpu::BindGroupLayoutEntry> = slots
        .iter()
        .enumerate()
        .map(|(i, s)| wgpu::BindGroupLayoutEntry {
            binding: i as u32,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: match s {
                    Slot::R => wgpu::BufferBindingType::Storage { read_only: true },
                    Slot::W => wgpu::BufferBindingType::Storage { read_only: false },
                    Slot::U => wgpu::BufferBindingType::Uniform,
                },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        })
        .collect();
    device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: None, entries: &entries })
}

fn kernel(
    device: &wgpu::Device,
    name: &'static str,
    source: &str,
    entry: &str,
    slots: &[Slot],
    constants: &[(&str, f64)],
) -> Kernel {
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(name),
        source: wgpu::ShaderSource::Wgsl(source.into()),
    });
    let layout = layout(device, slots);
    let pl = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(name),
        bind_group_layouts: &[Some(&layout)],
        immediate_size: 0,
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(name),
        layout: Some(&pl),
        module: &module,
        entry_point: Some(entry),
        compilation_options: wgpu::PipelineCompilationOptions { constants, zero_initialize_workgroup_memory: true },
        cache: None,
    });
    Kernel { pipeline, layout, name }
}

impl Kernels {
    pub fn new(device: &wgpu::Device) -> Self {
        use Slot::*;
        let weighted = |name: &'static str, body: &str, slots: &[Slot]| -> Vec<Kernel> {
            let source = format!("{WEIGHT}\n{body}");
            Kind::ALL
                .iter()
                .map(|k| kernel(device, name, &source, "main", slots, &[("KIND", *k as u32 as f64)]))
                .collect()
        };
        let rrrrwu = [R, R, R, R, W, U];
        // the rows kernel's rows of x per workgroup size an array, so they are a constant, not an override
        let rows = |name: &'static str, n: usize, g: usize, wg: usize| -> Vec<Kernel> {
            let head = format!("const ROWS: u32 = {n}u;\nconst G: u32 = {g}u;\nconst WG: u32 = {wg}u;");
            let source = format!("{head}\n{WEIGHT}\n{PRODUCT}\n{}", include_str!("wgsl/rows.wgsl"));
            Kind::ALL
                .iter()
                .map(|k| kernel(device, name, &source, "main", &rrrrwu, &[("KIND", *k as u32 as f64)]))
                .collect()
        };
        let probe = include_str!("wgsl/probe.wgsl");
        let norm = include_str!("wgsl/layernorm.wgsl");
        let attend = format!("const ROWS: u32 = {ROWS}u;\n{}", include_str!("wgsl/attend.wgsl"));
        Kernels {
            linear: weighted("linear", &[PRODUCT, include_str!("wgsl/linear.wgsl")].concat(), &rrrrwu),
            gemv: weighted("gemv", &[PRODUCT, include_str!("wgsl/gemv.wgsl")].concat(), &rrrrwu),
            rows: rows("rows", ROWS, ROWS_G, ROWS_WG),
            rows1: rows("rows, one", 1, ROWS1_G, ROWS1_WG),
            embed: weighted("embed", include_str!("wgsl/embed.wgsl"), &rrrrwu),
            bmm: kernel(device, "bmm", include_str!("wgsl/bmm.wgsl"), "main", &[R, R, W, U], &[]),
            bmm_small: kernel(device, "bmm, small", include_str!("wgsl/bmm.wgsl"), "small", &[R, R, W, U], &[]),
            scores: kernel(device, "scores", &attend, "scores", &[R, R, W, U], &[]),
            mix: kernel(device, "mix", &attend, "mix", &[R, R, W, U], &[]),
            normalize: kernel(device, "normalize", &attend, "normalize", &[R, R, W, U], &[]),
            softmax: kernel(device, "softmax", include_str!("wgsl/softmax.wgsl"), "main", &[W, U], &[]),
            layernorm: kernel(device, "layernorm", norm, "main", &[R, R, R, W, U], &[]),
            layernorm_rows: kernel(device, "layernorm, rows", norm, "rows", &[R, R, R, W, U], &[]),
            metrics: kernel(device, "metrics", include_str!("wgsl/metrics.wgsl"), "main", &[R, R, R, W, U], &[]),
            copy: kernel(device, "copy", probe, "copy", &[R, W, U], &[]),
            madd: kernel(device, "madd", probe, "madd", &[R, W, U], &[]),
            copy16: kernel(device, "copy16", probe, "copy16", &[R, W, U], &[]),
            read16: kernel(device, "read16", probe, "read16", &[R, W, U], &[]),
        }
    }
}

/// A kernel's parameters: 32-bit words in the order of its `Params` struct.
#[derive(Clone, Default)]
pub struct Params(pub Vec<u32>);

impl Params {
    pub fn u(mut self, v: usize) -> Self {
        self.0.push(v as u32);
        self
    }
    pub fn i(mut self, v: i32) -> Self {
        self.0.push(v as u32);
        self
    }
    pub fn f(mut self, v: f32) -> Self {
        self.0.push(v.to_bits());
        self
    }
}

const SLOT: u64 = 256;

enum Op<'k> {
    Dispatch { kernel: &'k Kernel, buffers: Vec<Buffer>, params: usize, groups: [u32; 3] },
    Copy { src: Buffer, src_off: u64, dst: Buffer, dst_off: u64, bytes: u64 },
}

/// Dispatches and copies recorded in order, then submitted together by [`Batch::submit`].
pub struct Batch<'g> {
    gpu: &'g Gpu,
    ops: Vec<Op<'g>>,
    params: Vec<u8>,
}

/// `n` workgroups as (x, y) within the 65535 a dimension allows.
pub fn spread(n: usize) -> [u32; 3] {
    let n = n.max(1) as u32;
    if n <= 65535 {
        [n, 1, 1]
    } else {
        [65535, n.div_ceil(65535), 1]
    }
}

impl<'g> Batch<'g> {
    pub fn new(gpu: &'g Gpu) -> Self {
        Batch { gpu, ops: Vec::new(), params: Vec::new() }
    }

    pub fn gpu(&self) -> &'g Gpu {
        self.gpu
    }

    /// Run `kernel` over `groups` workgroups with `buffers` bound in order and `params` as its uniform.
    pub fn dispatch(&mut self, kernel: &'g Kernel, buffers: &[&Buffer], params: Params, groups: [u32; 3]) {
        let at = self.params.len();
        for w in &params.0 {
            self.params.extend_from_slice(&w.to_le_bytes());
        }
        self.params.resize(at + SLOT as usize, 0);
        let buffers = buffers.iter().map(|b| (*b).clone()).collect();
        self.ops.push(Op::Dispatch { kernel, buffers, params: at, groups });
    }

    /// Copy `bytes` from `src` at `src_off` to `dst` at `dst_off`.
    pub fn copy(&mut self, src: &Buffer, src_off: u64, dst: &Buffer, dst_off: u64, bytes: u64) {
        self.ops.push(Op::Copy { src: src.clone(), src_off, dst: dst.clone(), dst_off, bytes });
    }

    /// Submit everything recorded.
    pub fn submit(self) {
        let gpu = self.gpu;
        let device = &gpu.device;
        let uniforms = (!self.params.is_empty()).then(|| {
            let b = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("parameters"),
                size: self.params.len() as u64,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            gpu.queue.write_buffer(&b, 0, &self.params);
            b
        });
        let mut enc = device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("batch") });
        let mut i = 0;
        while i < self.ops.len() {
            if let Op::Copy { src, src_off, dst, dst_off, bytes } = &self.ops[i] {
                enc.copy_buffer_to_buffer(src, *src_off, dst, *dst_off, *bytes);
                i += 1;
                continue;
            }
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: None });
            while let Some(Op::Dispatch { kernel, buffers, params, groups }) = self.ops.get(i) {
                let Some(uniforms) = uniforms.as_ref() else { break };
                let mut entries: Vec<wgpu::BindGroupEntry> = buffers
                    .iter()
                    .enumerate()
                    .map(|(b, buf)| wgpu::BindGroupEntry { binding: b as u32, resource: buf.as_entire_binding() })
                    .collect();
                entries.push(wgpu::BindGroupEntry {
                    binding: buffers.len() as u32,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: uniforms,
                        offset: *params as u64,
                        size: wgpu::BufferSize::new(SLOT),
                    }),
                });
                let group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some(kernel.name),
                    layout: &kernel.layout,
                    entries: &entries,
                });
                pass.set_pipeline(&kernel.pipeline);
                pass.set_bind_group(0, &group, &[]);
                pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
                i += 1;
            }
        }
        gpu.queue.submit([enc.finish()]);
    }
}
