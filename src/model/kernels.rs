//! Fused kernels for products of a few activation rows with a compact matrix, reading INT8 codes or 16-bit floats
//! directly instead of expanding the matrix: decoding one token is a matrix–vector product bound by memory
//! bandwidth, so reading 1 or 2 bytes per weight instead of 4 is the speed-up. Loops keep 16 independent
//! accumulators so the compiler vectorizes them (simd128 in wasm, SSE/AVX natively) without reassociating sums.

use crate::model::grouped::GMat;
use crate::model::storage::{bf16_to_f32, f16_to_f32, f16_to_f32_finite, Factor};

/// Up to this many rows of `x`, a product with a compact matrix reads the stored values directly (a fused
/// dequantize-and-dot kernel, what decoding one token needs); above it, blocks of rows are expanded for a matmul.
pub const GEMV_MAX_ROWS: usize = 4;

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
    if let Factor::Grouped(g) = f {
        if !gemv_grouped_blocks(x, n, g, out) {
            gemv_grouped(x, n, g, out);
        }
        return;
    }
    let mut buf = [0f32; CHUNK];
    for r in 0..rows {
        let mut sums = [0f32; GEMV_MAX_ROWS];
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
                // (the loop above takes them a group at a time, the scale applied to the sum)
                Factor::Grouped(g) => g.row_part_f32(r, k0, w),
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

/// [`gemv_t`] of group-wise codes, a group at a time: its codes decoded, the dot taken, the group's scale applied to
/// the sum (any width and group).
fn gemv_grouped(x: &[f32], n: usize, g: &GMat, out: &mut [f32]) {
    let (rows, cols) = (g.rows, g.cols);
    let mut buf = vec![0f32; g.group.min(cols)];
    let per_row = g.groups_per_row();
    for r in 0..rows {
        let mut sums = [0f32; GEMV_MAX_ROWS];
        for k in 0..per_row {
            let (c0, c1) = (k * g.group, ((k + 1) * g.group).min(cols));
            let w = &mut buf[..c1 - c0];
            g.decode(r * cols + c0, w);
            let s = f16_to_f32(g.scales[r * per_row + k]);
            for (i, sum) in sums.iter_mut().enumerate().take(n) {
                *sum += s * dot(&x[i * cols + c0..i * cols + c1], w);
            }
        }
        out[r..].iter_mut().step_by(rows).take(n).zip(sums).for_each(|(o, s)| *o = s);
    }
}

/// [`gemv_t`] of group-wise codes of 2, 4 or 8 bits whose groups are whole blocks of four words and whose rows are
/// whole groups (so every row starts on a word); `false` (nothing done) for any other. A block's codes are taken a
/// shift at a time across its four words (one shift for all four lanes, which wasm's SIMD can do), so they come out
/// in a fixed permutation of their columns: `x` is permuted the same way once, for every row. The codes are summed
/// against `x` unsigned, per group, and the zero point is taken off as `zero · Σ x` of the group, once per group.
fn gemv_grouped_blocks(x: &[f32], n: usize, g: &GMat, out: &mut [f32]) -> bool {
    let bits = g.bits as usize;
    if !32usize.is_multiple_of(bits) {
        return false;
    }
    let per = 32 / bits;
    let block = 4 * per;
    let (cols, group) = (g.cols, g.group);
    if !group.is_multiple_of(block) || !cols.is_multiple_of(group) || block > 64 {
        return false;
    }
    let per_row = cols / group;
    // x in the codes' order, block by block: code `s` of word `k` is column `k · per + s`, taken at `s · 4 + k`
    let mut xp = vec![0f32; n * cols];
    let mut xsum = vec![0f32; n * per_row];
    for i in 0..n {
        let (src, dst) = (&x[i * cols..(i + 1) * cols], &mut xp[i * cols..(i + 1) * cols]);
        for (s_blk, d_blk) in src.chunks_exact(block).zip(dst.chunks_exact_mut(block)) {
            for k in 0..4 {
                for s in 0..per {
                    d_blk[s * 4 + k] = s_blk[k * per + s];
                }
            }
        }
        for (sum, part) in xsum[i * per_row..(i + 1) * per_row].iter_mut().zip(src.chunks_exact(group)) {
            *sum = part.iter().sum();
        }
    }
    match bits {
        2 => grouped_rows::<2>(g, n, &xp, &xsum, out),
        4 => grouped_rows::<4>(g, n, &xp, &xsum, out),
        _ => grouped_rows::<8>(g, n, &xp, &xsum, out),
    }
    true
}

/// The rows of [`gemv_grouped_blocks`] for `BITS`-bit codes (a constant, so that a block's shifts unroll).
fn grouped_rows<const BITS: usize>(g: &GMat, n: usize, xp: &[f32], xsum: &[f32], out: &mut [f32]) {
    let per = 32 / BITS;
    let (rows, cols, group) = (g.rows, g.cols, g.group);
    let (per_row, row_words, group_words) = (cols / group, cols * BITS / 32, group * BITS / 32);
    let mask = (1u32 << BITS) - 1;
    let zero = g.zero() as f32;
    for r in 0..rows {
        let words = &g.codes[r * row_words..(r + 1) * row_words];
        let scales = &g.scales[r * per_row..(r + 1) * per_row];
        let mut total = [[0f32; 4]; GEMV_MAX_ROWS];
        let mut offset = [0f32; GEMV_MAX_ROWS];
        for (k, &scale) in scales.iter().enumerate() {
            let mut acc = [[0f32; 8]; GEMV_MAX_ROWS];
            for (b, w) in words[k * group_words..(k + 1) * group_words].chunks_exact(4).enumerate() {
                // the block's codes, a shift at a time across its four words (as i32: SSE2 converts only signed)
                let mut q = [0f32; 64];
                for sh in 0..per {
                    for l in 0..4 {
                        q[sh * 4 + l] = ((w[l] >> (sh * BITS)) & mask) as i32 as f32;
                    }
                }
                let base = k * group + b * 4 * per;
                for (i, a) in acc.iter_mut().enumerate().take(n) {
                    let xb = &xp[i * cols + base..][..4 * per];
                    for (qc, xc) in q[..4 * per].chunks_exact(8).zip(xb.chunks_exact(8)) {
                        for l in 0..8 {
                            a[l] += qc[l] * xc[l];
                        }
                    }
                }
            }
            let s = f16_to_f32(scale);
            for i in 0..n {
                for l in 0..4 {
                    total[i][l] += s * (acc[i][l] + acc[i][l + 4]);
                }
                offset[i] += s * zero * xsum[i * per_row + k];
            }
        }
        for i in 0..n {
            out[i * rows + r] = total[i].iter().sum::<f32>() - offset[i];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::storage::{test_int8, QuantScheme};

    /// Group-wise codes made without the compression wing's quantizers (nearest level under each group's scale).
    fn grouped_test_factor(w: &[f32], rows: usize, cols: usize, bits: u8, group: usize) -> Factor {
        let per_row = cols.div_ceil(group);
        let z = 1u32 << (bits - 1);
        let mut scales = vec![0u16; rows * per_row];
        let mut codes = vec![0u8; rows * cols];
        for r in 0..rows {
            for k in 0..per_row {
                let (c0, c1) = (k * group, ((k + 1) * group).min(cols));
                let amax = w[r * cols + c0..r * cols + c1].iter().fold(0f32, |m, v| m.max(v.abs()));
                let d = half::f16::from_f32(amax / (z - 1) as f32);
                scales[r * per_row + k] = d.to_bits();
                for c in c0..c1 {
                    codes[r * cols + c] = ((w[r * cols + c] / d.to_f32()).round() + z as f32) as u8;
                }
            }
        }
        let codes = crate::model::grouped::GMat::pack(&codes, bits);
        Factor::Grouped(crate::model::grouped::GMat { rows, cols, bits, group, codes, scales })
    }

    #[test]
    fn fused_products_match_expanded_ones() {
        let (rows, cols) = (7, 300);
        let w: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919 % 211) as f32 / 211.0) - 0.4).collect();
        let x: Vec<f32> = (0..3 * cols).map(|i| (i as f32 * 0.37).sin()).collect();
        let halves: Vec<u16> = w.iter().map(|&v| half::f16::from_f32(v).to_bits()).collect();
        let factors = [
            Factor::f32(w.clone(), rows, cols),
            test_int8(&w, rows, cols, QuantScheme::PerRow),
            test_int8(&w, rows, cols, QuantScheme::PerTensor),
            Factor::Half { rows, cols, bits: halves, bf16: false },
            grouped_test_factor(&w, rows, cols, 4, 64),
            grouped_test_factor(&w, rows, cols, 3, 32),
            grouped_test_factor(&w, rows, 256, 4, 64),
            grouped_test_factor(&w, rows, 256, 2, 128),
            grouped_test_factor(&w, rows, 256, 8, 32),
        ];
        for f in &factors {
            let (dense, cols) = (f.to_f32(), f.cols());
            let x = &x[..3 * cols];
            let mut out = vec![0f32; 3 * rows];
            gemv_t(x, 3, f, &mut out);
            for i in 0..3 {
                for r in 0..rows {
                    let want: f32 = (0..cols).map(|k| x[i * cols + k] * dense[r * cols + k]).sum();
                    assert!(
                        (out[i * rows + r] - want).abs() <= 1e-3 * want.abs().max(1.0),
                        "{i},{r}: {} vs {want}",
                        out[i * rows + r]
                    );
                }
            }
        }
    }
}

