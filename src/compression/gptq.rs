//! GPTQ (Frantar et al., 2022): group-wise codes chosen column by column, each column's rounding error spread over
//! the columns not yet quantized through the inverse Hessian of the layer's inputs, so that the layer's outputs on the
//! calibration text move least. With `G` the calibration's mean input Gram matrix, `H = G + λI` (λ = `damp` · mean
//! diagonal, as the whitened SVD damps) and `U` the upper Cholesky factor of `H⁻¹`: column `i`'s codes are rounded,
//! its error `e = (w_i − q_i) / U_ii` taken off the later columns as `w_j −= e · U_ij`. Updates are applied within a
//! block of columns at once and to the columns after it as one matrix product (the reference implementation's lazy
//! batches); a group's scale is fixed when the first of its columns is reached, from the columns as updated so far.

use crate::compression::quant::{group_code, group_scale};
use crate::model::grouped::GMat;
use crate::{Error, Result};
use faer::linalg::solvers::DenseSolveCore;
use faer::Mat;

/// `tr(ΔW (G + λI) ΔWᵀ)` for `ΔW = W − Q` (`w` row-major `m × n`, `q` its codes, `gram` the inputs' mean Gram
/// matrix, λ as [`gptq`] and the whitened SVD damp it): the error on the damped calibration statistics, in the units
/// of the whitened spectrum's tail.
pub fn code_error(w: &[f32], q: &GMat, gram: &[f64], damp: f64) -> f64 {
    let (m, n) = (q.rows, q.cols);
    let mut deq = vec![0f32; m * n];
    q.rows_f32(0, m, &mut deq);
    let lambda = crate::compression::svd::damping(gram, n, damp);
    let d = Mat::from_fn(m, n, |i, j| w[i * n + j] as f64 - deq[i * n + j] as f64);
    let g = faer::MatRef::from_row_major_slice(gram, n, n);
    let dg = &d * g;
    let mut e = 0f64;
    for j in 0..n {
        for i in 0..m {
            e += d[(i, j)] * (dg[(i, j)] + lambda * d[(i, j)]);
        }
    }
    e.max(0.0)
}

/// Columns updated together before the rest of the matrix is (a multiple of the group size, so a group never spans
/// two blocks).
const BLOCK: usize = 128;

/// Group-wise `bits`-bit codes of `w` (row-major `m × n`, a layer's `out × in` weight), GPTQ's error-compensating
/// rounding on the inputs whose mean Gram matrix is `gram` (`n × n`).
pub fn gptq(w: &[f32], m: usize, n: usize, gram: &[f64], bits: u8, group: usize, damp: f64) -> Result<GMat> {
    let u = checked_factor(w, m, n, gram, damp)?;
    Ok(codes_with(w, m, n, &u, bits, group))
}

/// [`gptq`] at each of `widths`, the inverse Hessian's factor computed once: the same codes as one call per width.
pub fn gptq_widths(
    w: &[f32],
    m: usize,
    n: usize,
    gram: &[f64],
    widths: &[u8],
    group: usize,
    damp: f64,
) -> Result<Vec<GMat>> {
    let u = checked_factor(w, m, n, gram, damp)?;
    Ok(widths.iter().map(|&bits| codes_with(w, m, n, &u, bits, group)).collect())
}

/// The inverse Hessian's factor for `w`, once `w` and `gram` are checked to be finite and of its shape.
fn checked_factor(w: &[f32], m: usize, n: usize, gram: &[f64], damp: f64) -> Result<Mat<f64>> {
    if gram.len() != n * n || gram.iter().any(|x| !x.is_finite()) {
        return Err(Error::Numeric(format!("GPTQ: the calibration statistics do not fit a {m}×{n} weight")));
    }
    if w.len() != m * n || w.iter().any(|x| !x.is_finite()) {
        return Err(Error::Numeric("GPTQ: the matrix has non-finite values".into()));
    }
    inverse_hessian_factor(gram, n, damp)
}

