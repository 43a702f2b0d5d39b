//! The exact thin SVD (faer's), the [`Svd`] every method returns, and the errors measured on it: of a truncation, of
//! stored factors against the weight they were made from, from a spectrum alone.

use crate::{Error, Result};
use faer::Mat;

/// A (possibly truncated) SVD in f64, row-major.
#[derive(Clone, Debug)]
pub struct Svd {
    pub m: usize,
    pub n: usize,
    /// m × r, row-major
    pub u: Vec<f64>,
    /// r, descending
    pub s: Vec<f64>,
    /// r × n, row-major
    pub vh: Vec<f64>,
}

/// The linear-algebra crates keep scratch memory per thread, reserved on first use and kept for the thread's life:
/// the packing buffers of the gemm behind candle's matmul (growing with the product to a cap: a 512×512 product
/// reaches it) and faer's stack. Natively here they are 4.2 + 4.2 MB. Reserved before a compression starts
/// measuring the memory it keeps ([`crate::compression::pipeline::Compressor::new`]), they are not counted as the
/// compressed model's, so that the figure does not depend on what the thread computed before
/// (tests/session.rs: the first compression of a session and a later identical one report the same bytes).
pub fn reserve_scratch() {
    use std::cell::Cell;
    thread_local! { static RESERVED: Cell<bool> = const { Cell::new(false) }; }
    if RESERVED.with(|r| r.replace(true)) {
        return;
    }
    let dev = candle_core::Device::Cpu;
    if let Ok(a) = candle_core::Tensor::ones((512, 512), candle_core::DType::F32, &dev) {
        let _ = a.matmul(&a);
    }
    let _ = Mat::<f32>::from_fn(64, 32, |i, j| ((i * 7 + j * 3) % 11) as f32).thin_svd();
    let _ = Mat::<f64>::from_fn(64, 32, |i, j| ((i * 7 + j * 3) % 11) as f64).thin_svd();
}

pub(super) fn check_finite(w: &[f32], what: &str) -> Result<()> {
    // all exponent bits set means Inf or NaN; an OR over the bits vectorizes where `position` would not
    const EXP: u32 = 0x7f80_0000;
    if !w.iter().fold(false, |bad, x| bad | (x.to_bits() & EXP == EXP)) {
        return Ok(());
    }
    let i = w.iter().position(|x| !x.is_finite()).unwrap_or(0);
    Err(Error::Numeric(format!("{what}: the matrix has a non-finite value ({}) at index {i}", w[i])))
}

