//! INT8 storage of matrices, and dequantization of row blocks on the fly.
//!
//! Two schemes:
//! * **per-row symmetric** (the default): row i keeps `scale_i = max_j |x_ij| / 127` and codes
//!   `q_ij = round(x_ij / scale_i)` in −127..=127; `x'_ij = q_ij · scale_i`.
//! * **per-tensor asymmetric** (the origin pipeline's scheme): one `scale = (max − min) / 255` and a zero point
//!   `zp = −128 − round(min / scale)` (an i32, which may fall outside the i8 range, e.g. for singular values);
//!   `q = clip(round(x / scale) + zp, −128, 127)`, `x' = (q − zp) · scale`. Arithmetic in f64 with round-half-to-even,
//!   as numpy does, so the codes match the Python reference.
//!
//! A [`Factor`] is a matrix stored either as f32 or as INT8; [`Factor::rows_f32`] dequantizes a block of rows into a
//! caller's buffer, which is how compressed layers run without ever holding their weights in f32.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// How INT8 codes are scaled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum QuantScheme {
    /// A scale per row, symmetric (no zero point).
    #[default]
    PerRow,
    /// One scale and one zero point for the whole tensor (the origin's scheme).
    PerTensor,
}

impl QuantScheme {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "per-row" | "per_row" | "perrow" => Ok(Self::PerRow),
            "per-tensor" | "per_tensor" | "pertensor" => Ok(Self::PerTensor),
            other => Err(Error::Policy(format!("quantization scheme \"{other}\" is unknown (per-row or per-tensor)"))),
        }
    }
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::PerRow => "per-row",
            Self::PerTensor => "per-tensor",
        }
    }
}

/// An INT8 matrix with its scales.
#[derive(Clone, Debug, PartialEq)]
pub struct QMat {
    pub rows: usize,
    pub cols: usize,
    pub codes: Vec<i8>,
    /// One per row (per-row) or one (per-tensor).
    pub scales: Vec<f32>,
    /// Empty (per-row, symmetric) or one (per-tensor, asymmetric).
    pub zero_points: Vec<i32>,
}

/// numpy's `round`: half to even.
fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 {
        2.0 * (x / 2.0).round()
    } else {
        r
    }
}

impl QMat {
    /// Per-row symmetric INT8 of a row-major `rows × cols` matrix.
    pub fn per_row(x: &[f32], rows: usize, cols: usize) -> Self {
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
        Self { rows, cols, codes, scales, zero_points: Vec::new() }
    }

    /// Per-tensor asymmetric INT8 (the origin's scheme), computed in f64 like the Python reference.
    pub fn per_tensor(x: &[f64], rows: usize, cols: usize) -> Self {
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
        Self { rows, cols, codes, scales: vec![scale as f32], zero_points: vec![zp] }
    }

    /// Per-tensor scale in f64 as computed, for exact dequantization in tests.
    pub fn scheme(&self) -> QuantScheme {
        if self.zero_points.is_empty() {
            QuantScheme::PerRow
        } else {
            QuantScheme::PerTensor
        }
    }

    /// Stored bytes: codes + scales + zero points.
    pub fn bytes(&self) -> usize {
        self.codes.len() + 4 * self.scales.len() + 4 * self.zero_points.len()
    }

    /// Dequantize rows `a..b` into `out` (row-major, `(b − a) · cols` values).
    pub fn rows_f32(&self, a: usize, b: usize, out: &mut [f32]) {
        let cols = self.cols;
        let codes = &self.codes[a * cols..b * cols];
        match self.zero_points.first() {
            None => {
                for (r, (o, q)) in out.chunks_exact_mut(cols).zip(codes.chunks_exact(cols)).enumerate() {
                    let s = self.scales[a + r];
                    for (o, &q) in o.iter_mut().zip(q) {
                        *o = q as f32 * s;
                    }
                }
            }
            Some(&zp) => {
                let s = self.scales[0];
                for (o, &q) in out.iter_mut().zip(codes) {
                    *o = (q as i32 - zp) as f32 * s;
                }
            }
        }
    }

