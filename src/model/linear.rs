//! One `Linear` type with three storages behind one `forward`, so the model does not know which it runs:
//! a dense f32 tensor, a whole matrix in a compact storage (INT8, or f16/bf16 as stored), or low-rank factors
//! `U · diag(S) · Vh` (f32 or INT8). Quantized and half-precision weights are turned into f32 one block of rows at a time, into a
//! scratch buffer of at most [`SCRATCH_ELEMS`] values, so they are never held in f32 as a whole.

use crate::model::kernels::GEMV_MAX_ROWS;
use crate::model::storage::Factor;
use crate::Result;
use candle_core::{DType, Device, Tensor, D};
use std::sync::Arc;

/// The largest block (in f32 values) a quantized or half-precision weight is expanded into at a time: 4 MiB.
pub const SCRATCH_ELEMS: usize = 1 << 20;

/// How a linear layer's weight (out × in) is stored.
#[derive(Clone, Debug)]
pub enum LinearWeight {
    /// `[out, in]`, f32 or f16/bf16.
    Dense(Tensor),
    /// The whole `[out, in]` matrix in a compact storage: INT8 (no SVD), or f16/bf16 kept as stored.
    Matrix(Arc<Factor>),
    /// `W ≈ U · diag(S) · Vh`: `u` is out × r, `s` is 1 × r, `vh` is r × in.
    LowRank { u: Arc<Factor>, s: Arc<Factor>, vh: Arc<Factor> },
}

impl LinearWeight {
    /// (out, in)
    pub fn shape(&self) -> Result<(usize, usize)> {
        Ok(match self {
            LinearWeight::Dense(t) => t.dims2()?,
            LinearWeight::Matrix(f) => (f.rows(), f.cols()),
            LinearWeight::LowRank { u, vh, .. } => (u.rows(), vh.cols()),
        })
    }

    /// Bytes held in memory by the weight.
    pub fn bytes(&self) -> usize {
        match self {
            LinearWeight::Dense(t) => t.elem_count() * t.dtype().size_in_bytes(),
            LinearWeight::Matrix(f) => f.bytes(),
            LinearWeight::LowRank { u, s, vh } => u.bytes() + s.bytes() + vh.bytes(),
        }
    }

    /// Not compressed: f32, or 16-bit floats as the checkpoint stores them.
    pub fn is_dense(&self) -> bool {
        match self {
            LinearWeight::Dense(_) => true,
            LinearWeight::Matrix(f) => matches!(f.as_ref(), Factor::Half { .. }),
            LinearWeight::LowRank { .. } => false,
        }
    }

    /// The same weight in storage of its own (an `Arc` shares; this copies).
    pub fn deep_copy(&self) -> Self {
        let own = |f: &Arc<Factor>| Arc::new(Factor::clone(f));
        match self {
            LinearWeight::Dense(t) => LinearWeight::Dense(t.copy().unwrap_or_else(|_| t.clone())),
            LinearWeight::Matrix(f) => LinearWeight::Matrix(own(f)),
            LinearWeight::LowRank { u, s, vh } => LinearWeight::LowRank { u: own(u), s: own(s), vh: own(vh) },
        }
    }

    /// The rank kept, for low-rank storage.
    pub fn rank(&self) -> Option<usize> {
        match self {
            LinearWeight::LowRank { s, .. } => Some(s.cols()),
            _ => None,
        }
    }

    /// A short description: "dense f32", "int8 per-row", "rank 32, int8 per-tensor".
    pub fn describe(&self) -> String {
        let fdesc = |f: &Factor| match f {
            Factor::F32 { .. } => "f32".to_string(),
            Factor::Int8(q) => format!("int8 {}", q.scheme().as_str()),
            Factor::Grouped(g) => format!("int{} groups of {}", g.bits, g.group),
            Factor::Half { bf16: false, .. } => "dense f16".to_string(),
            Factor::Half { bf16: true, .. } => "dense bf16".to_string(),
        };
        match self {
            LinearWeight::Dense(t) => format!("dense {}", dtype_label(t.dtype())),
            LinearWeight::Matrix(f) => fdesc(f),
            LinearWeight::LowRank { u, .. } => format!("rank {}, {}", self.rank().unwrap_or(0), fdesc(u)),
        }
    }

