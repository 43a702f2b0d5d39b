//! Fused kernels for products of a few activation rows with a compact matrix, reading INT8 codes or 16-bit floats
//! directly instead of expanding the matrix: decoding one token is a matrix–vector product bound by memory
//! bandwidth, so reading 1 or 2 bytes per weight instead of 4 is the speed-up. Loops keep 16 independent
//! accumulators so the compiler vectorizes them (simd128 in wasm, SSE/AVX natively) without reassociating sums.

use crate::quant::{bf16_to_f32, f16_to_f32_finite, Factor};

const LANES: usize = 16;
/// Elements of a weight row converted at a time into a stack buffer.
const CHUNK: usize = 256;

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let full = a.len() / LANES * LANES;
    for (ca, cb) in a[..full].chunks_exact(LANES).zip(b[..full].chunks_exact(LANES)) {
        for l in 0..LANES {
            acc[l] += ca[l] * cb[l];
        }
    }
    let mut s = 0f32;
    for v in acc {
        s += v;
    }
    for i in full..a.len() {
        s += a[i] * b[i];
    }
    s
}

/// `out[i, r] = Σ_k x[i, k] · F[r, k]` for `n` rows of `x` (row-major `n × cols`); `out` is `n × rows`.
pub fn gemv_t(x: &[f32], n: usize, f: &Factor, out: &mut [f32]) {
    let (rows, cols) = (f.rows(), f.cols());
    debug_assert_eq!(x.len(), n * cols);
    debug_assert_eq!(out.len(), n * rows);
    let mut buf = [0f32; CHUNK];
    for r in 0..rows {
        let mut sums = [0f32; crate::linear::GEMV_MAX_ROWS];
        let mut k0 = 0;
        while k0 < cols {
            let k1 = (k0 + CHUNK).min(cols);
            let w = &mut buf[..k1 - k0];
            match f {
                Factor::F32 { data, .. } => w.copy_from_slice(&data[r * cols + k0..r * cols + k1]),
                Factor::Half { bits, bf16, .. } => {
                    let src = &bits[r * cols + k0..r * cols + k1];
                    if *bf16 {
                        for (d, &s) in w.iter_mut().zip(src) {
                            *d = bf16_to_f32(s);
                        }
                    } else {
                        for (d, &s) in w.iter_mut().zip(src) {
                            *d = f16_to_f32_finite(s);
                        }
                    }
                }
                Factor::Int8(q) => {
                    let src = &q.codes[r * cols + k0..r * cols + k1];
                    // raw codes; the scale (and zero point) are applied to the sum below
                    for (d, &s) in w.iter_mut().zip(src) {
                        *d = s as f32;
                    }
                }
            }
            for (i, s) in sums.iter_mut().enumerate().take(n) {
                *s += dot(&x[i * cols + k0..i * cols + k1], w);
            }
            k0 = k1;
        }
        for i in 0..n {
            out[i * rows + r] = match f {
                Factor::Int8(q) => match q.zero_points.first() {
                    None => sums[i] * q.scales[r],
                    Some(&zp) => {
                        let xs: f32 = x[i * cols..(i + 1) * cols].iter().sum();
                        (sums[i] - zp as f32 * xs) * q.scales[0]
                    }
                },
                _ => sums[i],
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::QuantScheme;

    #[test]
    fn fused_products_match_expanded_ones() {
        let (rows, cols) = (7, 300);
        let w: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919 % 211) as f32 / 211.0) - 0.4).collect();
        let x: Vec<f32> = (0..3 * cols).map(|i| (i as f32 * 0.37).sin()).collect();
        let halves: Vec<u16> = w.iter().map(|&v| half::f16::from_f32(v).to_bits()).collect();
        let factors = [
            Factor::new(w.clone(), rows, cols, None),
            Factor::new(w.clone(), rows, cols, Some(QuantScheme::PerRow)),
            Factor::new(w.clone(), rows, cols, Some(QuantScheme::PerTensor)),
            Factor::Half { rows, cols, bits: halves, bf16: false },
        ];
        for f in &factors {
            let dense = f.to_f32();
            let mut out = vec![0f32; 3 * rows];
            gemv_t(&x, 3, f, &mut out);
            for i in 0..3 {
                for r in 0..rows {
                    let want: f32 = (0..cols).map(|k| x[i * cols + k] * dense[r * cols + k]).sum();
                    assert!((out[i * rows + r] - want).abs() <= 1e-3 * want.abs().max(1.0), "{i},{r}: {} vs {want}", out[i * rows + r]);
                }
            }
        }
    }
}