/// e^x in f32 without branches, so that loops over rows vectorize (there is no SIMD exp in wasm): Cephes' range
/// reduction x = n·ln2 + r, a degree-6 polynomial for e^r, and 2^n built in the exponent bits. Relative error
/// below 3e-7 for x in [−87, 88]; inputs outside are clamped (e^−87 ≈ 1.6e−38 is below anything a softmax keeps).
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // round to nearest by adding and subtracting 1.5·2^23 (|x·log2 e| < 2^22): no floor, which SSE2 lacks
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5.000_000_6e-1;
    let y = p * r * r + r + 1.0;
    y * f32::from_bits(((n as i32 + 127) << 23) as u32)
}

/// GPT-2's "gelu_new", `0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))`, written as `x / (1 + e^(−2u))` (the same
/// function: `(1 + tanh u) / 2` is the logistic of `2u`) with [`exp_f32`], so the loop vectorizes. candle's gelu
/// calls the scalar `tanhf` per element, which took 14% of an evaluation natively and more in wasm. Agrees with the
/// f64 formula to 1e-6, relative or (where the value is below 1 in magnitude) absolute (test below).
pub fn gelu_tanh(x: &[f32], out: &mut [f32]) {
    const C: f32 = 0.797_884_6; // √(2/π)
    for (o, &v) in out.iter_mut().zip(x) {
        let u = C * (v + 0.044_715 * v * v * v);
        *o = v / (1.0 + exp_f32(-2.0 * u));
    }
}

