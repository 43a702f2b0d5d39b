//! How a linear layer's matrices are stored: f32, INT8 codes with their scales, or 16-bit floats as a checkpoint
//! stores them, and how blocks of rows are read back as f32 on the fly. (The quantizers that make INT8 codes are in
//! the compression wing's `quant` module.)
//!
//! Two INT8 schemes:
//! * **per-row symmetric** (the default): row i keeps `scale_i = max_j |x_ij| / 127` and codes
//!   `q_ij = round(x_ij / scale_i)` in −127..=127; `x'_ij = q_ij · scale_i`.
//! * **per-tensor asymmetric** (the origin pipeline's scheme): one `scale = (max − min) / 255` and a zero point
//!   `zp = −128 − round(min / scale)` (an i32, which may fall outside the i8 range, e.g. for singular values);
//!   `q = clip(round(x / scale) + zp, −128, 127)`, `x' = (q − zp) · scale`. Arithmetic in f64 with round-half-to-even,
//!   as numpy does, so the codes match the Python reference.
//!
//! A [`Factor`] is a matrix stored either as f32 or as INT8; [`Factor::rows_f32`] dequantizes a block of rows into a
//! caller's buffer, which is how compressed layers run without ever holding their weights in f32.

use crate::model::grouped::GMat;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// How INT8 codes are scaled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(not(target_arch = "wasm32"), derive(clap::ValueEnum))]
pub enum QuantScheme {
    /// A scale per row, symmetric (no zero point).
    #[default]
    PerRow,
    /// One scale and one zero point for the whole tensor (the origin's scheme).
    PerTensor,
}

impl QuantScheme {
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

impl QMat {
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
        if self.codes.len() != self.rows * self.cols {
            return Err(Error::tensor(
                name,
                format!("has {} INT8 codes for a {}×{} factor", self.codes.len(), self.rows, self.cols),
            ));
        }
        if !ok_scales {
            return Err(Error::tensor(
                name,
                format!(
                    "has {} scales and {} zero points for {} rows of codes: per-row INT8 needs one scale per row, \
                     per-tensor INT8 one scale and one zero point",
                    self.scales.len(),
                    self.zero_points.len(),
                    self.rows
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

/// A matrix in one of the storages a layer uses: f32, INT8, group-wise codes, or 16-bit floats as a checkpoint stores
/// them.
#[derive(Clone, Debug, PartialEq)]
pub enum Factor {
    F32 {
        rows: usize,
        cols: usize,
        data: Vec<f32>,
    },
    Int8(QMat),
    /// Group-wise codes of 2 to 8 bits, a scale per group of a row ([`crate::model::grouped`]).
    Grouped(GMat),
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
            Factor::Grouped(g) => g.rows,
        }
    }
    pub fn cols(&self) -> usize {
        match self {
            Factor::F32 { cols, .. } | Factor::Half { cols, .. } => *cols,
            Factor::Int8(q) => q.cols,
            Factor::Grouped(g) => g.cols,
        }
    }
    pub fn bytes(&self) -> usize {
        match self {
            Factor::F32 { data, .. } => 4 * data.len(),
            Factor::Int8(q) => q.bytes(),
            Factor::Grouped(g) => g.bytes(),
            Factor::Half { bits, .. } => 2 * bits.len(),
        }
    }
    /// An f32 matrix, row-major.
    pub fn f32(data: Vec<f32>, rows: usize, cols: usize) -> Self {
        Factor::F32 { rows, cols, data }
    }
    /// Rows `a..b` as f32 into `out`.
    pub fn rows_f32(&self, a: usize, b: usize, out: &mut [f32]) {
        match self {
            Factor::F32 { cols, data, .. } => out.copy_from_slice(&data[a * cols..b * cols]),
            Factor::Int8(q) => q.rows_f32(a, b, out),
            Factor::Grouped(g) => g.rows_f32(a, b, out),
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

/// INT8 factors for the model's own tests, made without the compression wing's quantizers: per-row symmetric, or one
/// scale with a zero point (rounding half away from zero; the tests only need valid codes near the values).
#[cfg(test)]
pub(crate) fn test_int8(x: &[f32], rows: usize, cols: usize, scheme: QuantScheme) -> Factor {
    let q = match scheme {
        QuantScheme::PerRow => {
            let scales: Vec<f32> = x
                .chunks(cols)
                .map(|r| r.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0)
                .map(|s| if s > 0.0 { s } else { 1.0 })
                .collect();
            let codes = x.iter().enumerate().map(|(i, v)| (v / scales[i / cols]).round() as i8).collect();
            QMat { rows, cols, codes, scales, zero_points: vec![] }
        }
        QuantScheme::PerTensor => {
            let (mn, mx) = x.iter().fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
            let scale = ((mx - mn) / 255.0).max(f32::MIN_POSITIVE);
            let zp = -128 - (mn / scale).round() as i32;
            let codes = x.iter().map(|v| ((v / scale).round() as i32 + zp).clamp(-128, 127) as i8).collect();
            QMat { rows, cols, codes, scales: vec![scale], zero_points: vec![zp] }
        }
    };
    Factor::Int8(q)
}

#[cfg(test)]
mod tests {
    use super::*;
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
}
