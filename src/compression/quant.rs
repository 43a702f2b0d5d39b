//! Quantizers: the INT8 codes of a matrix under each scheme of [`crate::model::storage`] — per-row symmetric
//! (`scale_i = max_j |x_ij| / 127`, codes in −127..=127) and the origin's per-tensor asymmetric (`scale = (max −
//! min) / 255`, a zero point; f64 arithmetic with numpy's round-half-to-even, so the codes match the Python reference)
//! — and group-wise codes of 2 to 8 bits ([`crate::model::grouped`]) by round-to-nearest ([`grouped`]; the
//! error-compensating variant is [`crate::compression::gptq`]).

use crate::model::grouped::GMat;
use crate::model::storage::{Factor, QMat, QuantScheme};

/// numpy's `round`: half to even.
fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 {
        2.0 * (x / 2.0).round()
    } else {
        r
    }
}

/// Per-row symmetric INT8 of a row-major `rows × cols` matrix.
pub fn per_row(x: &[f32], rows: usize, cols: usize) -> QMat {
    debug_assert_eq!(x.len(), rows * cols);
    let mut codes = vec![0i8; rows * cols];
    let mut scales = vec![0f32; rows];
    for r in 0..rows {
        let row = &x[r * cols..(r + 1) * cols];
        let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = if amax > 0.0 { amax / 127.0 } else { 1.0 };
        scales[r] = scale;
        let inv = 1.0 / scale;
        for (c, v) in codes[r * cols..(r + 1) * cols].iter_mut().zip(row) {
            *c = (v * inv).round().clamp(-127.0, 127.0) as i8;
        }
    }
    QMat { rows, cols, codes, scales, zero_points: Vec::new() }
}

/// Per-tensor asymmetric INT8 (the origin's scheme), computed in f64 like the Python reference.
pub fn per_tensor(x: &[f64], rows: usize, cols: usize) -> QMat {
    debug_assert_eq!(x.len(), rows * cols);
    let (mn, mx) = x.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    let (mn, mx) = if x.is_empty() { (0.0, 0.0) } else { (mn, mx) };
    let mut scale = (mx - mn) / 255.0;
    if scale == 0.0 || !scale.is_finite() {
        // A constant tensor: any scale represents it exactly when zp absorbs the value.
        scale = if mn != 0.0 { mn.abs() / 127.0 } else { 1.0 };
    }
    let zp = (-128.0 - round_half_even(mn / scale)) as i32;
    let codes = x.iter().map(|&v| (round_half_even(v / scale) + zp as f64).clamp(-128.0, 127.0) as i8).collect();
    QMat { rows, cols, codes, scales: vec![scale as f32], zero_points: vec![zp] }
}

/// A group's scale, as stored (f16): its value of largest magnitude `m` lands on the widest level, `m = −2^(bits−1) ·
/// scale` (so the scale carries the sign of `m`), as llama.cpp's `Q4_0` does.
pub fn group_scale(values: impl Iterator<Item = f64>, bits: u8) -> half::f16 {
    let m = values.fold(0f64, |m, v| if v.abs() > m.abs() { v } else { m });
    half::f16::from_f64(m / -((1u32 << (bits - 1)) as f64))
}

/// The code of `v` under a group's scale `d` (as stored): `round(v / d) + 2^(bits−1)`, clamped to the levels.
#[inline]
pub fn group_code(v: f64, d: f64, bits: u8) -> u8 {
    let zero = (1u32 << (bits - 1)) as f64;
    if d == 0.0 {
        return zero as u8;
    }
    ((v / d).round() + zero).clamp(0.0, ((1u32 << bits) - 1) as f64) as u8
}

/// Group-wise `bits`-bit codes of a row-major `rows × cols` matrix, one scale per `group` values of a row,
/// round-to-nearest.
pub fn grouped(x: &[f32], rows: usize, cols: usize, bits: u8, group: usize) -> GMat {
    debug_assert_eq!(x.len(), rows * cols);
    let per_row = cols.div_ceil(group);
    let mut codes = vec![0u8; rows * cols];
    let mut scales = vec![0u16; rows * per_row];
    for r in 0..rows {
        for k in 0..per_row {
            let (c0, c1) = (r * cols + k * group, r * cols + ((k + 1) * group).min(cols));
            let d = group_scale(x[c0..c1].iter().map(|&v| v as f64), bits);
            scales[r * per_row + k] = d.to_bits();
            for (q, &v) in codes[c0..c1].iter_mut().zip(&x[c0..c1]) {
                *q = group_code(v as f64, d.to_f64(), bits);
            }
        }
    }
    GMat { rows, cols, bits, group, codes: GMat::pack(&codes, bits), scales }
}

