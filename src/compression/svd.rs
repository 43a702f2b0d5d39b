//! Truncated singular value decomposition.
//!
//! A weight `W` (m × n, row-major, `out × in` as `nn.Linear` stores it) is factored as `W = U · diag(S) · Vh` with
//! orthonormal columns in `U` (m × k), orthonormal rows in `Vh` (k × n) and `S` descending, k = min(m, n). Keeping
//! the first `r` triplets gives the best rank-r approximation in the Frobenius norm (Eckart–Young):
//! `‖W − W_r‖F² = Σ_{j>r} σ_j²`.
//!
//! * [`exact`] uses faer's SVD (the reference, and the method for small matrices);
//! * [`randomized`] is Halko–Martinsson–Tropp: a Gaussian sketch with oversampling, power iterations each followed by
//!   re-orthonormalisation (QR), then an exact SVD of the small projected matrix;
//! * [`singular_values`] computes the spectrum alone.
//!
//! Signs of singular vectors are not unique; [`Svd::canonicalize_signs`] fixes them the way the Python reference does
//! (the largest-magnitude entry of every column of U is positive), which matters for per-tensor quantization.
//! Non-finite input is an error, not a panic.

use crate::model::generate::Rng;
use crate::{Error, Result};
use faer::linalg::matmul::matmul;
use faer::linalg::matmul::triangular::BlockStructure;
use faer::{Accum, Mat, Par};

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

/// How to compute a truncated SVD.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(not(target_arch = "wasm32"), derive(clap::ValueEnum))]
pub enum SvdMethod {
    /// Exact for matrices whose smaller side is at most [`AUTO_EXACT_DIM`] or when the rank is a large share of it;
    /// randomized otherwise.
    #[default]
    Auto,
    Exact,
    Randomized,
}

/// Krylov iterations of the randomized SVD as the pipeline runs it: the basis is built in `POWER_ITERS + 1` blocks.
pub const POWER_ITERS: usize = 3;

/// Basis columns beyond the rank of the randomized SVD as the pipeline runs it. With [`POWER_ITERS`], the cheapest
/// setting measured within 2% of the exact truncation's error at 2048 × 8192 and 2048 × 2048, rank 128, on `slc
/// synth`'s spectra (BENCHMARKS.md).
pub const OVERSAMPLE: usize = 80;

/// Below this smaller side, `Auto` uses the exact SVD.
pub const AUTO_EXACT_DIM: usize = 512;

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

