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
pub struct Whitened {
    m: usize,
    n: usize,
    /// `L`, lower triangular.
    l: Mat<f64>,
    /// `A L`.
    al: Mat<f64>,
    svd: faer::linalg::solvers::Svd<f64>,
    /// Every singular value of `A L`, descending.
    pub all: Vec<f64>,
    /// λ, the damping added to the statistics' diagonal.
    pub lambda: f64,
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
        let g = Mat::from_fn(n, n, |i, j| gram[i * n + j] + if i == j { lambda } else { 0.0 });
        let llt = g.llt(faer::Side::Lower).map_err(|e| {
            Error::Numeric(format!("whitened SVD: the calibration statistics are not positive definite ({e:?})"))
        })?;
        let l = llt.L().to_owned();
        let al = a * &l;
        let svd = al.thin_svd().map_err(|e| Error::Numeric(format!("SVD did not converge ({e:?})")))?;
        let all: Vec<f64> = svd.S().column_vector().iter().copied().collect();
        Ok(Self { m, n, l, al, svd, all, lambda })
    }

    /// The rank-`r` truncation as an [`Svd`] whose `vh` is `Vᵀ L⁻¹`.
    pub fn truncate(&self, r: usize) -> Svd {
        let (m, n) = (self.m, self.n);
        let r = r.min(m.min(n));
        let s: Vec<f64> = self.all.iter().copied().take(r).collect();
        let u = self.svd.U().subcols(0, r).to_owned();
        // Vh = Vᵀ L⁻¹, i.e. Vhᵀ = L⁻ᵀ V: solve Lᵀ X = V
        let mut x = self.svd.V().subcols(0, r).to_owned();
        faer::linalg::triangular_solve::solve_upper_triangular_in_place(self.l.transpose(), x.as_mut(), faer::Par::Seq);
        Svd { m, n, u: rows_of(u.as_ref()), s, vh: rows_of_t(x.as_ref()) }
    }

    /// sqrt(tr(ΔW G ΔWᵀ) / tr(W G Wᵀ)) for `ΔW = W − P V` (`w` the weight, the stored factors `P = U diag(S)` m × r
    /// and `V` r × n as f64 row-major): the relative error on the calibration activations ([`rel_activation_error`]),
    /// from this decomposition's `A L` without an m × n × n product. With `G + λI = L Lᵀ`:
    /// `tr(D G Dᵀ) = ‖D L‖² − λ‖D‖²` with `D L = A L − P (V L)`, and `tr(W G Wᵀ) = Σ σ² − λ‖W‖²`.
    pub fn activation_error(&self, w: &[f32], p: &[f64], v: &[f64], r: usize) -> f64 {
        let (m, n) = (self.m, self.n);
        let (pm, vm) = (faer::MatRef::from_row_major_slice(p, m, r), faer::MatRef::from_row_major_slice(v, r, n));
        let wl = pm * (vm * &self.l);
        let pv = pm * vm;
        let (mut dl2, mut d2, mut w2) = (0f64, 0f64, 0f64);
        for i in 0..m {
            for j in 0..n {
                let e = self.al[(i, j)] - wl[(i, j)];
                dl2 += e * e;
                let x = w[i * n + j] as f64;
                let d = x - pv[(i, j)];
                d2 += d * d;
                w2 += x * x;
            }
        }
        let den = self.all.iter().map(|s| s * s).sum::<f64>() - self.lambda * w2;
        let num = (dl2 - self.lambda * d2).max(0.0);
        if den <= 0.0 {
            0.0
        } else {
            (num / den).sqrt()
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