    /// The weight as a dense f32 `[out, in]` matrix, row-major (for error measurement; allocates out × in).
    pub fn to_dense_f32(&self) -> Result<Vec<f32>> {
        let (out, inp) = self.shape()?;
        Ok(match self {
            LinearWeight::Dense(t) => t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?,
            LinearWeight::Matrix(f) => f.to_f32(),
            LinearWeight::LowRank { u, s, vh } => {
                // (U diag(S)) · Vh by candle's blocked matmul
                let r = s.cols();
                if r == 0 {
                    return Ok(vec![0f32; out * inp]);
                }
                let (mut us, s, vh) = (u.to_f32(), s.to_f32(), vh.to_f32());
                for row in us.chunks_exact_mut(r) {
                    for (x, k) in row.iter_mut().zip(&s) {
                        *x *= k;
                    }
                }
                let us = Tensor::from_vec(us, (out, r), &Device::Cpu)?;
                let vh = Tensor::from_vec(vh, (r, inp), &Device::Cpu)?;
                us.matmul(&vh)?.flatten_all()?.to_vec1()?
            }
        })
    }
}

pub fn dtype_label(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        DType::F64 => "f64",
        _ => "other",
    }
}

/// `y = x · Wᵀ + b` over the last dimension of `x`.
#[derive(Clone, Debug)]
pub struct Linear {
    /// The weight's tensor name in the checkpoint, e.g. `transformer.h.0.mlp.c_fc.weight`.
    pub name: String,
    pub weight: LinearWeight,
    pub bias: Option<Tensor>,
}

/// Watches every linear layer's input during a forward pass: called with the layer's weight name and its input as
/// `[rows, inp]` (calibration collects input statistics this way).
pub type Observer<'a> = &'a mut dyn FnMut(&str, &Tensor) -> Result<()>;

impl Linear {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_observed(x, &mut |_, _| Ok(()))
    }

    /// Show `x` (`[.., inp]`) to `observe` as this layer's input, `[rows, inp]`, without running the layer; that view.
    pub fn observe_input(&self, x: &Tensor, observe: Observer) -> Result<Tensor> {
        let inp = *x.dims().last().unwrap_or(&0);
        let x2 = x.reshape((x.elem_count() / inp.max(1), inp))?;
        observe(&self.name, &x2)?;
        Ok(x2)
    }

    /// [`Linear::forward`], showing the input to `observe` first.
    pub fn forward_observed(&self, x: &Tensor, observe: Observer) -> Result<Tensor> {
        let x2 = self.observe_input(x, observe)?;
        let dims = x.dims().to_vec();
        let y = match &self.weight {
            LinearWeight::Dense(w) if w.dtype() == DType::F32 => x2.matmul(&w.t()?)?,
            // a half tensor handed in directly (the model keeps halves as `Matrix`)
            LinearWeight::Dense(w) => {
                let (out, inp) = w.dims2()?;
                blocked_matmul_t(&x2, out, inp, |a, b| Ok(w.narrow(0, a, b - a)?.to_dtype(DType::F32)?))?
            }
            LinearWeight::Matrix(f) => factor_matmul_t(&x2, f)?,
            LinearWeight::LowRank { u, s, vh } => {
                let t = factor_matmul_t(&x2, vh)?;
                let s = Tensor::from_vec(s.to_f32(), (1, s.cols()), &Device::Cpu)?;
                factor_matmul_t(&t.broadcast_mul(&s)?, u)?
            }
        };
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out_dims = dims;
        let last = out_dims.len() - 1;
        out_dims[last] = y.dim(D::Minus1)?;
        Ok(y.reshape(out_dims)?)
    }
}

/// `x · Fᵀ` for a factor stored f32, INT8 or f16/bf16: fused kernels for a few rows of `x`, block by block otherwise.
fn factor_matmul_t(x: &Tensor, f: &Factor) -> Result<Tensor> {
    let (rows, cols) = (f.rows(), f.cols());
    let n = x.dim(0)?;
    if n <= GEMV_MAX_ROWS {
        let xs: Vec<f32> = x.contiguous()?.flatten_all()?.to_vec1()?;
        let mut out = vec![0f32; n * rows];
        crate::model::kernels::gemv_t(&xs, n, f, &mut out);
        return Ok(Tensor::from_vec(out, (n, rows), &Device::Cpu)?);
    }
    blocked_matmul_t(x, rows, cols, |a, b| {
        let mut buf = vec![0f32; (b - a) * cols];
        f.rows_f32(a, b, &mut buf);
        Ok(Tensor::from_vec(buf, (b - a, cols), &Device::Cpu)?)
    })
}