fn check_finite(w: &[f32], what: &str) -> Result<()> {
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

fn rows_of(a: faer::MatRef<'_, f64>) -> Vec<f64> {
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
fn rows_of_t(a: faer::MatRef<'_, f64>) -> Vec<f64> {
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

/// Randomized truncated SVD of rank `r` by block Krylov iteration (Halko, Martinsson & Tropp 2011; Musco & Musco
/// 2015, "Randomized block Krylov methods"; the block Lanczos form of Yuan, Gu & Li 2018): a basis of
/// `r + oversample` columns built as `power_iters + 1` blocks, started from a CountSketch of the matrix drawn from
/// `seed` ([`count_sketch`]).
///
/// With `A` the matrix or its transpose, whichever is wide (`m ≤ n`), and b = ⌈(r + oversample)/(q + 1)⌉:
///
/// ```text
/// Q₁ = orth(A Ω);  Zᵢ = Aᵀ Qᵢ;  Qᵢ₊₁ = orth(A Zᵢ ⟂ Q₁ … Qᵢ)  (i = 1 … q);  Z_{q+1} = Aᵀ Q_{q+1}
/// ```
///
/// Every `Zᵢ` is needed twice: to extend the Krylov space and, as `Qᵢᵀ A = Zᵢᵀ`, as a block of the projected matrix
/// `B = Qᵀ A`. With the sketch `A Ω` a single pass over `A` without products, the whole SVD costs `(2q + 1) b`
/// columns of products with `A` — under two units of `A · (n × l)` whatever the number of blocks ([`product_units`]):
/// depth in the Krylov space is free, and more, smaller blocks reach a slowly decaying spectrum's optimum faster than
/// fewer, larger ones at the same cost (BENCHMARKS.md). The products are faer's blocked
/// f32 matmul, which streams the matrix through cache once per product. Blocks are orthonormalised by CholeskyQR2
/// (two Gram–Cholesky passes, each a product of the block with itself) after two passes of block Gram–Schmidt against
/// the earlier blocks; a block whose Gram matrix is not positive definite falls back to Householder QR.
///
/// The small SVD comes from `G = B Bᵀ = Zᵀ Z` (l × l, its lower half from a triangular product, eigendecomposition in
/// f64): `B = U_G Σ Vᵀ` with
/// `Σ² = eig(G)` and `V = Bᵀ U_G Σ⁻¹`, so `U = Q U_G` and `Vh = Σ⁻¹ U_Gᵀ B`. When the kept spectrum spans more than
/// 10⁻² in σ (the Gram matrix would lose digits in f32) a thin QR of `Bᵀ` and the SVD of its `R` are used instead. `U`
/// and `Vh` come out with orthonormal columns and rows, and `UᵀW = Σ Vh` holds, so the truncation error is
/// `‖W‖² − Σ σ²` (see [`Svd::projection_error`]).
pub fn randomized(
    w: &[f32],
    m: usize,
    n: usize,
    r: usize,
    oversample: usize,
    power_iters: usize,
    seed: u64,
) -> Result<Svd> {
    randomized_staged(w, m, n, r, oversample, power_iters, seed, &mut |_| {})
}

/// The stages of [`randomized`], for profiling: `mark(stage)` is called as each one ends.
pub const RANDOMIZED_STAGES: [&str; 4] = ["sketch", "products", "qr", "small svd"];

/// Orthonormal columns spanning `y` with the span of `prev` (orthonormal blocks) taken out: block Gram–Schmidt
/// twice, then CholeskyQR2; Householder QR where the Gram matrix is not positive definite.
fn orth_block(mut y: Mat<f32>, prev: faer::MatRef<'_, f32>) -> Mat<f32> {
    let project = |y: &mut Mat<f32>| {
        if prev.ncols() > 0 {
            for _ in 0..2 {
                let c = prev.transpose() * &*y;
                *y -= prev * &c;
            }
        }
    };
    project(&mut y);
    for _ in 0..2 {
        match cholesky_step(&y) {
            Some(next) => y = next,
            None => {
                y = y.qr().compute_thin_Q();
                project(&mut y);
                y = y.qr().compute_thin_Q();
                return y;
            }
        }
    }
    y
}

/// One CholeskyQR pass: `Y L⁻ᵀ` with `Yᵀ Y = L Lᵀ` (the Gram matrix from an f32 product, factored in f64); `None`
/// when the Gram matrix is not numerically positive definite.
fn cholesky_step(y: &Mat<f32>) -> Option<Mat<f32>> {
    let b = y.ncols();
    let g32 = y.transpose() * y;
    let g = Mat::<f64>::from_fn(b, b, |i, j| g32[(i, j)] as f64);
    let scale = (0..b).map(|i| g[(i, i)]).fold(0.0, f64::max);
    if scale.is_nan() || scale <= 0.0 {
        return None;
    }
    let l = g.llt(faer::Side::Lower).ok()?;
    let lm = l.L();
    // a pivot below √ε(f32) of the largest means Y is too ill-conditioned for this pass to be accurate
    if (0..b).any(|i| lm[(i, i)] * lm[(i, i)] < 1e-7 * scale) {
        return None;
    }
    let mut inv = Mat::<f64>::identity(b, b);
    lm.solve_lower_triangular_in_place(inv.as_mut());
    let t = Mat::<f32>::from_fn(b, b, |i, j| inv[(j, i)] as f32); // L⁻ᵀ
    Some(y * &t)
}

/// Units of `A · (n × l)` that [`randomized`] computes with `power_iters` Krylov iterations: `q + 1` blocks of `Aᵀ Qᵢ`
/// and `q` of `A Zᵢ`, each a `1 / (q + 1)` of a unit (the sketch that starts them is no product).
pub fn product_units(power_iters: usize) -> f64 {
    (2 * power_iters + 1) as f64 / (power_iters + 1) as f64
}

/// `A Ω` for a CountSketch `Ω` (Clarkson & Woodruff 2013): `A` is `w` (m × n, row-major) or its transpose, whichever
/// is wide, and `Ω` (long side × `b`) has one nonzero per row, ±1 at a column drawn uniformly, signs uniform. It
/// mixes every column of `A` into the sketch, like a Gaussian one, for one pass over `w` without multiplications
/// (a Gaussian `Ω` costs a product with `A` of `b` columns); the Krylov iterations then refine the block it starts.
fn count_sketch(w: &[f32], m: usize, n: usize, b: usize, rng: &mut Rng) -> Mat<f32> {
    let (short, long) = (m.min(n), m.max(n));
    let hash: Vec<(usize, f32)> = (0..long)
        .map(|_| {
            let x = rng.next_u64();
            ((x >> 32) as usize % b, if x & 1 == 0 { 1.0 } else { -1.0 })
        })
        .collect();
    if m <= n {
        // A = W: row i of the sketch gathers row i of W, each entry into its column's bucket
        let mut y = vec![0f32; short * b];
        for (row, yi) in w.chunks_exact(n).zip(y.chunks_exact_mut(b)) {
            for (&x, &(c, s)) in row.iter().zip(&hash) {
                yi[c] += s * x;
            }
        }
        Mat::from_fn(short, b, |i, c| y[i * b + c])
    } else {
        // A = Wᵀ: row j of W is column j of A, added whole into its bucket's column
        let mut y = Mat::<f32>::zeros(short, b);
        for (row, &(c, s)) in w.chunks_exact(n).zip(&hash) {
            for (yc, &x) in y.col_mut(c).iter_mut().zip(row) {
                *yc += s * x;
            }
        }
        y
    }
}

/// [`randomized`], calling `mark` with the stage's index in [`RANDOMIZED_STAGES`] as each piece of work ends.
#[allow(clippy::too_many_arguments)]
pub fn randomized_staged(
    w: &[f32],
    m: usize,
    n: usize,
    r: usize,
    oversample: usize,
    power_iters: usize,
    seed: u64,
    mark: &mut dyn FnMut(usize),
) -> Result<Svd> {
    check_finite(w, "randomized SVD")?;
    let k = m.min(n);
    let r = r.min(k);
    let l = (r + oversample).min(k);
    if r == 0 {
        return Ok(Svd { m, n, u: vec![], s: vec![], vh: vec![] });
    }
    if l >= k {
        return Ok(exact(w, m, n)?.truncate(r));
    }
    // work on the wide orientation: the blocks Q live on the short side
    let wide = m <= n;
    let a = if wide {
        faer::MatRef::from_row_major_slice(w, m, n)
    } else {
        faer::MatRef::from_row_major_slice(w, m, n).transpose()
    };
    let (short, long) = (k, m.max(n));
    let blocks = power_iters + 1;
    let b = l.div_ceil(blocks);
    let first = count_sketch(w, m, n, b, &mut Rng::new(seed));
    mark(0);
    // the basis Qall = [Q₁ … Q_B] (short × l) and B = Qᵀ A held as its transpose Zall = [Z₁ … Z_B] (long × l), each
    // block written in place as it is made
    let mut qall = Mat::<f32>::zeros(short, l);
    let mut zall = Mat::<f32>::zeros(long, l);
    let mut y = Some(first);
    let mut have = 0;
    while let Some(mut next) = y.take() {
        let cols = b.min(l - have);
        if next.ncols() > cols {
            next = next.subcols(0, cols).to_owned();
        }
        mark(1);
        let q = orth_block(next, qall.as_ref().subcols(0, have));
        qall.as_mut().subcols_mut(have, cols).copy_from(&q);
        mark(2);
        // Zᵢ = Aᵀ Qᵢ (long × cols): Qᵢᵀ A, transposed
        matmul(zall.as_mut().subcols_mut(have, cols), Accum::Replace, a.transpose(), &q, 1.0, Par::Seq);
        if have + cols < l {
            y = Some(a * zall.as_ref().subcols(have, cols));
        }
        have += cols;
        mark(1);
    }
    // G = B Bᵀ = Zallᵀ Zall, its lower half (what the eigendecomposition reads): half the flops of the full product
    let mut g32 = Mat::<f32>::zeros(l, l);
    faer::linalg::matmul::triangular::matmul(
        g32.as_mut(),
        BlockStructure::TriangularLower,
        Accum::Replace,
        zall.transpose(),
        BlockStructure::Rectangular,
        zall.as_ref(),
        BlockStructure::Rectangular,
        1.0,
        Par::Seq,
    );
    let g = Mat::<f64>::from_fn(l, l, |i, j| g32[(i.max(j), i.min(j))] as f64);
    let eig = g
        .self_adjoint_eigen(faer::Side::Lower)
        .map_err(|e| Error::Numeric(format!("eigendecomposition did not converge ({e:?})")))?;
    let lam: Vec<f64> = eig.S().column_vector().iter().copied().collect(); // ascending
    let top = lam[l - 1].max(0.0);
    let (ug, s, v) = if top > 0.0 && lam[l - r] >= 1e-4 * top {
        // descending order: column l-1-j of the eigenvectors
        let s: Vec<f64> = (0..r).map(|j| lam[l - 1 - j].sqrt()).collect();
        let ug = Mat::<f32>::from_fn(l, r, |i, j| eig.U()[(i, l - 1 - j)] as f32);
        let scaled = Mat::<f32>::from_fn(l, r, |i, j| (eig.U()[(i, l - 1 - j)] / s[j]) as f32);
        let v = &zall * &scaled; // long × r
        (ug, s, v)
    } else {
        let qr = zall.qr();
        let z = qr.compute_thin_Q(); // long × l
        let rt = Mat::<f64>::from_fn(l, l, |i, j| if i <= j { qr.thin_R()[(i, j)] as f64 } else { 0.0 })
            .transpose()
            .to_owned();
        let small = rt.thin_svd().map_err(|e| Error::Numeric(format!("SVD did not converge ({e:?})")))?;
        let ug = Mat::<f32>::from_fn(l, r, |i, j| small.U()[(i, j)] as f32);
        let vr = Mat::<f32>::from_fn(l, r, |i, j| small.V()[(i, j)] as f32);
        let s: Vec<f64> = small.S().column_vector().iter().take(r).copied().collect();
        (ug, s, &z * &vr)
    };
    let u = &qall * &ug; // short × r
    let (u, v) = if wide { (u, v) } else { (v, u) };
    let out = Svd {
        m,
        n,
        u: (0..m).flat_map(|i| (0..r).map(move |j| (i, j))).map(|(i, j)| u[(i, j)] as f64).collect(),
        s,
        vh: (0..r).flat_map(|j| (0..n).map(move |c| (j, c))).map(|(j, c)| v[(c, j)] as f64).collect(),
    };
    mark(3);
    Ok(out)
}

/// What [`profile`] measured for one shape: seconds per stage of [`randomized`] (best of the runs), a plain f32
/// product of the same shape for comparison, and the errors.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SvdProfile {
    pub m: usize,
    pub n: usize,
    pub rank: usize,
    pub oversample: usize,
    pub power_iters: usize,
    /// (stage, seconds) in the order of [`RANDOMIZED_STAGES`].
    pub stages: Vec<(String, f64)>,
    pub randomized_seconds: f64,
    /// One `m × n` by `n × (rank + oversample)` f32 product: the unit a stage is measured against.
    pub matmul_seconds: f64,
    pub candle_seconds: f64,
    /// Units of `W · (n × l)` the randomized SVD does ([`product_units`]).
    pub products: f64,
    /// ‖W − W_r‖F / ‖W‖F of the randomized truncation.
    pub err_randomized: f64,
    /// The same for the exact truncation (from every singular value), when asked.
    pub err_exact: Option<f64>,
    pub exact_seconds: Option<f64>,
    /// The products of one Krylov block (`A·Z`, `Aᵀ·Q`, `b` columns) and a plain one, by implementation: the median
    /// seconds of interleaved rounds (wide matrices only).
    pub narrow: Vec<(String, f64)>,
}

/// Medians over interleaved rounds of the products a Krylov block does, `Y = A·Z` (`A` the wide `m × n` row-major
/// matrix, `Z` `n × b`) and `Z = Aᵀ·Q` (`Q` `m × b`), and of a plain `A·(n × l)`, through faer (what
/// [`randomized`] uses) and through candle.
pub fn narrow_products(w: &[f32], m: usize, n: usize, b: usize, l: usize, rounds: usize) -> Result<Vec<(String, f64)>> {
    use crate::clock::now;
    let a = faer::MatRef::from_row_major_slice(w, m, n);
    let fill = |rows: usize, cols: usize| Mat::<f32>::from_fn(rows, cols, |i, j| ((i * 7 + j * 13) % 17) as f32 - 8.0);
    let (z, q, zl) = (fill(n, b), fill(m, b), fill(n, l));
    let dev = candle_core::Device::Cpu;
    let tensor = |x: &Mat<f32>| {
        let (r, c) = (x.nrows(), x.ncols());
        candle_core::Tensor::from_vec((0..r * c).map(|k| x[(k / c, k % c)]).collect::<Vec<f32>>(), (r, c), &dev)
    };
    let ct = candle_core::Tensor::from_slice(w, (m, n), &dev)?;
    let ctt = ct.t()?;
    let (cz, cq, czl) = (tensor(&z)?, tensor(&q)?, tensor(&zl)?);
    let names = ["faer A·Z", "faer Aᵀ·Q", "faer A·(n×l)", "candle A·Z", "candle Aᵀ·Q", "candle A·(n×l)"];
    let mut times = vec![Vec::new(); names.len()];
    for _ in 0..rounds.max(1) {
        for (k, t) in times.iter_mut().enumerate() {
            let s = now();
            match k {
                0 => drop(std::hint::black_box(a * &z)),
                1 => drop(std::hint::black_box(a.transpose() * &q)),
                2 => drop(std::hint::black_box(a * &zl)),
                3 => drop(std::hint::black_box(ct.matmul(&cz)?)),
                4 => drop(std::hint::black_box(ctt.matmul(&cq)?)),
                _ => drop(std::hint::black_box(ct.matmul(&czl)?)),
            }
            t.push(now() - s);
        }
    }
    Ok(names
        .iter()
        .zip(times)
        .map(|(n, mut t)| {
            t.sort_by(f64::total_cmp);
            (n.to_string(), t[t.len() / 2])
        })
        .collect())
}

/// Time [`randomized`] with the given oversampling and iterations on the `m × n` matrix `w`, best of `runs`, stage by stage, beside a plain
/// f32 product of the same shape; with `exact`, also the exact SVD's time and error.
#[allow(clippy::too_many_arguments)]
pub fn profile(
    w: &[f32],
    m: usize,
    n: usize,
    rank: usize,
    oversample: usize,
    power_iters: usize,
    runs: usize,
    exact_too: bool,
) -> Result<SvdProfile> {
    use crate::clock::now;
    let l = (rank + oversample).min(m.min(n));
    let a = faer::MatRef::from_row_major_slice(w, m, n);
    let b = Mat::<f32>::from_fn(n, l, |i, j| ((i * 7 + j * 13) % 17) as f32 - 8.0);
    let mut matmul_seconds = f64::INFINITY;
    for _ in 0..runs.max(1) {
        let t = now();
        let c = a * &b;
        matmul_seconds = matmul_seconds.min(now() - t);
        std::hint::black_box(c);
    }
    let ct = candle_core::Tensor::from_slice(w, (m, n), &candle_core::Device::Cpu)?;
    let cb = candle_core::Tensor::from_slice(&vec![0.5f32; n * l], (n, l), &candle_core::Device::Cpu)?;
    let mut candle_seconds = f64::INFINITY;
    for _ in 0..runs.max(1) {
        let t = now();
        let c = ct.matmul(&cb)?;
        candle_seconds = candle_seconds.min(now() - t);
        std::hint::black_box(c);
    }
    let mut best = vec![f64::INFINITY; RANDOMIZED_STAGES.len()];
    let mut total = f64::INFINITY;
    let mut svd = None;
    for _ in 0..runs.max(1) {
        let mut spent = vec![0.0; RANDOMIZED_STAGES.len()];
        let t0 = now();
        let mut t = t0;
        let out = randomized_staged(w, m, n, rank, oversample, power_iters, 1, &mut |stage| {
            let here = now();
            spent[stage] += here - t;
            t = here;
        })?;
        total = total.min(now() - t0);
        for (b, s) in best.iter_mut().zip(&spent) {
            *b = b.min(*s);
        }
        svd = Some(out);
    }
    let svd = svd.ok_or_else(|| Error::msg("no run"))?;
    let err_randomized = rel_fro_error(w, &svd.reconstruct());
    let (err_exact, exact_seconds) = if exact_too {
        let t = now();
        let s = singular_values(w, m, n)?;
        (Some(tail_error(&s, rank)), Some(now() - t))
    } else {
        (None, None)
    };
    Ok(SvdProfile {
        m,
        n,
        rank,
        oversample,
        power_iters,
        stages: RANDOMIZED_STAGES.iter().map(|s| s.to_string()).zip(best).collect(),
        randomized_seconds: total,
        matmul_seconds,
        candle_seconds,
        products: product_units(power_iters),
        err_randomized,
        err_exact,
        exact_seconds,
        narrow: {
            let l = (rank + oversample).min(m.min(n));
            if m <= n && l < m {
                narrow_products(w, m, n, l.div_ceil(power_iters + 1), l, 7)?
            } else {
                vec![]
            }
        },
    })
}

impl SvdMethod {
    /// Whether a rank-`r` truncation of an `m × n` matrix by this method is computed exactly (the one place the
    /// choice is made).
    pub fn is_exact_for(self, m: usize, n: usize, r: usize) -> bool {
        let k = m.min(n);
        match self {
            SvdMethod::Exact => true,
            SvdMethod::Randomized => false,
            SvdMethod::Auto => k <= AUTO_EXACT_DIM || 4 * r >= k,
        }
    }
}

/// The rank-`r` truncated SVD by `method`.
pub fn truncated(w: &[f32], m: usize, n: usize, r: usize, method: SvdMethod, seed: u64) -> Result<Svd> {
    Ok(truncated_with_spectrum(w, m, n, r, method, seed)?.0)
}

/// [`truncated`], with every singular value when the exact path computed them anyway.
pub fn truncated_with_spectrum(
    w: &[f32],
    m: usize,
    n: usize,
    r: usize,
    method: SvdMethod,
    seed: u64,
) -> Result<(Svd, Option<Vec<f64>>)> {
    if method.is_exact_for(m, n, r) {
        let full = exact(w, m, n)?;
        let all = full.s.clone();
        Ok((full.truncate(r), Some(all)))
    } else {
        Ok((randomized(w, m, n, r, OVERSAMPLE, POWER_ITERS, seed)?, None))
    }
}

/// Activation-aware ("whitened") truncated SVD of rank `r`: with `G` the mean `x xᵀ` of the layer's inputs
/// (n × n) and `L` its Cholesky factor (`G + λI = L Lᵀ`, λ = `damp` · mean diagonal, which keeps L invertible when
/// some inputs never vary), the best rank-r approximation of `W L` is `U Σ Vᵀ`, and `W_r = U Σ (Vᵀ L⁻¹)` minimises
/// `‖(W − W_r) X‖F` over the calibration inputs X. Returned as an [`Svd`] whose `vh` is `Vᵀ L⁻¹` (not orthonormal).
pub fn whitened(w: &[f32], m: usize, n: usize, gram: &[f64], r: usize, damp: f64) -> Result<Svd> {
    check_finite(w, "whitened SVD")?;
    Ok(whitened_f64(&to_mat(w, m, n), gram, r, damp)?.0)
}

/// [`whitened`] of an f64 matrix `a` (m × n), also returning every singular value of `A L` (the whitened spectrum:
/// `Σ_{j>r} σ_j²` is the error `tr(ΔW G ΔWᵀ)` of rank r on the damped statistics).
pub fn whitened_f64(a: &Mat<f64>, gram: &[f64], r: usize, damp: f64) -> Result<(Svd, Vec<f64>)> {
    let (m, n) = (a.nrows(), a.ncols());
    if gram.len() != n * n || gram.iter().any(|x| !x.is_finite()) {
        return Err(Error::Numeric(format!("whitened SVD: the calibration statistics do not fit a {m}×{n} weight")));
    }
    if a.col_iter().any(|c| c.iter().any(|x| !x.is_finite())) {
        return Err(Error::Numeric("whitened SVD: the matrix has non-finite values".into()));
    }
    let mean_diag = (0..n).map(|i| gram[i * n + i]).sum::<f64>() / n.max(1) as f64;
    let lambda = damp * mean_diag.max(f64::MIN_POSITIVE);
    let g = Mat::from_fn(n, n, |i, j| gram[i * n + j] + if i == j { lambda } else { 0.0 });
    let llt = g.llt(faer::Side::Lower).map_err(|e| {
        Error::Numeric(format!("whitened SVD: the calibration statistics are not positive definite ({e:?})"))
    })?;
    let l = llt.L();
    let al = a * l;
    let svd = al.thin_svd().map_err(|e| Error::Numeric(format!("SVD did not converge ({e:?})")))?;
    let all: Vec<f64> = svd.S().column_vector().iter().copied().collect();
    let r = r.min(m.min(n));
    let s: Vec<f64> = all.iter().copied().take(r).collect();
    let u = svd.U().subcols(0, r).to_owned();
    // Vh = Vᵀ L⁻¹, i.e. Vhᵀ = L⁻ᵀ V: solve Lᵀ X = V
    let mut x = svd.V().subcols(0, r).to_owned();
    faer::linalg::triangular_solve::solve_upper_triangular_in_place(l.transpose(), x.as_mut(), faer::Par::Seq);
    Ok((Svd { m, n, u: rows_of(u.as_ref()), s, vh: rows_of_t(x.as_ref()) }, all))
}

/// sqrt(tr((W − W_r) G (W − W_r)ᵀ) / tr(W G Wᵀ)): the relative error on the calibration activations.
pub fn rel_activation_error(w: &[f32], wr: &[f64], m: usize, n: usize, gram: &[f64]) -> f64 {
    let g = Mat::from_fn(n, n, |i, j| gram[i * n + j]);
    let d = Mat::from_fn(m, n, |i, j| w[i * n + j] as f64 - wr[i * n + j]);
    let a = Mat::from_fn(m, n, |i, j| w[i * n + j] as f64);
    let quad = |x: &Mat<f64>| {
        let xg = x * &g;
        (0..m).map(|i| (0..n).map(|j| xg[(i, j)] * x[(i, j)]).sum::<f64>()).sum::<f64>()
    };
    let den = quad(&a);
    if den <= 0.0 {
        return 0.0;
    }
    (quad(&d).max(0.0) / den).sqrt()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn random(m: usize, n: usize, seed: u64) -> Vec<f32> {
        let mut rng = Rng::new(seed);
        (0..m * n).map(|_| rng.normal() as f32).collect()
    }

    /// A matrix with a decaying spectrum: Σ_k σ_k u_k v_kᵀ with σ_k = 0.8^k.
    fn decaying(m: usize, n: usize, seed: u64) -> Vec<f32> {
        let g = random(m, n, seed);
        let svd = exact(&g, m, n).unwrap();
        let k = m.min(n);
        let mut s = svd.clone();
        s.s = (0..k).map(|i| 0.8f64.powi(i as i32)).collect();
        s.reconstruct().iter().map(|&x| x as f32).collect()
    }

    fn orthonormal_cols(u: &[f64], m: usize, r: usize) -> f64 {
        let mut worst = 0f64;
        for a in 0..r {
            for b in 0..r {
                let d: f64 = (0..m).map(|i| u[i * r + a] * u[i * r + b]).sum();
                worst = worst.max((d - if a == b { 1.0 } else { 0.0 }).abs());
            }
        }
        worst
    }

    #[test]
    fn exact_reconstructs_tall_wide_square() {
        for (m, n) in [(40, 12), (12, 40), (25, 25), (1, 7), (7, 1)] {
            let w = random(m, n, (m * 100 + n) as u64);
            let svd = exact(&w, m, n).unwrap();
            let k = m.min(n);
            assert_eq!(svd.s.len(), k);
            assert!(svd.s.windows(2).all(|p| p[0] >= p[1]));
            let err = rel_fro_error(&w, &svd.reconstruct());
            assert!(err < 1e-12 * ((m.max(n)) as f64).sqrt() * 10.0, "{m}x{n}: {err}");
            assert!(orthonormal_cols(&svd.u, m, k) < 1e-10);
            // Vh rows orthonormal = columns of Vhᵀ
            let vt: Vec<f64> =
                (0..n).flat_map(|j| (0..k).map(move |i| (i, j))).map(|(i, j)| svd.vh[i * n + j]).collect();
            assert!(orthonormal_cols(&vt, n, k) < 1e-10);
        }
    }

    #[test]
    fn truncation_error_is_the_spectral_tail() {
        let (m, n) = (30, 20);
        let w = random(m, n, 3);
        let full = exact(&w, m, n).unwrap();
        for r in [0, 1, 5, 19, 20] {
            let t = full.clone().truncate(r);
            let err = rel_fro_error(&w, &t.reconstruct());
            assert!((err - tail_error(&full.s, r)).abs() < 1e-9, "r={r}");
        }
    }

    #[test]
    fn rank_deficient_and_zero_matrices() {
        // rank 3: A = B·C with B 20×3, C 3×15
        let (b, c) = (random(20, 3, 1), random(3, 15, 2));
        let w: Vec<f32> =
            (0..20 * 15).map(|idx| (0..3).map(|k| b[(idx / 15) * 3 + k] * c[k * 15 + idx % 15]).sum()).collect();
        let s = singular_values(&w, 20, 15).unwrap();
        assert!(s[2] > 1e-3 && s[3] < 1e-5 * s[0], "{s:?}");
        let r3 = truncated(&w, 20, 15, 3, SvdMethod::Randomized, 9).unwrap();
        assert!(rel_fro_error(&w, &r3.reconstruct()) < 1e-5);
        assert_eq!(rank_for_energy(&s, 0.999999), 3);
        let z = vec![0f32; 12];
        let svd = exact(&z, 3, 4).unwrap();
        assert!(svd.s.iter().all(|&x| x == 0.0));
        assert_eq!(rel_fro_error(&z, &svd.reconstruct()), 0.0);
        assert_eq!(rank_for_energy(&svd.s, 0.9), 0);
        let r = randomized(&vec![0f32; 60 * 40], 60, 40, 5, 5, 2, 1).unwrap();
        assert!(r.s.iter().all(|&x| x == 0.0));
    }

    #[test]
    fn randomized_is_close_to_optimal_on_decaying_spectra() {
        for (m, n) in [(120, 80), (80, 120)] {
            let w = decaying(m, n, 5);
            let s = singular_values(&w, m, n).unwrap();
            for r in [4, 16] {
                let rs = randomized(&w, m, n, r, 40, 2, 42).unwrap();
                let err = rel_fro_error(&w, &rs.reconstruct());
                let best = tail_error(&s, r);
                assert!(err <= best * 1.02 + 1e-12, "{m}x{n} r={r}: {err} vs optimum {best}");
                // Ritz values: from below, and at this depth converged
                for (a, b) in rs.s.iter().zip(&s) {
                    assert!(*a <= b + 1e-6 * s[0] && *a >= b - 1e-6 * s[0], "{a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn signs_are_canonical_and_reconstruction_unchanged() {
        let w = random(10, 6, 11);
        let mut svd = exact(&w, 10, 6).unwrap();
        let before = svd.reconstruct();
        svd.canonicalize_signs();
        let after = svd.reconstruct();
        for (a, b) in before.iter().zip(&after) {
            assert!((a - b).abs() < 1e-12);
        }
        for i in 0..6 {
            let col: Vec<f64> = (0..10).map(|j| svd.u[j * 6 + i]).collect();
            let j = (0..10).fold(0, |b, j| if col[j].abs() > col[b].abs() { j } else { b });
            assert!(col[j] > 0.0);
        }
    }

    #[test]
    fn whitened_svd_is_better_on_the_activations_and_exact_at_full_rank() {
        let (m, n, rows) = (24, 16, 200);
        let w = random(m, n, 21);
        // inputs with very different scales per feature
        let mut rng = Rng::new(5);
        let x: Vec<f64> =
            (0..rows * n).map(|k| rng.normal() * (1.0 + 10.0 * ((k % n) as f64 / n as f64).powi(3))).collect();
        let mut gram = vec![0f64; n * n];
        for r in 0..rows {
            for i in 0..n {
                for j in 0..n {
                    gram[i * n + j] += x[r * n + i] * x[r * n + j] / rows as f64;
                }
            }
        }
        for r in [2, 6] {
            let plain = exact(&w, m, n).unwrap().truncate(r).reconstruct();
            let white = whitened(&w, m, n, &gram, r, 1e-9).unwrap();
            let act = |wr: &[f64]| rel_activation_error(&w, wr, m, n, &gram);
            assert!(act(&white.reconstruct()) < act(&plain), "rank {r}");
            assert!(
                rel_fro_error(&w, &white.reconstruct()) >= rel_fro_error(&w, &plain) - 1e-12,
                "rank {r}: plain SVD is optimal in F"
            );
        }
        let full = whitened(&w, m, n, &gram, n, 1e-9).unwrap();
        assert!(rel_fro_error(&w, &full.reconstruct()) < 1e-8);
        assert!(whitened(&w, m, n, &gram[1..], 2, 0.0).is_err());
    }

    #[test]
    fn stored_error_equals_the_dense_difference() {
        use crate::compression::pipeline::factors;
        use crate::model::storage::QuantScheme;
        for (m, n) in [(70, 150), (150, 70)] {
            let w = decaying(m, n, 8);
            let full = exact(&w, m, n).unwrap();
            // ranks whose error is large (the factored identity) and near zero (the dense fallback)
            for r in [1, 8, 30, 70] {
                let mut t = full.clone().truncate(r);
                t.canonicalize_signs();
                for quant in [None, Some(QuantScheme::PerRow), Some(QuantScheme::PerTensor)] {
                    let lw = factors(&t, quant);
                    let back: Vec<f64> = lw.to_dense_f32().unwrap().iter().map(|&x| x as f64).collect();
                    let (got, want) = (stored_error(&w, &lw).unwrap(), rel_fro_error(&w, &back));
                    assert!((got - want).abs() <= 1e-5 * want.max(1e-3), "{m}x{n} r={r} {quant:?}: {got} vs {want}");
                }
            }
        }
        let w = random(9, 7, 3);
        assert_eq!(stored_error(&w, &factors(&exact(&w, 9, 7).unwrap().truncate(0), None)).unwrap(), 1.0);
        assert!(stored_error(&w[1..], &factors(&exact(&w, 9, 7).unwrap(), None)).is_err());
        assert_eq!(sum_squares(&[3.0, 4.0]), 25.0);
    }

    #[test]
    fn non_finite_input_is_an_error() {
        let mut w = random(4, 4, 1);
        w[5] = f32::NAN;
        assert!(exact(&w, 4, 4).unwrap_err().to_string().contains("non-finite"));
        assert!(randomized(&w, 4, 4, 2, 1, 1, 0).is_err());
        let mut big = random(40, 60, 2);
        big[2000] = f32::NEG_INFINITY;
        let e = randomized(&big, 40, 60, 4, 4, 1, 0).unwrap_err().to_string();
        assert!(e.contains("-inf") && e.contains("index 2000"), "{e}");
    }
}