/// GPTQ's column-by-column rounding of `w` with `u`, the inverse Hessian's factor ([`inverse_hessian_factor`]).
fn codes_with(w: &[f32], m: usize, n: usize, u: &Mat<f64>, bits: u8, group: usize) -> GMat {
    let mut wm = Mat::from_fn(m, n, |i, j| w[i * n + j] as f64);
    let per_row = n.div_ceil(group);
    let zero = (1u32 << (bits - 1)) as f64;
    let mut codes = vec![0u8; m * n];
    let mut scales = vec![0u16; m * per_row];
    let block = (BLOCK / group).max(1) * group;
    let mut err = Mat::<f64>::zeros(m, block);
    let mut d = vec![0f64; m];
    for i1 in (0..n).step_by(block) {
        let i2 = (i1 + block).min(n);
        for i in i1..i2 {
            if i % group == 0 {
                let c1 = (i + group).min(n);
                for (r, d) in d.iter_mut().enumerate() {
                    let s = group_scale((i..c1).map(|c| wm[(r, c)]), bits);
                    scales[r * per_row + i / group] = s.to_bits();
                    *d = s.to_f64();
                }
            }
            let uii = u[(i, i)];
            for (r, &d) in d.iter().enumerate() {
                let v = wm[(r, i)];
                let q = group_code(v, d, bits);
                codes[r * n + i] = q;
                err[(r, i - i1)] = (v - (q as f64 - zero) * d) / uii;
            }
            for j in i + 1..i2 {
                let uij = u[(i, j)];
                if uij != 0.0 {
                    for r in 0..m {
                        wm[(r, j)] -= err[(r, i - i1)] * uij;
                    }
                }
            }
        }
        if i2 < n {
            let update = err.subcols(0, i2 - i1) * u.submatrix(i1, i2, i2 - i1, n - i2);
            for j in 0..n - i2 {
                for r in 0..m {
                    wm[(r, i2 + j)] -= update[(r, j)];
                }
            }
        }
    }
    GMat { rows: m, cols: n, bits, group, codes: GMat::pack(&codes, bits), scales }
}

/// `U`, upper triangular with `H⁻¹ = Uᵀ U`, for `H = G + λI`; inputs that never vary (a zero diagonal) get 1 there, so
/// their columns take no part in the updates.
fn inverse_hessian_factor(gram: &[f64], n: usize, damp: f64) -> Result<Mat<f64>> {
    let lambda = crate::compression::svd::damping(gram, n, damp);
    let h = Mat::from_fn(n, n, |i, j| {
        let g = gram[i * n + j];
        match (i == j, g == 0.0) {
            (true, true) => 1.0,
            (true, false) => g + lambda,
            _ => g,
        }
    });
    let not_pd = |what: &str| Error::Numeric(format!("GPTQ: {what} is not positive definite"));
    // each n × n step freed as soon as the next is made (1.3B's c_proj: 512 MiB each)
    let llt = h.llt(faer::Side::Lower).map_err(|_| not_pd("the calibration statistics' Hessian"))?;
    drop(h);
    let inv = llt.inverse();
    drop(llt);
    let inv_llt = inv.llt(faer::Side::Lower).map_err(|_| not_pd("the inverse Hessian"))?;
    drop(inv);
    Ok(inv_llt.L().transpose().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compression::quant::grouped;
    use crate::compression::svd::rel_activation_error;
    use crate::model::generate::Rng;

    /// Inputs with correlated, unequal features (as a layer's are): GPTQ's output error on them is well below
    /// round-to-nearest's at the same codes and scales' size, and its codes are valid.
    #[test]
    fn gptq_beats_round_to_nearest_on_the_inputs_it_saw() {
        let mut rng = Rng::new(11);
        let (m, n, tokens) = (48, 96, 400);
        let w: Vec<f32> = (0..m * n).map(|_| rng.normal() as f32 * 0.1).collect();
        // x = A z with a random mixing A and a few loud features
        let a: Vec<f64> =
            (0..n * n).map(|i| rng.normal() * if i % n < 4 { 4.0 } else { 1.0 } / (n as f64).sqrt()).collect();
        let mut gram = vec![0f64; n * n];
        for _ in 0..tokens {
            let z: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
            let x: Vec<f64> = (0..n).map(|i| (0..n).map(|k| a[i * n + k] * z[k]).sum()).collect();
            for i in 0..n {
                for j in 0..n {
                    gram[i * n + j] += x[i] * x[j] / tokens as f64;
                }
            }
        }
        for bits in [2u8, 3, 4] {
            let q = gptq(&w, m, n, &gram, bits, 32, 0.01).unwrap();
            q.validate("w").unwrap();
            let r = grouped(&w, m, n, bits, 32);
            let err = |g: &GMat| {
                let mut y = vec![0f32; m * n];
                g.rows_f32(0, m, &mut y);
                let y: Vec<f64> = y.iter().map(|&v| v as f64).collect();
                rel_activation_error(&w, &y, m, n, &gram)
            };
            let (e_gptq, e_rtn) = (err(&q), err(&r));
            assert!(e_gptq < 0.8 * e_rtn, "{bits} bits: GPTQ {e_gptq:.4} vs round-to-nearest {e_rtn:.4}");
        }
    }

    #[test]
    fn statistics_of_another_shape_are_refused() {
        let e = gptq(&[0.0; 6], 2, 3, &[1.0; 4], 4, 32, 0.01).unwrap_err();
        assert!(e.to_string().contains("do not fit a 2×3 weight"), "{e}");
    }
}
