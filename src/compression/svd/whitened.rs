//! Activation-aware ("whitened") truncated SVD: the truncation that minimises the error on the calibration inputs.

use crate::compression::svd::exact::{check_finite, rows_of, rows_of_t, to_mat, Svd};
use crate::{Error, Result};
use faer::Mat;

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
    let d = Whitened::new(a, gram, damp)?;
    Ok((d.truncate(r), d.all))
}

/// λ = `damp` · the mean diagonal of the `n × n` Gram matrix `gram` (at least the smallest positive float's share):
/// what activation-aware SVD and GPTQ add to the statistics' diagonal.
pub fn damping(gram: &[f64], n: usize, damp: f64) -> f64 {
    let mean_diag = (0..n).map(|i| gram[i * n + i]).sum::<f64>() / n.max(1) as f64;
    damp * mean_diag.max(f64::MIN_POSITIVE)
}

/// The whitened decomposition of one matrix in full (`A L = U Σ Vᵀ`, `G + λI = L Lᵀ`), truncated at any rank
/// afterwards: the allocation check factors a matrix at two ranks from one decomposition, each truncation the same
/// to the bit as [`whitened_f64`] at that rank.
///
/// Made as the eigendecomposition of the smaller of `A L (A L)ᵀ` and `(A L)ᵀ A L`, not as an SVD of `A L`: on the
/// output side (m ≤ n) `A L (A L)ᵀ = A (G + λI) Aᵀ` needs neither `L` nor a triangular solve (`Vᵀ L⁻¹ = Σ⁻¹ Uᵀ A`),
/// and a symmetric eigendecomposition of the small side costs a fraction of the SVD of the whole (measured natively:
/// 768×3072 2.3×, 3072×768 2.6×, 768×768 1.6× faster, all in f64). Squaring `A L` costs digits only in singular
/// values below ~10⁻⁸ of the largest, far below any rank a compression keeps; the output side's f32 product (below)
/// moves σ² by ~10⁻⁷ of σ₁².
pub struct Whitened {
    m: usize,
    n: usize,
    side: Side,
    /// Every singular value of `A L`, descending.
    pub all: Vec<f64>,
    /// λ, the damping added to the statistics' diagonal.
    pub lambda: f64,
}

enum Side {
    /// m ≤ n: `A`, `G` (undamped, in f32), `A G`, and `U` (m × m, columns by descending σ).
    Out { a: Mat<f64>, g: Mat<f32>, ag: Mat<f64>, u: Mat<f64> },
    /// m > n: `L`, `A L`, and `V` (n × n, columns by descending σ).
    In { l: Mat<f64>, al: Mat<f64>, v: Mat<f64> },
}

/// The eigenvectors of the symmetric `c` by descending eigenvalue, and the square roots of those eigenvalues
/// (negative ones from rounding as 0).
fn descending_eigen(c: &Mat<f64>) -> Result<(Mat<f64>, Vec<f64>)> {
    let e = c
        .self_adjoint_eigen(faer::Side::Lower)
        .map_err(|e| Error::Numeric(format!("the eigendecomposition did not converge ({e:?})")))?;
    let vals: Vec<f64> = e.S().column_vector().iter().copied().collect();
    let mut order: Vec<usize> = (0..vals.len()).collect();
    order.sort_by(|&i, &j| vals[j].total_cmp(&vals[i]));
    let vecs = e.U();
    let sorted = Mat::from_fn(vecs.nrows(), order.len(), |i, k| vecs[(i, order[k])]);
    Ok((sorted, order.iter().map(|&i| vals[i].max(0.0).sqrt()).collect()))
}

impl Whitened {
    pub fn new(a: &Mat<f64>, gram: &[f64], damp: f64) -> Result<Self> {
        let (m, n) = (a.nrows(), a.ncols());
        if gram.len() != n * n || gram.iter().any(|x| !x.is_finite()) {
            return Err(Error::Numeric(format!(
                "whitened SVD: the calibration statistics do not fit a {m}×{n} weight"
            )));
        }
        if a.col_iter().any(|c| c.iter().any(|x| !x.is_finite())) {
            return Err(Error::Numeric("whitened SVD: the matrix has non-finite values".into()));
        }
        let lambda = damping(gram, n, damp);
        let not_pd = || Error::Numeric("whitened SVD: the calibration statistics are not positive definite".into());
        let (side, all) = if m <= n {
            // G + λI must be positive definite, as the Cholesky factor on the input side requires
            if gram.iter().step_by(n + 1).any(|&d| d + lambda <= 0.0) {
                return Err(not_pd());
            }
            // A G, the one m × n × n product, in f32 (the weight is f32 as stored; G's entries lose 10⁻⁷ of
            // themselves): four lanes to f64's two in wasm's SIMD. Its error, ~10⁻⁷ of σ₁² in A G Aᵀ, moves a
            // singular value σ by ~10⁻⁷ (σ₁/σ)²: 2·10⁻⁵ where σ is a twentieth of σ₁, a hundredth of what INT8 storage
            // of the factors changes.
            let g = Mat::<f32>::from_fn(n, n, |i, j| gram[i * n + j] as f32);
            let agf = Mat::<f32>::from_fn(m, n, |i, j| a[(i, j)] as f32) * &g;
            let ag = Mat::from_fn(m, n, |i, j| agf[(i, j)] as f64);
            // A (G + λI) Aᵀ
            let c = Mat::from_fn(m, n, |i, j| ag[(i, j)] + lambda * a[(i, j)]) * a.transpose();
            let (u, all) = descending_eigen(&c)?;
            (Side::Out { a: a.to_owned(), g, ag, u }, all)
        } else {
            let gd = Mat::from_fn(n, n, |i, j| gram[i * n + j] + if i == j { lambda } else { 0.0 });
            let llt = gd.llt(faer::Side::Lower).map_err(|e| {
                Error::Numeric(format!("whitened SVD: the calibration statistics are not positive definite ({e:?})"))
            })?;
            let l = llt.L().to_owned();
            let al = a * &l;
            let (v, all) = descending_eigen(&(al.transpose() * &al))?;
            (Side::In { l, al, v }, all)
        };
        Ok(Self { m, n, side, all, lambda })
    }

