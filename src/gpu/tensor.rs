//! Weight matrices in their GPU storage, split by rows into chunks no larger than one binding; uploaded a piece of
//! rows at a time (at most [`PIECE_BYTES`]), from the CPU model's storages or straight from a checkpoint's bytes, so
//! that no whole copy is made on the way.

use super::kernels::Kind;
use super::Gpu;
use crate::model::checkpoint::Checkpoint;
use crate::model::linear::LinearWeight;
use crate::model::storage::{Factor, QMat};
use crate::{Error, Result};
use candle_core::{DType, Tensor};
use safetensors::tensor::Dtype;
use std::collections::HashMap;
use std::sync::Arc;
use wgpu::Buffer;

/// The most bytes read and written to the GPU at once while uploading.
pub const PIECE_BYTES: usize = 16 << 20;

/// Rows `row0..row0 + rows` of a matrix, in a buffer of their own.
pub struct Chunk {
    pub row0: usize,
    pub rows: usize,
    pub data: Buffer,
    /// The rows' INT8 scales (per-row), the one scale (per-tensor), or a placeholder.
    pub scales: Buffer,
}

/// A matrix on the GPU.
pub struct GpuMatrix {
    pub rows: usize,
    pub cols: usize,
    pub kind: Kind,
    /// The per-tensor INT8 zero point (0 otherwise).
    pub zero_point: i32,
    pub chunks: Vec<Chunk>,
}

/// Where a matrix's bytes come from.
pub enum MatrixSource<'a> {
    Factor(&'a Factor),
    /// A dense tensor of the CPU model (f32, f16 or bf16).
    Tensor(&'a Tensor),
    /// A tensor of a plain checkpoint, read from its file.
    Stored {
        ckpt: &'a Checkpoint,
        name: &'a str,
    },
}

impl MatrixSource<'_> {
    fn shape(&self) -> Result<(usize, usize, Kind, i32)> {
        Ok(match self {
            MatrixSource::Factor(f) => {
                let (kind, zp) = match f {
                    Factor::F32 { .. } => (Kind::F32, 0),
                    Factor::Half { bf16: false, .. } => (Kind::F16, 0),
                    Factor::Half { bf16: true, .. } => (Kind::Bf16, 0),
                    // group-wise codes have no kernel of their own yet: their values go up as f16 (each value
                    // `(q − z) · scale` rounded to f16, a relative 2⁻¹¹ at most)
                    Factor::Grouped(_) => (Kind::F16, 0),
                    Factor::Int8(QMat { zero_points, .. }) => match zero_points.first() {
                        None => (Kind::Int8PerRow, 0),
                        Some(&z) => (Kind::Int8PerTensor, z),
                    },
                };
                (f.rows(), f.cols(), kind, zp)
            }
            MatrixSource::Tensor(t) => {
                let (r, c) = t.dims2()?;
                (r, c, dense_kind(t.dtype(), "a weight")?, 0)
            }
            MatrixSource::Stored { ckpt, name } => {
                let info = ckpt.info(name).ok_or_else(|| Error::tensor(*name, "is missing from the checkpoint"))?;
                let kind = match info.dtype {
                    Dtype::F32 => Kind::F32,
                    Dtype::F16 => Kind::F16,
                    Dtype::BF16 => Kind::Bf16,
                    d => return Err(Error::tensor(*name, format!("is stored as {d:?}, which the GPU does not read"))),
                };
                match info.shape[..] {
                    [r, c] => (r, c, kind, 0),
                    _ => return Err(Error::tensor(*name, format!("has shape {:?}, not a matrix", info.shape))),
                }
            }
        })
    }

    /// The stored bytes of rows `a..b`.
    fn rows(&self, a: usize, b: usize, cols: usize) -> Result<Vec<u8>> {
        let le = |v: &[u16]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        Ok(match self {
            MatrixSource::Factor(Factor::F32 { data, .. }) => {
                data[a * cols..b * cols].iter().flat_map(|x| x.to_le_bytes()).collect()
            }
            MatrixSource::Factor(Factor::Half { bits, .. }) => le(&bits[a * cols..b * cols]),
            MatrixSource::Factor(Factor::Int8(q)) => q.codes[a * cols..b * cols].iter().map(|&c| c as u8).collect(),
            MatrixSource::Factor(Factor::Grouped(g)) => {
                let mut v = vec![0f32; (b - a) * cols];
                g.rows_f32(a, b, &mut v);
                v.iter().flat_map(|&x| half::f16::from_f32(x).to_bits().to_le_bytes()).collect()
            }
            MatrixSource::Tensor(t) => {
                let part = t.narrow(0, a, b - a)?.flatten_all()?;
                match t.dtype() {
                    DType::F32 => part.to_vec1::<f32>()?.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    DType::F16 => le(&part.to_vec1::<half::f16>()?.iter().map(|h| h.to_bits()).collect::<Vec<_>>()),
                    DType::BF16 => le(&part.to_vec1::<half::bf16>()?.iter().map(|h| h.to_bits()).collect::<Vec<_>>()),
                    d => return Err(Error::msg(format!("a {d:?} weight cannot go to the GPU"))),
                }
            }
            MatrixSource::Stored { ckpt, name } => {
                let elem = ckpt.info(name).map_or(4, |i| i.dtype.bitsize() / 8) as u64;
                let row = cols as u64 * elem;
                ckpt.read_slice(name, a as u64 * row, ((b - a) as u64 * row) as usize)?
            }
        })
    }

    /// The INT8 scales of rows `a..b` (per-row), the one scale (per-tensor), or nothing.
    fn scales(&self, a: usize, b: usize) -> Vec<f32> {
        match self {
            MatrixSource::Factor(Factor::Int8(q)) if q.zero_points.is_empty() => q.scales[a..b].to_vec(),
            MatrixSource::Factor(Factor::Int8(q)) => q.scales.clone(),
            _ => Vec::new(),
        }
    }
}

