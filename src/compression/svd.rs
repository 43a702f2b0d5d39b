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

/// Below this smaller side, `Auto` uses the exact SVD.
pub const AUTO_EXACT_DIM: usize = 512;

fn check_finite(w: &[f32], what: &str) -> Result<()> {
    if let Some(i) = w.iter().position(|x| !x.is_finite()) {
        return Err(Error::Numeric(format!("{what}: the matrix has a non-finite value ({}) at index {i}", w[i])));
    }
    Ok(())
}

fn to_mat(w: &[f32], m: usize, n: usize) -> Mat<f64> {
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

/// Orthonormal basis of the columns of `y` (thin Q of a QR factorization).
fn orthonormalize(y: &Mat<f64>) -> Mat<f64> {
    y.qr().compute_thin_Q()
}

/// Randomized truncated SVD of rank `r` (Halko, Martinsson & Tropp 2011, algorithms 4.4 and 5.1):
/// `oversample` extra sketch columns, `power_iters` subspace iterations, Gaussian test matrix from `seed`.
pub fn randomized(
    w: &[f32],
    m: usize,
    n: usize,
    r: usize,
    oversample: usize,
    power_iters: usize,
    seed: u64,
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
    let a = to_mat(w, m, n);
    let mut rng = Rng::new(seed);
    let omega = Mat::from_fn(n, l, |_, _| rng.normal());
    let mut q = orthonormalize(&(&a * &omega));
    for _ in 0..power_iters {
        let z = orthonormalize(&(a.transpose() * &q));
        q = orthonormalize(&(&a * &z));
    }
    let b = q.transpose() * &a; // l × n
    let svd = b.thin_svd().map_err(|e| Error::Numeric(format!("SVD did not converge ({e:?})")))?;
    let u = &q * svd.U(); // m × l
    let s: Vec<f64> = svd.S().column_vector().iter().copied().collect();
    Ok(Svd { m, n, u: rows_of(u.as_ref()), s, vh: rows_of_t(svd.V()) }.truncate(r))
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
        Ok((randomized(w, m, n, r, 10, 2, seed)?, None))
    }
}

/// Activation-aware ("whitened") truncated SVD of rank `r`: with `G` the mean `x xᵀ` of the layer's inputs
/// (n × n) and `L` its Cholesky factor (`G + λI = L Lᵀ`, λ = `damp` · mean diagonal, which keeps L invertible when
/// some inputs never vary), the best rank-r approximation of `W L` is `U Σ Vᵀ`, and `W_r = U Σ (Vᵀ L⁻¹)` minimises
/// `‖(W − W_r) X‖F` over the calibration inputs X. Returned as an [`Svd`] whose `vh` is `Vᵀ L⁻¹` (not orthonormal).
pub fn whitened(w: &[f32], m: usize, n: usize, gram: &[f64], r: usize, damp: f64) -> Result<Svd> {
    check_finite(w, "whitened SVD")?;
    if gram.len() != n * n || gram.iter().any(|x| !x.is_finite()) {
        return Err(Error::Numeric(format!("whitened SVD: the calibration statistics do not fit a {m}×{n} weight")));
    }
    let mean_diag = (0..n).map(|i| gram[i * n + i]).sum::<f64>() / n.max(1) as f64;
    let lambda = damp * mean_diag.max(f64::MIN_POSITIVE);
    let g = Mat::from_fn(n, n, |i, j| gram[i * n + j] + if i == j { lambda } else { 0.0 });
    let llt = g.llt(faer::Side::Lower).map_err(|e| {
        Error::Numeric(format!("whitened SVD: the calibration statistics are not positive definite ({e:?})"))
    })?;
    let l = llt.L();
    let a = to_mat(w, m, n);
    let al = &a * l;
    let svd = al.thin_svd().map_err(|e| Error::Numeric(format!("SVD did not converge ({e:?})")))?;
    let r = r.min(m.min(n));
    let s: Vec<f64> = svd.S().column_vector().iter().copied().take(r).collect();
    let u = svd.U().subcols(0, r).to_owned();
    // Vh = Vᵀ L⁻¹, i.e. Vhᵀ = L⁻ᵀ V: solve Lᵀ X = V
    let mut x = svd.V().subcols(0, r).to_owned();
    faer::linalg::triangular_solve::solve_upper_triangular_in_place(l.transpose(), x.as_mut(), faer::Par::Seq);
    Ok(Svd { m, n, u: rows_of(u.as_ref()), s, vh: rows_of_t(x.as_ref()) })
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
                let rs = randomized(&w, m, n, r, 10, 2, 42).unwrap();
                let err = rel_fro_error(&w, &rs.reconstruct());
                let best = tail_error(&s, r);
                assert!(err <= best * 1.02 + 1e-12, "{m}x{n} r={r}: {err} vs optimum {best}");
                for (a, b) in rs.s.iter().zip(&s) {
                    assert!((a - b).abs() <= 1e-6 * s[0], "{a} vs {b}");
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
    fn non_finite_input_is_an_error() {
        let mut w = random(4, 4, 1);
        w[5] = f32::NAN;
        assert!(exact(&w, 4, 4).unwrap_err().to_string().contains("non-finite"));
        assert!(randomized(&w, 4, 4, 2, 1, 1, 0).is_err());
    }
}