/// `x · Wᵀ` where rows `a..b` of W (`out × inp`) are produced on demand as f32 tensors, in blocks of at most
/// [`SCRATCH_ELEMS`] values.
fn blocked_matmul_t(
    x: &Tensor,
    out: usize,
    inp: usize,
    rows: impl Fn(usize, usize) -> Result<Tensor>,
) -> Result<Tensor> {
    let per_block = (SCRATCH_ELEMS / inp.max(1)).clamp(1, out.max(1));
    if per_block >= out {
        return Ok(x.matmul(&rows(0, out)?.t()?)?);
    }
    let mut parts = Vec::with_capacity(out.div_ceil(per_block));
    let mut a = 0;
    while a < out {
        let b = (a + per_block).min(out);
        parts.push(x.matmul(&rows(a, b)?.t()?)?);
        a = b;
    }
    Ok(Tensor::cat(&parts, 1)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::storage::{test_int8, QuantScheme};

    fn lin(weight: LinearWeight) -> Linear {
        Linear { name: "w".into(), weight, bias: None }
    }

    #[test]
    fn all_storages_agree_with_dense() {
        let (out, inp, r) = (6, 5, 5);
        let w: Vec<f32> = (0..out * inp).map(|i| ((i * 7919 % 97) as f32 / 97.0) - 0.5).collect();
        let x = Tensor::from_vec(
            (0..2 * 3 * inp).map(|i| (i as f32 * 0.37).sin()).collect::<Vec<_>>(),
            (2, 3, inp),
            &Device::Cpu,
        )
        .unwrap();
        let dense = lin(LinearWeight::Dense(Tensor::from_vec(w.clone(), (out, inp), &Device::Cpu).unwrap()));
        let y0: Vec<f32> = dense.forward(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap();

        // f16 dense
        let half = lin(LinearWeight::Dense(
            Tensor::from_vec(w.clone(), (out, inp), &Device::Cpu).unwrap().to_dtype(DType::F16).unwrap(),
        ));
        let y1: Vec<f32> = half.forward(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        // low rank, exact: U = W, S = 1, Vh = I (r = inp)
        let eye: Vec<f32> = (0..r * inp).map(|i| if i / inp == i % inp { 1.0 } else { 0.0 }).collect();
        let lr = lin(LinearWeight::LowRank {
            u: Arc::new(Factor::f32(w.clone(), out, r)),
            s: Arc::new(Factor::f32(vec![1.0; r], 1, r)),
            vh: Arc::new(Factor::f32(eye, r, inp)),
        });
        let y2: Vec<f32> = lr.forward(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let q = lin(LinearWeight::Matrix(Arc::new(test_int8(&w, out, inp, QuantScheme::PerRow))));
        let y3: Vec<f32> = q.forward(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        for i in 0..y0.len() {
            assert!((y0[i] - y1[i]).abs() < 2e-3, "f16 {i}");
            assert!((y0[i] - y2[i]).abs() < 1e-5, "lowrank {i}");
            assert!((y0[i] - y3[i]).abs() < 2e-2, "int8 {i}");
        }
        assert_eq!(lr.weight.to_dense_f32().unwrap().len(), out * inp);
    }

    #[test]
    fn blocked_matmul_equals_single_block() {
        // inp large enough that a block holds fewer rows than out
        let (out, inp) = (5, SCRATCH_ELEMS / 2);
        let w: Vec<f32> = (0..out * inp).map(|i| ((i % 13) as f32 - 6.0) * 0.01).collect();
        let x = Tensor::from_vec((0..inp).map(|i| ((i % 7) as f32) * 0.1).collect::<Vec<_>>(), (1, inp), &Device::Cpu)
            .unwrap();
        let f = Factor::f32(w.clone(), out, inp);
        let y = factor_matmul_t(&x, &f).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let wt = Tensor::from_vec(w, (out, inp), &Device::Cpu).unwrap();
        let y0 = x.matmul(&wt.t().unwrap()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(y.len(), out);
        for (a, b) in y.iter().zip(&y0) {
            assert!((a - b).abs() <= 1e-3 * b.abs().max(1.0));
        }
    }
}