/// Σ f(x, y) over paired chunks of 1024, in 16 independent f32 lanes per chunk (so that it vectorizes: a single f32
/// accumulator would be a chain of dependent additions) and each chunk's sum added in f64; relative error ~1e-7.
fn lane_sum(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f64 {
    const L: usize = 16;
    let mut total = 0f64;
    for (x, y) in a.chunks(1024).zip(b.chunks(1024)) {
        let mut acc = [0f32; L];
        let (xs, ys) = (x.chunks_exact(L), y.chunks_exact(L));
        let tail: f32 = xs.remainder().iter().zip(ys.remainder()).map(|(&p, &q)| f(p, q)).sum();
        for (xb, yb) in xs.zip(ys) {
            for k in 0..L {
                acc[k] += f(xb[k], yb[k]);
            }
        }
        total += (acc.iter().sum::<f32>() + tail) as f64;
    }
    total
}

/// Σ x² in f64 ([`lane_sum`]'s accuracy).
pub fn sum_squares(w: &[f32]) -> f64 {
    lane_sum(w, w, |x, _| x * x)
}

/// ‖a − b‖F / ‖a‖F for two f32 matrices of the same size, summed as [`sum_squares`] is (no f64 copy of either).
pub fn rel_fro_error_f32(a: &[f32], b: &[f32]) -> f64 {
    ratio_error(lane_sum(a, b, |x, y| (x - y) * (x - y)), sum_squares(a))
}

fn ratio_error(num: f64, den: f64) -> f64 {
    if den == 0.0 {
        if num == 0.0 {
            0.0
        } else {
            f64::INFINITY
        }
    } else {
        (num / den).sqrt()
    }
}

/// `‖W − Ŵ‖F / ‖W‖F` of a stored weight `Ŵ` against the `w` it was made from (m × n, row-major).
///
/// For factors `Ŵ = P V` (P = U diag(S) as stored, m × r; V = Vh as stored, r × n) the product is not formed:
/// `‖W − P V‖² = ‖W‖² − 2 ⟨W Vᵀ, P⟩ + tr((PᵀP)(V Vᵀ))`, one f32 product `W Vᵀ` (m × n by n × r, an m × r result)
/// and two r × r Gram matrices, where forming `P V` would cost the same product and write an m × n matrix besides.
/// The f32 products leave the difference good to ~1e-6 of ‖W‖²: where it is below 1e-3 of ‖W‖² (an error under
/// 3%), digits were lost to cancellation and the difference is formed densely instead, as for every other storage.
pub fn stored_error(w: &[f32], stored: &crate::model::linear::LinearWeight) -> Result<f64> {
    use crate::model::linear::LinearWeight;
    let (m, n) = stored.shape()?;
    if w.len() != m * n {
        return Err(Error::msg(format!("a {m}×{n} weight was compared with {} values", w.len())));
    }
    if let LinearWeight::LowRank { u, s, vh } = stored {
        let norm2 = sum_squares(w);
        let r = s.cols();
        if r > 0 && norm2 > 0.0 {
            let sv = s.to_f32();
            let mut p = u.to_f32();
            for row in p.chunks_exact_mut(r) {
                for (x, k) in row.iter_mut().zip(&sv) {
                    *x *= k;
                }
            }
            let v = vh.to_f32();
            let (pm, vm) = (faer::MatRef::from_row_major_slice(&p, m, r), faer::MatRef::from_row_major_slice(&v, r, n));
            let wv = faer::MatRef::from_row_major_slice(w, m, n) * vm.transpose();
            let cross: f64 = (0..m).map(|i| (0..r).map(|k| wv[(i, k)] as f64 * p[i * r + k] as f64).sum::<f64>()).sum();
            let (gp, gv) = (pm.transpose() * pm, vm * vm.transpose());
            let quad: f64 = (0..r).map(|k| (0..r).map(|l| gp[(k, l)] as f64 * gv[(l, k)] as f64).sum::<f64>()).sum();
            let rel = (norm2 - 2.0 * cross + quad) / norm2;
            if rel >= 1e-3 {
                return Ok(rel.sqrt());
            }
        }
    }
    Ok(rel_fro_error_f32(w, &stored.to_dense_f32()?))
}

pub(crate) fn to_mat(w: &[f32], m: usize, n: usize) -> Mat<f64> {
    Mat::from_fn(m, n, |i, j| w[i * n + j] as f64)
}

pub(super) fn rows_of(a: faer::MatRef<'_, f64>) -> Vec<f64> {
    let (m, n) = a.shape();
    let mut out = Vec::with_capacity(m * n);
    for i in 0..m {
        for j in 0..n {
            out.push(a[(i, j)]);
        }
    }
    out
}

/// Transposed: row-major of aᵀ.
pub(super) fn rows_of_t(a: faer::MatRef<'_, f64>) -> Vec<f64> {
    rows_of(a.transpose())
}

impl Svd {
    pub fn rank(&self) -> usize {
        self.s.len()
    }

    /// Keep the first `r` triplets.
    pub fn truncate(mut self, r: usize) -> Self {
        let r = r.min(self.s.len());
        let k = self.s.len();
        if r < k {
            self.u = (0..self.m).flat_map(|i| self.u[i * k..i * k + r].to_vec()).collect();
            self.s.truncate(r);
            self.vh.truncate(r * self.n);
        }
        self
    }

    /// For each triplet i: j = argmax_j |U[j, i]| (first on ties); if U[j, i] < 0, negate U[:, i] and Vh[i, :].
    pub fn canonicalize_signs(&mut self) {
        let r = self.s.len();
        for i in 0..r {
            let mut best = 0;
            let mut bv = -1.0;
            for j in 0..self.m {
                let v = self.u[j * r + i].abs();
                if v > bv {
                    bv = v;
                    best = j;
                }
            }
            if self.u[best * r + i] < 0.0 {
                for j in 0..self.m {
                    self.u[j * r + i] = -self.u[j * r + i];
                }
                for x in &mut self.vh[i * self.n..(i + 1) * self.n] {
                    *x = -*x;
                }
            }
        }
    }

    /// ‖W − U diag(S) Vh‖F / ‖W‖F for the `w` this SVD was computed from, valid when `U` has orthonormal columns and
    /// `Uᵀ W = diag(S) Vh` ([`exact`] and [`randomized`], truncated or not; not [`whitened`]): then the error is
    /// `‖W‖² − Σ σ²`, with no product. Where that difference is small it has lost digits to cancellation, and the
    /// reconstruction is computed instead.
    pub fn projection_error(&self, w: &[f32]) -> f64 {
        let total = sum_squares(w);
        if total == 0.0 {
            return rel_fro_error(w, &self.reconstruct());
        }
        let kept: f64 = self.s.iter().map(|x| x * x).sum();
        let rel = ((total - kept) / total).max(0.0);
        // f32 factors: Σσ² is good to ~1e-6 of ‖W‖², so below 1e-3 (an error under 3%) recompute
        if rel < 1e-3 {
            rel_fro_error(w, &self.reconstruct())
        } else {
            rel.sqrt()
        }
    }

    /// U · diag(S) · Vh as an m × n row-major f64 matrix.
    pub fn reconstruct(&self) -> Vec<f64> {
        let (m, n, r) = (self.m, self.n, self.s.len());
        let us = Mat::from_fn(m, r, |i, k| self.u[i * r + k] * self.s[k]);
        let vh = Mat::from_fn(r, n, |k, j| self.vh[k * n + j]);
        rows_of((&us * &vh).as_ref())
    }
}

/// The thin SVD of `w` (m × n), all min(m, n) triplets.
pub fn exact(w: &[f32], m: usize, n: usize) -> Result<Svd> {
    check_finite(w, "SVD")?;
    if m == 0 || n == 0 {
        return Ok(Svd { m, n, u: vec![], s: vec![], vh: vec![] });
    }
    let a = to_mat(w, m, n);
    let svd = a.thin_svd().map_err(|e| Error::Numeric(format!("SVD did not converge ({e:?})")))?;
    let s: Vec<f64> = svd.S().column_vector().iter().copied().collect();
    Ok(Svd { m, n, u: rows_of(svd.U()), s, vh: rows_of_t(svd.V()) })
}

/// All singular values of `w`, descending.
pub fn singular_values(w: &[f32], m: usize, n: usize) -> Result<Vec<f64>> {
    check_finite(w, "singular values")?;
    if m == 0 || n == 0 {
        return Ok(vec![]);
    }
    to_mat(w, m, n).singular_values().map_err(|e| Error::Numeric(format!("SVD did not converge ({e:?})")))
}

/// ‖a − b‖F / ‖a‖F (0 when a is zero and b equals it).
pub fn rel_fro_error(a: &[f32], b: &[f64]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let x = x as f64;
        num += (x - y) * (x - y);
        den += x * x;
    }
    ratio_error(num, den)
}

/// Relative error of the best rank-r approximation from the spectrum: sqrt(Σ_{j>r} σ_j² / Σ σ_j²).
pub fn tail_error(s: &[f64], r: usize) -> f64 {
    let total: f64 = s.iter().map(|x| x * x).sum();
    if total == 0.0 {
        return 0.0;
    }
    let tail: f64 = s.iter().skip(r).map(|x| x * x).sum();
    (tail / total).sqrt()
}

/// The smallest rank keeping at least `fraction` of Σ σ² (the energy threshold).
pub fn rank_for_energy(s: &[f64], fraction: f64) -> usize {
    let total: f64 = s.iter().map(|x| x * x).sum();
    if total == 0.0 {
        return 0;
    }
    let mut acc = 0.0;
    for (i, x) in s.iter().enumerate() {
        acc += x * x;
        if acc >= fraction * total * (1.0 - 1e-12) {
            return i + 1;
        }
    }
    s.len()
}
