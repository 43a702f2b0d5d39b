//! The randomized truncated SVD by block Krylov iteration, started from a CountSketch.

use crate::compression::svd::exact::{check_finite, exact, Svd};
use crate::model::generate::Rng;
use crate::{Error, Result};
use faer::linalg::matmul::matmul;
use faer::linalg::matmul::triangular::BlockStructure;
use faer::{Accum, Mat, Par};

/// Krylov iterations of the randomized SVD as the pipeline runs it: the basis is built in `POWER_ITERS + 1` blocks.
pub const POWER_ITERS: usize = 3;

/// Basis columns beyond the rank of the randomized SVD as the pipeline runs it. With [`POWER_ITERS`], the cheapest
/// setting measured within 2% of the exact truncation's error at 2048 × 8192 and 2048 × 2048, rank 128, on `slc
/// synth`'s spectra (BENCHMARKS.md).
pub const OVERSAMPLE: usize = 80;

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