    /// The rank-`r` truncation as an [`Svd`] whose `vh` is `Vᵀ L⁻¹`.
    pub fn truncate(&self, r: usize) -> Svd {
        let (m, n) = (self.m, self.n);
        let r = r.min(m.min(n));
        let s: Vec<f64> = self.all.iter().copied().take(r).collect();
        let inv = |k: usize| if s[k] > 0.0 { 1.0 / s[k] } else { 0.0 };
        match &self.side {
            Side::Out { a, u, .. } => {
                let u = u.subcols(0, r).to_owned();
                // Vᵀ L⁻¹ = Σ⁻¹ Uᵀ A
                let uta = u.transpose() * a;
                let vh = Mat::from_fn(r, n, |k, j| uta[(k, j)] * inv(k));
                Svd { m, n, u: rows_of(u.as_ref()), s, vh: rows_of(vh.as_ref()) }
            }
            Side::In { l, al, v } => {
                // U = A L V Σ⁻¹
                let v = v.subcols(0, r).to_owned();
                let alv = al * &v;
                let u = Mat::from_fn(m, r, |i, k| alv[(i, k)] * inv(k));
                // Vh = Vᵀ L⁻¹, i.e. Vhᵀ = L⁻ᵀ V: solve Lᵀ X = V
                let mut x = v;
                faer::linalg::triangular_solve::solve_upper_triangular_in_place(
                    l.transpose(),
                    x.as_mut(),
                    faer::Par::Seq,
                );
                Svd { m, n, u: rows_of(u.as_ref()), s, vh: rows_of_t(x.as_ref()) }
            }
        }
    }

    /// sqrt(tr(ΔW G ΔWᵀ) / tr(W G Wᵀ)) for `ΔW = W − P V` (`w` the weight, the stored factors `P = U diag(S)` m × r
    /// and `V` r × n as f64 row-major): the relative error on the calibration activations ([`rel_activation_error`]),
    /// from this decomposition without an m × n × n product. On the output side, with `A G` kept:
    /// `tr(D G Dᵀ) = tr(A G Aᵀ) − 2⟨P, (A G) Vᵀ⟩ + ⟨PᵀP, V G Vᵀ⟩` and `tr(A G Aᵀ) = Σ σ² − λ‖A‖²`; on the input
    /// side, with `G + λI = L Lᵀ`: `tr(D G Dᵀ) = ‖D L‖² − λ‖D‖²` with `D L = A L − P (V L)`.
    pub fn activation_error(&self, w: &[f32], p: &[f64], v: &[f64], r: usize) -> f64 {
        let (m, n) = (self.m, self.n);
        let (pm, vm) = (faer::MatRef::from_row_major_slice(p, m, r), faer::MatRef::from_row_major_slice(v, r, n));
        let w2: f64 = w.iter().map(|&x| x as f64 * x as f64).sum();
        let den = self.all.iter().map(|s| s * s).sum::<f64>() - self.lambda * w2;
        let num = match &self.side {
            Side::Out { g, ag, .. } => {
                let agv = ag * vm.transpose();
                let cross: f64 = (0..m).map(|i| (0..r).map(|k| pm[(i, k)] * agv[(i, k)]).sum::<f64>()).sum();
                // V G Vᵀ, the r × n × n product, in f32 as A G is
                let vf = Mat::<f32>::from_fn(r, n, |k, j| vm[(k, j)] as f32);
                let vgf = (&vf * g) * vf.transpose();
                let vgv = Mat::from_fn(r, r, |i, k| vgf[(i, k)] as f64);
                let ptp = pm.transpose() * pm;
                let quad: f64 = (0..r).map(|i| (0..r).map(|k| ptp[(i, k)] * vgv[(i, k)]).sum::<f64>()).sum();
                den - 2.0 * cross + quad
            }
            Side::In { l, al, .. } => {
                let wl = pm * (vm * l);
                let pv = pm * vm;
                let (mut dl2, mut d2) = (0f64, 0f64);
                for i in 0..m {
                    for j in 0..n {
                        let e = al[(i, j)] - wl[(i, j)];
                        dl2 += e * e;
                        let d = w[i * n + j] as f64 - pv[(i, j)];
                        d2 += d * d;
                    }
                }
                dl2 - self.lambda * d2
            }
        };
        if den <= 0.0 {
            0.0
        } else {
            (num.max(0.0) / den).sqrt()
        }
    }
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