/// Quantize an f32 matrix (`None` keeps f32).
pub fn quantize(data: Vec<f32>, rows: usize, cols: usize, quant: Option<QuantScheme>) -> Factor {
    match quant {
        None => Factor::F32 { rows, cols, data },
        Some(QuantScheme::PerRow) => Factor::Int8(per_row(&data, rows, cols)),
        Some(QuantScheme::PerTensor) => {
            let d: Vec<f64> = data.iter().map(|&v| v as f64).collect();
            Factor::Int8(per_tensor(&d, rows, cols))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_row_roundtrip_error_is_half_a_step() {
        let x: Vec<f32> = (0..60).map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.1 * (1 + i / 20) as f32).collect();
        let q = per_row(&x, 3, 20);
        let mut y = vec![0f32; 60];
        q.rows_f32(0, 3, &mut y);
        for r in 0..3 {
            for c in 0..20 {
                let i = r * 20 + c;
                assert!((x[i] - y[i]).abs() <= q.scales[r] * 0.5 + 1e-6, "{} vs {}", x[i], y[i]);
            }
        }
        let mut mid = vec![0f32; 20];
        q.rows_f32(1, 2, &mut mid);
        assert_eq!(&mid[..], &y[20..40]);
    }

    #[test]
    fn per_tensor_matches_numpy_rules() {
        // min −1, max 1.55 → scale 0.01, zp = −128 − round(−100) = −28
        let x = vec![-1.0, 0.0, 0.005, 0.015, 1.55];
        let q = per_tensor(&x, 1, 5);
        assert!((q.scales[0] as f64 - 0.01).abs() < 1e-9);
        assert_eq!(q.zero_points, vec![-28]);
        // 0.005/0.01 = 0.5 → 0 (half to even), 0.015/0.01 = 1.5 → 2 (floating: 1.4999.. or 1.5; both give 1 or 2)
        assert_eq!(q.codes[0], -128);
        assert_eq!(q.codes[1], -28);
        assert_eq!(q.codes[4], 127);
        // all-positive data (like singular values): the zero point leaves the i8 range but codes stay valid
        let s = vec![10.0, 5.0, 1.0];
        let q = per_tensor(&s, 1, 3);
        let mut y = vec![0f32; 3];
        q.rows_f32(0, 1, &mut y);
        for (a, b) in s.iter().zip(&y) {
            assert!((*a as f32 - b).abs() <= q.scales[0] * 0.5 + 1e-6);
        }
        assert!(q.zero_points[0] < -128);
    }

    #[test]
    fn per_row_scale_is_the_row_amax_over_127() {
        let mut rng = crate::model::generate::Rng::new(3);
        let (rows, cols) = (7, 33);
        let x: Vec<f32> = (0..rows * cols).map(|i| (rng.normal() as f32) * (1 + i / cols) as f32).collect();
        let q = per_row(&x, rows, cols);
        assert_eq!(q.scales.len(), rows);
        assert!(q.zero_points.is_empty());
        for r in 0..rows {
            let row = &x[r * cols..(r + 1) * cols];
            let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert_eq!(q.scales[r], amax / 127.0, "row {r}: scale");
            let codes = &q.codes[r * cols..(r + 1) * cols];
            assert_eq!(
                codes.iter().map(|c| c.unsigned_abs()).max(),
                Some(127),
                "row {r}: the largest value maps to ±127"
            );
            for (c, v) in codes.iter().zip(row) {
                assert!((*c as f32 - v / q.scales[r]).abs() <= 0.5 + 1e-4, "row {r}: code {c} for {v}");
            }
        }
    }

    #[test]
    fn group_codes_are_the_nearest_level_and_the_largest_value_is_exact() {
        let mut rng = crate::model::generate::Rng::new(5);
        let (rows, cols) = (6, 100);
        let x: Vec<f32> = (0..rows * cols).map(|_| rng.normal() as f32 * 0.05).collect();
        for bits in crate::model::grouped::BITS {
            for group in [32, 64] {
                let g = grouped(&x, rows, cols, bits, group);
                g.validate("w").unwrap();
                assert_eq!(g.bytes(), 4 * GMat::words(rows, cols, bits) + 2 * rows * cols.div_ceil(group));
                let mut y = vec![0f32; rows * cols];
                g.rows_f32(0, rows, &mut y);
                for r in 0..rows {
                    for (k, part) in x[r * cols..(r + 1) * cols].chunks(group).enumerate() {
                        let d = half::f16::from_bits(g.scales[r * g.groups_per_row() + k]).to_f32();
                        let got = &y[r * cols + k * group..r * cols + k * group + part.len()];
                        let widest = part.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
                        for (&a, &b) in part.iter().zip(got) {
                            // the nearest of the group's 2^bits levels (those beyond the narrower side clip)
                            let nearest = (0..1u32 << bits)
                                .map(|k| (k as f32 - (1u32 << (bits - 1)) as f32) * d)
                                .fold(f32::MAX, |m, l| m.min((a - l).abs()));
                            assert!((a - b).abs() <= nearest + 1e-6, "{bits} bits, groups of {group}: {a} vs {b}");
                        }
                        let at = part.iter().position(|&v| v == widest).unwrap();
                        assert!((got[at] - widest).abs() <= widest.abs() * 1e-3, "{bits} bits: the widest value");
                    }
                }
            }
        }
    }

    #[test]
    fn rounding_is_half_to_even_like_numpy() {
        for (x, want) in [
            (0.5, 0.0),
            (1.5, 2.0),
            (2.5, 2.0),
            (3.5, 4.0),
            (-0.5, 0.0),
            (-1.5, -2.0),
            (-2.5, -2.0),
            (2.4, 2.0),
            (2.6, 3.0),
        ] {
            assert_eq!(round_half_even(x), want, "round({x})");
        }
        // min 0, max 255 → scale 1, zp −128: 2.5 → 2 and 3.5 → 4 (half to even), not 3 and 4
        let q = per_tensor(&[0.0, 2.5, 3.5, 126.5, 255.0], 1, 5);
        assert_eq!(q.scales[0], 1.0);
        assert_eq!(q.zero_points, vec![-128]);
        assert_eq!(q.codes, vec![-128, -126, -124, -2, 127]);
    }

    #[test]
    fn constant_and_zero_matrices_survive() {
        for x in [vec![0f32; 6], vec![2.5f32; 6]] {
            for scheme in [QuantScheme::PerRow, QuantScheme::PerTensor] {
                let f = quantize(x.clone(), 2, 3, Some(scheme));
                let y = f.to_f32();
                for (a, b) in x.iter().zip(&y) {
                    assert!((a - b).abs() < 1e-5, "{scheme:?}: {a} vs {b}");
                }
            }
        }
    }
}