    /// Check that the parts agree with each other (for matrices read from a file).
    pub fn validate(&self, name: &str) -> Result<()> {
        let ok_scales = match self.zero_points.len() {
            0 => self.scales.len() == self.rows,
            1 => self.scales.len() == 1,
            _ => false,
        };
        if self.codes.len() != self.rows * self.cols || !ok_scales {
            return Err(Error::tensor(
                name,
                format!(
                    "INT8 parts disagree: {} codes for {}×{}, {} scales, {} zero points",
                    self.codes.len(),
                    self.rows,
                    self.cols,
                    self.scales.len(),
                    self.zero_points.len()
                ),
            ));
        }
        if self.scales.iter().any(|s| !s.is_finite()) {
            return Err(Error::tensor(name, "has a non-finite scale"));
        }
        Ok(())
    }
}

/// f16 bits to f32 without branches (so loops over slices vectorize, also in wasm where there is no hardware
/// conversion): normal numbers rebias the exponent, subnormals go through a float subtraction, Inf/NaN keep an all-ones
/// exponent.
#[inline(always)]
pub fn f16_to_f32(h: u16) -> f32 {
    let h = h as u32;
    let sign = (h & 0x8000) << 16;
    let em = (h & 0x7fff) << 13;
    let exp = h & 0x7c00;
    let normal = em + (112 << 23);
    let inf_nan = em + (224 << 23);
    let magic = f32::from_bits(113 << 23);
    let sub = (f32::from_bits(em + (113 << 23)) - magic).to_bits();
    let bits = if exp == 0x7c00 {
        inf_nan
    } else if exp == 0 {
        sub
    } else {
        normal
    };
    f32::from_bits(bits | sign)
}

/// f16 bits to f32 for finite values only, in four integer operations and one multiply (F. Giesen's
/// `half_to_float_fast2`): the exponent and mantissa are placed in an f32 and scaled by 2^112, which also turns f16
/// subnormals into the right f32 values. Inf/NaN come out wrong, so storages that use it reject them at load.
#[inline(always)]
pub fn f16_to_f32_finite(h: u16) -> f32 {
    let h = h as u32;
    let bits = ((h & 0x8000) << 16) | ((h & 0x7fff) << 13);
    f32::from_bits(bits) * f32::from_bits((127 + 112) << 23)
}

/// Whether f16 bits hold Inf or NaN.
#[inline(always)]
pub fn f16_is_non_finite(h: u16) -> bool {
    h & 0x7c00 == 0x7c00
}

/// bf16 bits to f32 (exact: bf16 is the top half of an f32).
#[inline(always)]
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// Convert a slice of f16 (or bf16) bits.
pub fn half_to_f32(src: &[u16], dst: &mut [f32], bf16: bool) {
    if bf16 {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = bf16_to_f32(s);
        }
    } else {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = f16_to_f32_finite(s);
        }
    }
}

/// A matrix in one of the storages a layer uses: f32, INT8, or 16-bit floats as a checkpoint stores them.
#[derive(Clone, Debug, PartialEq)]
pub enum Factor {
    F32 {
        rows: usize,
        cols: usize,
        data: Vec<f32>,
    },
    Int8(QMat),
    /// f16 or bf16 bits, kept as stored; finite values only (checked when made from a checkpoint).
    Half {
        rows: usize,
        cols: usize,
        bits: Vec<u16>,
        bf16: bool,
    },
}