fn dense_kind(d: DType, what: &str) -> Result<Kind> {
    Ok(match d {
        DType::F32 => Kind::F32,
        DType::F16 => Kind::F16,
        DType::BF16 => Kind::Bf16,
        d => return Err(Error::msg(format!("{what} of dtype {d:?} cannot go to the GPU"))),
    })
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl GpuMatrix {
    /// Upload `src` (named `name` in errors), a chunk at a time, each filled a piece at a time.
    pub fn upload(gpu: &Gpu, name: &str, src: &MatrixSource) -> Result<GpuMatrix> {
        let (rows, cols, kind, zero_point) = src.shape()?;
        let row_bits = cols as u64 * kind.bits();
        let limit = gpu.max_binding();
        let per_chunk = ((limit * 8) / row_bits.max(1)) as usize;
        if per_chunk == 0 {
            return Err(Error::Gpu(format!(
                "tensor `{name}`: one row of {cols} values is larger than the GPU's largest binding ({limit} bytes)"
            )));
        }
        // pieces start on a whole word: a multiple of 4 rows always does
        let per_piece = ((PIECE_BYTES as u64 * 8 / row_bits.max(1)) as usize / 4 * 4).max(4);
        let mut chunks = Vec::new();
        let mut row0 = 0;
        while row0 < rows || (rows == 0 && chunks.is_empty()) {
            let n = per_chunk.min(rows - row0);
            let bytes = (n as u64 * row_bits).div_ceil(8);
            let data = gpu.buffer(name, bytes);
            let mut a = row0;
            while a < row0 + n {
                let b = (a + per_piece).min(row0 + n);
                gpu.write(&data, ((a - row0) as u64 * row_bits) / 8, &src.rows(a, b, cols)?);
                a = b;
            }
            let s = src.scales(row0, row0 + n);
            let scales =
                if s.is_empty() { gpu.upload("placeholder", &[0; 4]) } else { gpu.upload(name, &f32_bytes(&s)) };
            chunks.push(Chunk { row0, rows: n, data, scales });
            row0 += n;
            if rows == 0 {
                break;
            }
        }
        gpu.check(&format!("uploading tensor `{name}`"))?;
        Ok(GpuMatrix { rows, cols, kind, zero_point, chunks })
    }

    /// Bytes it holds on the GPU.
    pub fn bytes(&self) -> u64 {
        self.chunks.iter().map(|c| c.data.size() + c.scales.size()).sum()
    }
}

/// A vector (a bias, a LayerNorm's weight, the position embedding) as f32 on the GPU.
pub fn upload_vector(gpu: &Gpu, name: &str, t: &Tensor) -> Result<Buffer> {
    let v: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    if v.len() as u64 * 4 > gpu.max_binding() {
        return Err(Error::Gpu(format!("tensor `{name}` is larger than the GPU's largest binding")));
    }
    Ok(gpu.upload(name, &f32_bytes(&v)))
}

/// A vector read from a checkpoint, as f32 on the GPU.
pub fn upload_stored_vector(gpu: &Gpu, ckpt: &Checkpoint, name: &str) -> Result<Buffer> {
    let v = ckpt.read(name)?.to_f32_vec()?;
    if v.len() as u64 * 4 > gpu.max_binding() {
        return Err(Error::Gpu(format!("tensor `{name}` is larger than the GPU's largest binding")));
    }
    Ok(gpu.upload(name, &f32_bytes(&v)))
}

/// A linear layer's weight on the GPU: one matrix, or the low-rank pair with the singular values between.
pub enum GpuWeight {
    Matrix(Arc<GpuMatrix>),
    LowRank { u: Arc<GpuMatrix>, s: Buffer, vh: Arc<GpuMatrix> },
}

impl GpuWeight {
    pub fn rank(&self) -> Option<usize> {
        match self {
            GpuWeight::LowRank { vh, .. } => Some(vh.rows),
            GpuWeight::Matrix(_) => None,
        }
    }
}

/// Matrices already uploaded, by name and content, so that two models sharing a tensor (the original and the
/// compressed model's layers kept dense, their embeddings) hold it on the GPU once.
#[derive(Default)]
pub struct Uploads {
    seen: HashMap<(String, u64), Arc<GpuMatrix>>,
}

/// A 64-bit FNV-1a-style hash over 8-byte words, for [`Uploads`]' keys.
fn content_hash(parts: &[&[u8]]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for p in parts {
        h = (h ^ p.len() as u64).wrapping_mul(0x100_0000_01b3);
        let words = p.chunks_exact(8);
        let rest = words.remainder();
        for w in words {
            let v = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
            h = (h ^ v).wrapping_mul(0x100_0000_01b3);
        }
        for &b in rest {
            h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
    }
    h
}

impl Uploads {
    /// `src` on the GPU: the matrix uploaded before under `name` with the same content, or a new upload.
    // natively wgpu's handles are Send + Sync; in the browser nothing is shared between threads, and one type serves both
    #[allow(clippy::arc_with_non_send_sync)]
    pub fn matrix(&mut self, gpu: &Gpu, name: &str, src: &MatrixSource) -> Result<Arc<GpuMatrix>> {
        let key = match src {
            // what a checkpoint holds under a name is one thing
            MatrixSource::Stored { .. } => {
                let (r, c, kind, _) = src.shape()?;
                content_hash(&[format!("{r}x{c} {}", kind.name()).as_bytes()])
            }
            _ => {
                let (rows, cols, kind, zp) = src.shape()?;
                let scales = f32_bytes(&src.scales(0, if kind == Kind::Int8PerRow { rows } else { 0 }));
                let mut parts_owned = vec![format!("{rows}x{cols} {} {zp}", kind.name()).into_bytes(), scales];
                let per = (PIECE_BYTES / (cols * kind.bits() as usize / 8).max(1)).max(1);
                let mut a = 0;
                while a < rows {
                    let b = (a + per).min(rows);
                    parts_owned.push(content_hash(&[&src.rows(a, b, cols)?]).to_le_bytes().to_vec());
                    a = b;
                }
                let parts: Vec<&[u8]> = parts_owned.iter().map(|p| p.as_slice()).collect();
                content_hash(&parts)
            }
        };
        let id = (name.to_string(), key);
        if let Some(m) = self.seen.get(&id) {
            return Ok(m.clone());
        }
        let m = Arc::new(GpuMatrix::upload(gpu, name, src)?);
        self.seen.insert(id, m.clone());
        Ok(m)
    }

    /// A linear layer's weight of the CPU model on the GPU.
    #[allow(clippy::arc_with_non_send_sync)]
    pub fn weight(&mut self, gpu: &Gpu, name: &str, w: &LinearWeight) -> Result<GpuWeight> {
        Ok(match w {
            LinearWeight::Dense(t) => GpuWeight::Matrix(self.matrix(gpu, name, &MatrixSource::Tensor(t))?),
            LinearWeight::Matrix(f) => GpuWeight::Matrix(self.matrix(gpu, name, &MatrixSource::Factor(f))?),
            LinearWeight::LowRank { u, s, vh } => GpuWeight::LowRank {
                u: Arc::new(GpuMatrix::upload(gpu, &format!("{name} (U)"), &MatrixSource::Factor(u))?),
                s: gpu.upload(&format!("{name} (S)"), &f32_bytes(&s.to_f32())),
                vh: Arc::new(GpuMatrix::upload(gpu, &format!("{name} (Vh)"), &MatrixSource::Factor(vh))?),
            },
        })
    }

    /// Forget every upload (their buffers live on in the models holding them).
    pub fn clear(&mut self) {
        self.seen.clear();
    }
}