/// Sums of f32 products kept in 16 f32 lanes and flushed to f64 every `FLUSH` elements: vectorizes, and stays
/// accurate to about 1e-7 relative for rows of any length.
const FLUSH: usize = 1024;

/// `out[k] = e^(x[k] − max)`; returns (max, Σ out) — so softmax = out / Σ and log Σ e^x = max + ln Σ.
pub fn exp_row(x: &[f32], out: &mut Vec<f32>) -> (f32, f64) {
    let mut mx = [f32::NEG_INFINITY; LANES];
    let full = x.len() / LANES * LANES;
    for c in x[..full].chunks_exact(LANES) {
        for l in 0..LANES {
            mx[l] = mx[l].max(c[l]);
        }
    }
    let mut m = mx.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    for &v in &x[full..] {
        m = m.max(v);
    }
    out.clear();
    out.resize(x.len(), 0.0);
    let mut total = 0f64;
    for (xs, os) in x.chunks(FLUSH).zip(out.chunks_mut(FLUSH)) {
        let mut acc = [0f32; LANES];
        let full = xs.len() / LANES * LANES;
        for (xc, oc) in xs[..full].chunks_exact(LANES).zip(os[..full].chunks_exact_mut(LANES)) {
            for l in 0..LANES {
                let e = exp_f32(xc[l] - m);
                oc[l] = e;
                acc[l] += e;
            }
        }
        let mut s: f64 = acc.iter().map(|&v| v as f64).sum();
        for k in full..xs.len() {
            let e = exp_f32(xs[k] - m);
            os[k] = e;
            s += e as f64;
        }
        total += s;
    }
    (m, total)
}

/// For two logit rows `o` and `c` and `po[k] = e^(o[k] − max)`: Σ o·c, Σ o², Σ c², Σ (o − c)², Σ po·(o − c).
pub fn compare_rows(o: &[f32], c: &[f32], po: &[f32]) -> [f64; 5] {
    let mut out = [0f64; 5];
    for ((oc, cc), pc) in o.chunks(FLUSH).zip(c.chunks(FLUSH)).zip(po.chunks(FLUSH)) {
        let mut acc = [[0f32; LANES]; 5];
        let full = oc.len() / LANES * LANES;
        for ((a, b), p) in
            oc[..full].chunks_exact(LANES).zip(cc[..full].chunks_exact(LANES)).zip(pc[..full].chunks_exact(LANES))
        {
            for l in 0..LANES {
                let d = a[l] - b[l];
                acc[0][l] += a[l] * b[l];
                acc[1][l] += a[l] * a[l];
                acc[2][l] += b[l] * b[l];
                acc[3][l] += d * d;
                acc[4][l] += p[l] * d;
            }
        }
        for (q, a) in out.iter_mut().zip(acc) {
            *q += a.iter().map(|&v| v as f64).sum::<f64>();
        }
        for k in full..oc.len() {
            let (a, b) = (oc[k] as f64, cc[k] as f64);
            out[0] += a * b;
            out[1] += a * a;
            out[2] += b * b;
            out[3] += (a - b) * (a - b);
            out[4] += pc[k] as f64 * (a - b);
        }
    }
    out
}