impl Factor {
    pub fn rows(&self) -> usize {
        match self {
            Factor::F32 { rows, .. } | Factor::Half { rows, .. } => *rows,
            Factor::Int8(q) => q.rows,
        }
    }
    pub fn cols(&self) -> usize {
        match self {
            Factor::F32 { cols, .. } | Factor::Half { cols, .. } => *cols,
            Factor::Int8(q) => q.cols,
        }
    }
    pub fn bytes(&self) -> usize {
        match self {
            Factor::F32 { data, .. } => 4 * data.len(),
            Factor::Int8(q) => q.bytes(),
            Factor::Half { bits, .. } => 2 * bits.len(),
        }
    }
    /// Quantize an f32 matrix (`None` keeps f32).
    pub fn new(data: Vec<f32>, rows: usize, cols: usize, quant: Option<QuantScheme>) -> Self {
        match quant {
            None => Factor::F32 { rows, cols, data },
            Some(QuantScheme::PerRow) => Factor::Int8(QMat::per_row(&data, rows, cols)),
            Some(QuantScheme::PerTensor) => {
                let d: Vec<f64> = data.iter().map(|&v| v as f64).collect();
                Factor::Int8(QMat::per_tensor(&d, rows, cols))
            }
        }
    }
    /// Rows `a..b` as f32 into `out`.
    pub fn rows_f32(&self, a: usize, b: usize, out: &mut [f32]) {
        match self {
            Factor::F32 { cols, data, .. } => out.copy_from_slice(&data[a * cols..b * cols]),
            Factor::Int8(q) => q.rows_f32(a, b, out),
            Factor::Half { cols, bits, bf16, .. } => half_to_f32(&bits[a * cols..b * cols], out, *bf16),
        }
    }
    /// The whole matrix as f32 (for small matrices and tests).
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows() * self.cols()];
        self.rows_f32(0, self.rows(), &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_row_roundtrip_error_is_half_a_step() {
        let x: Vec<f32> = (0..60).map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.1 * (1 + i / 20) as f32).collect();
        let q = QMat::per_row(&x, 3, 20);
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
        let q = QMat::per_tensor(&x, 1, 5);
        assert!((q.scales[0] as f64 - 0.01).abs() < 1e-9);
        assert_eq!(q.zero_points, vec![-28]);
        // 0.005/0.01 = 0.5 → 0 (half to even), 0.015/0.01 = 1.5 → 2 (floating: 1.4999.. or 1.5; both give 1 or 2)
        assert_eq!(q.codes[0], -128);
        assert_eq!(q.codes[1], -28);
        assert_eq!(q.codes[4], 127);
        // all-positive data (like singular values): the zero point leaves the i8 range but codes stay valid
        let s = vec![10.0, 5.0, 1.0];
        let q = QMat::per_tensor(&s, 1, 3);
        let mut y = vec![0f32; 3];
        q.rows_f32(0, 1, &mut y);
        for (a, b) in s.iter().zip(&y) {
            assert!((*a as f32 - b).abs() <= q.scales[0] * 0.5 + 1e-6);
        }
        assert!(q.zero_points[0] < -128);
    }

    #[test]
    fn per_row_scale_is_the_row_amax_over_127() {
        let mut rng = crate::generate::Rng::new(3);
        let (rows, cols) = (7, 33);
        let x: Vec<f32> = (0..rows * cols).map(|i| (rng.normal() as f32) * (1 + i / cols) as f32).collect();
        let q = QMat::per_row(&x, rows, cols);
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
        let q = QMat::per_tensor(&[0.0, 2.5, 3.5, 126.5, 255.0], 1, 5);
        assert_eq!(q.scales[0], 1.0);
        assert_eq!(q.zero_points, vec![-128]);
        assert_eq!(q.codes, vec![-128, -126, -124, -2, 127]);
    }

    #[test]
    fn fast_half_conversion_is_exact_for_every_value() {
        for h in 0..=u16::MAX {
            let want = half::f16::from_bits(h).to_f32();
            let got = f16_to_f32(h);
            assert!(got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()), "{h:#06x}: {got} vs {want}");
            if !f16_is_non_finite(h) {
                assert_eq!(f16_to_f32_finite(h).to_bits(), want.to_bits(), "{h:#06x}");
            }
            let (b, want) = (bf16_to_f32(h), half::bf16::from_bits(h).to_f32());
            assert!(b.to_bits() == want.to_bits() || (b.is_nan() && want.is_nan()), "bf16 {h:#06x}");
        }
    }

    #[test]
    fn constant_and_zero_matrices_survive() {
        for x in [vec![0f32; 6], vec![2.5f32; 6]] {
            for scheme in [QuantScheme::PerRow, QuantScheme::PerTensor] {
                let f = Factor::new(x.clone(), 2, 3, Some(scheme));
                let y = f.to_f32();
                for (a, b) in x.iter().zip(&y) {
                    assert!((a - b).abs() < 1e-5, "{scheme:?}: {a} vs {b}");
                }
            }
        }
    }
}
