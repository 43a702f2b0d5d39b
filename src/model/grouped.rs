//! Group-wise quantized matrices: `bits`-bit codes (2, 3, 4 or 8) with one signed f16 scale per group of `group`
//! consecutive values of a row, the codes packed as one bit stream. A value is `x' = (q − 2^(bits−1)) · scale`, `q`
//! unsigned: every one of the 2^bits levels is used, and the scale carries the sign of the group's largest value so
//! that it lands exactly on the widest level (−2^(bits−1)), as llama.cpp's `Q4_0` does. What a matrix stores is counted
//! to the byte: `⌈rows·cols·bits / 32⌉` words of codes and two bytes a group.
//!
//! The codes are read back a block of rows at a time ([`GMat::rows_f32`]), or a group at a time straight into a
//! product ([`GMat::decode`]), so a layer never holds its weight in f32 as a whole.

use crate::{Error, Result};

/// A scale's f16 bits as f32 (exact).
fn f16_to_f32(h: u16) -> f32 {
    half::f16::from_bits(h).to_f32()
}

/// Code widths a group-wise matrix may have.
pub const BITS: [u8; 4] = [2, 3, 4, 8];
/// Group sizes a group-wise matrix may have (values of a row sharing one scale).
pub const GROUPS: std::ops::RangeInclusive<usize> = 8..=4096;

/// A group-wise quantized matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct GMat {
    pub rows: usize,
    pub cols: usize,
    pub bits: u8,
    pub group: usize,
    /// One little-endian bit stream, row after row: value (r, c) is the `bits` bits from bit `(r·cols + c)·bits`.
    pub codes: Vec<u32>,
    /// f16 bits, `rows × groups_per_row()`, row-major.
    pub scales: Vec<u16>,
}

impl GMat {
    /// Groups in a row (the last one may be short).
    pub fn groups_per_row(&self) -> usize {
        self.cols.div_ceil(self.group)
    }

    /// The code that stands for zero.
    pub fn zero(&self) -> u32 {
        1 << (self.bits - 1)
    }

    /// Words a `rows × cols` stream of `bits`-bit codes takes.
    pub fn words(rows: usize, cols: usize, bits: u8) -> usize {
        (rows * cols * bits as usize).div_ceil(32)
    }

    /// Stored bytes: the packed codes and the scales.
    pub fn bytes(&self) -> usize {
        4 * self.codes.len() + 2 * self.scales.len()
    }

    /// `n` codes from value index `first` on (row-major over the whole matrix), as `q − zero` in f32, into `out`.
    #[inline]
    pub fn decode(&self, first: usize, out: &mut [f32]) {
        let bits = self.bits as usize;
        let mask = (1u32 << bits) - 1;
        let zero = self.zero() as f32;
        let mut bit = first * bits;
        if 32 % bits == 0 && bit.is_multiple_of(32) {
            // whole words: no code straddles two of them
            let per = 32 / bits;
            let (full, rest) = out.split_at_mut(out.len() / per * per);
            for (o, &w) in full.chunks_exact_mut(per).zip(&self.codes[bit / 32..]) {
                for (j, o) in o.iter_mut().enumerate() {
                    *o = ((w >> (j * bits)) & mask) as f32 - zero;
                }
            }
            bit += full.len() * bits;
            for o in rest {
                *o = ((self.codes[bit / 32] >> (bit % 32)) & mask) as f32 - zero;
                bit += bits;
            }
            return;
        }
        for o in out {
            let (w, s) = (bit / 32, bit % 32);
            let mut v = self.codes[w] >> s;
            if s + bits > 32 {
                v |= self.codes[w + 1] << (32 - s);
            }
            *o = (v & mask) as f32 - zero;
            bit += bits;
        }
    }

    /// Row `r`'s values from column `c0` on, dequantized, into `out` (which may span several groups).
    pub fn row_part_f32(&self, r: usize, c0: usize, out: &mut [f32]) {
        self.decode(r * self.cols + c0, out);
        let per_row = self.groups_per_row();
        for (j, v) in out.iter_mut().enumerate() {
            *v *= f16_to_f32(self.scales[r * per_row + (c0 + j) / self.group]);
        }
    }

    /// Dequantize rows `a..b` into `out` (row-major, `(b − a) · cols` values).
    pub fn rows_f32(&self, a: usize, b: usize, out: &mut [f32]) {
        let (cols, g, per_row) = (self.cols, self.group, self.groups_per_row());
        for (r, row) in (a..b).zip(out.chunks_exact_mut(cols)) {
            for (k, part) in row.chunks_mut(g).enumerate() {
                self.decode(r * cols + k * g, part);
                let s = f16_to_f32(self.scales[r * per_row + k]);
                for v in part {
                    *v *= s;
                }
            }
        }
    }

    /// Pack unsigned codes (each below 2^bits), row-major, into a bit stream.
    pub fn pack(codes: &[u8], bits: u8) -> Vec<u32> {
        let bits = bits as usize;
        let mut out = vec![0u32; (codes.len() * bits).div_ceil(32)];
        for (i, &q) in codes.iter().enumerate() {
            let (bit, q) = (i * bits, q as u32);
            let (w, s) = (bit / 32, bit % 32);
            out[w] |= q << s;
            if s + bits > 32 {
                out[w + 1] |= q >> (32 - s);
            }
        }
        out
    }

    /// Check that the parts agree with each other (for matrices read from a file).
    pub fn validate(&self, name: &str) -> Result<()> {
        if !BITS.contains(&self.bits) {
            return Err(Error::tensor(name, format!("has {}-bit group codes; 2, 3, 4 and 8 bits are read", self.bits)));
        }
        if !GROUPS.contains(&self.group) {
            return Err(Error::tensor(
                name,
                format!(
                    "has groups of {} values; groups of {} to {} are read",
                    self.group,
                    GROUPS.start(),
                    GROUPS.end()
                ),
            ));
        }
        let words = Self::words(self.rows, self.cols, self.bits);
        if self.codes.len() != words {
            return Err(Error::tensor(
                name,
                format!(
                    "has {} words of codes for a {}×{} matrix of {}-bit codes ({words} expected)",
                    self.codes.len(),
                    self.rows,
                    self.cols,
                    self.bits
                ),
            ));
        }
        if self.scales.len() != self.rows * self.groups_per_row() {
            return Err(Error::tensor(
                name,
                format!(
                    "has {} scales for {} rows of {} groups of {}",
                    self.scales.len(),
                    self.rows,
                    self.groups_per_row(),
                    self.group
                ),
            ));
        }
        if self.scales.iter().any(|&s| s & 0x7c00 == 0x7c00) {
            return Err(Error::tensor(name, "has a non-finite scale"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_and_decoding_agree_for_every_width_and_offset() {
        for bits in BITS {
            let (rows, cols) = (5, 37);
            let codes: Vec<u8> = (0..rows * cols).map(|i| ((i * 7 + 3) % (1 << bits)) as u8).collect();
            let one = half::f16::from_f32(1.0).to_bits();
            let g = GMat { rows, cols, bits, group: 8, codes: GMat::pack(&codes, bits), scales: vec![one; rows * 5] };
            g.validate("w").unwrap();
            let mut out = vec![0f32; rows * cols];
            g.rows_f32(0, rows, &mut out);
            for (i, (&q, &v)) in codes.iter().zip(&out).enumerate() {
                assert_eq!(v, q as f32 - g.zero() as f32, "{bits} bits, value {i}");
            }
            let mut two = vec![0f32; 2 * cols];
            g.rows_f32(2, 4, &mut two);
            assert_eq!(&two[..], &out[2 * cols..4 * cols]);
        }
    }
}
