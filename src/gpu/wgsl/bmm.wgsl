// Batched f32 products through strides, for attention: c[b, i, j] = Σ_k a[b, i, k] · bm[b, j, k], each operand
// placed by (offset, batch stride, row stride, column stride), so that one kernel makes the scores Q·Kᵀ of every head
// and their mix P·V. 64 × 64 outputs per workgroup of 16 × 16, through tiles of 16 in workgroup memory.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    a_off: u32,
    a_sb: u32,
    a_si: u32,
    a_sk: u32,
    b_off: u32,
    b_sb: u32,
    b_sj: u32,
    b_sk: u32,
    c_off: u32,
    c_sb: u32,
    c_si: u32,
    c_sj: u32,
    // queries at positions pos0.. see keys j ≤ pos0 + i only: tiles wholly above that are not computed (their
    // scores are never read); `causal` 0 turns it off
    causal: u32,
    pos0: u32,
}

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> bm: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

const T: u32 = 64u;
const TK: u32 = 16u;

var<workgroup> as_: array<f32, 1024>;
var<workgroup> bs: array<f32, 1024>;

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let i0 = wg.y * T;
    let j0 = wg.x * T;
    let batch = wg.z;
    if (p.causal != 0u && j0 > p.pos0 + i0 + T - 1u) {
        return;
    }
    let ab = p.a_off + batch * p.a_sb;
    let bb = p.b_off + batch * p.b_sb;
    var acc: array<vec4<f32>, 4>;
    for (var k0 = 0u; k0 < p.k; k0 += TK) {
        for (var q = 0u; q < 4u; q++) {
            let e = li + 256u * q;
            let row = e / TK;
            let kk = e % TK;
            let k = k0 + kk;
            var av = 0.0;
            if (i0 + row < p.m && k < p.k) {
                av = a[ab + (i0 + row) * p.a_si + k * p.a_sk];
            }
            as_[kk * T + row] = av;
            var bv = 0.0;
            if (j0 + row < p.n && k < p.k) {
                bv = bm[bb + (j0 + row) * p.b_sj + k * p.b_sk];
            }
            bs[kk * T + row] = bv;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            let ai = kk * T + lid.y * 4u;
            let bi = kk * T + lid.x * 4u;
            let bv = vec4<f32>(bs[bi], bs[bi + 1u], bs[bi + 2u], bs[bi + 3u]);
            acc[0] += as_[ai] * bv;
            acc[1] += as_[ai + 1u] * bv;
            acc[2] += as_[ai + 2u] * bv;
            acc[3] += as_[ai + 3u] * bv;
        }
        workgroupBarrier();
    }
    let cb = p.c_off + batch * p.c_sb;
    for (var q = 0u; q < 4u; q++) {
        let i = i0 + lid.y * 4u + q;
        if (i >= p.m) {
            break;
        }
        for (var r = 0u; r < 4u; r++) {
            let j = j0 + lid.x * 4u + r;
            if (j >= p.n) {
                break;
            }
            c[cb + i * p.c_si + j * p.c_sj] = acc[q][r];
        }
    }
}

// The same products for a few rows (decoding): one output an invocation, no workgroup memory, the sum over k in
// the same order as `main`'s.
@compute @workgroup_size(64)
fn small(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    let i = gid.y;
    let batch = gid.z;
    if (i >= p.m || j >= p.n || (p.causal != 0u && j > p.pos0 + i)) {
        return;
    }
    let ab = p.a_off + batch * p.a_sb + i * p.a_si;
    let bb = p.b_off + batch * p.b_sb + j * p.b_sj;
    var acc = 0.0;
    for (var k = 0u; k < p.k; k++) {
        acc += a[ab + k * p.a_sk] * bm[bb + k * p.b_sk];
    }
    c[p.c_off + batch * p.c_sb + i * p.c_si + j * p.c_sj] = acc;
}