/// Softmax of every row of `scores` (`rows × tk`, rows cycling through `t` queries) over the keys `lo..=hi` that
/// `visible(i)` gives for query i; every other entry becomes exactly 0.
pub fn masked_softmax(scores: &mut [f32], t: usize, tk: usize, visible: impl Fn(usize) -> (usize, usize)) {
    for (r, row) in scores.chunks_exact_mut(tk).enumerate() {
        let (lo, hi) = visible(r % t);
        let hi = hi.min(tk - 1);
        let seen = &mut row[lo..=hi];
        let m = seen.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let mut sum = 0f32;
        for v in seen.iter_mut() {
            *v = exp_f32(*v - m);
            sum += *v;
        }
        let inv = 1.0 / sum;
        for v in seen.iter_mut() {
            *v *= inv;
        }
        row[..lo].fill(0.0);
        row[hi + 1..].fill(0.0);
    }
}

#[cfg(test)]
mod row_tests {
    use super::*;

    #[test]
    fn masked_softmax_sums_to_one_inside_the_window() {
        let (t, tk) = (3, 5);
        let mut s: Vec<f32> = (0..2 * t * tk).map(|i| (i % 7) as f32 * 0.3).collect();
        // queries at positions 2, 3, 4 with a window of 2
        masked_softmax(&mut s, t, tk, |i| (i + 1, i + 2));
        for (r, row) in s.chunks(tk).enumerate() {
            let i = r % t;
            let total: f32 = row.iter().sum();
            assert!((total - 1.0).abs() < 1e-6);
            assert!(row.iter().enumerate().all(|(j, &p)| (j > i && j <= i + 2) || p == 0.0));
        }
    }

    #[test]
    fn exp_is_accurate() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            worst = worst.max(((exp_f32(x) as f64) - want).abs() / want);
            x += 0.0137;
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(exp_f32(f32::MIN), exp_f32(-87.0));
    }

    #[test]
    fn gelu_matches_the_tanh_formula() {
        let mut worst = (0f64, 0f64);
        let xs: Vec<f32> = (-200_000..200_000).map(|i| i as f32 * 1e-4).chain([-1e4, -88.0, 50.0, 1e4, 0.0]).collect();
        let mut out = vec![0f32; xs.len()];
        gelu_tanh(&xs, &mut out);
        for (&x, &y) in xs.iter().zip(&out) {
            let x64 = x as f64;
            let want =
                0.5 * x64 * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x64 + 0.044715 * x64.powi(3))).tanh());
            let err = (y as f64 - want).abs();
            worst.0 = worst.0.max(err.min(err / want.abs().max(1e-300)));
            worst.1 = worst.1.max(err);
            assert!(y.is_finite(), "gelu({x}) = {y}");
        }
        // relative to the value, or absolute where the value itself is tiny
        assert!(worst.0 < 1e-6, "worst error {worst:?}");
        assert!(worst.1 < 2e-3, "worst absolute error {worst:?}"); // at x = 1e4, 1e-7 relative
    }

    #[test]
    fn row_kernels_match_f64() {
        let o: Vec<f32> = (0..50_257).map(|i| ((i * 7919 % 1013) as f32 / 50.0) - 10.0).collect();
        let c: Vec<f32> = o.iter().enumerate().map(|(i, v)| v + ((i % 17) as f32 - 8.0) * 0.01).collect();
        let mut po = Vec::new();
        let (m, s) = exp_row(&o, &mut po);
        let want: f64 = o.iter().map(|&v| ((v - m) as f64).exp()).sum();
        assert!((s - want).abs() / want < 1e-6);
        let got = compare_rows(&o, &c, &po);
        let dot: f64 = o.iter().zip(&c).map(|(&a, &b)| a as f64 * b as f64).sum();
        let kl: f64 = o.iter().zip(&c).zip(&po).map(|((&a, &b), &p)| p as f64 * (a as f64 - b as f64)).sum();
        assert!((got[0] - dot).abs() / dot.abs() < 1e-6);
        assert!((got[4] - kl).abs() <= 1e-5 * kl.abs().max(1.0));
    }
}
