// What the evaluation needs of two rows of logits (original o, compressed c) at one position, over the vocabulary,
// without reading the logits back: max and (first) argmax of each, Σ e^(o − max o), Σ e^(c − max c), the targets'
// logits, Σ o·c, Σ o², Σ c², Σ (o − c)² and Σ e^(o − max o)(o − c). Thirteen f32 a position (`STRIDE`), from which the
// CPU finishes the figures in f64 as it does from its own logits. One workgroup a position; `compare` 0 reads o only.

struct Params {
    rows: u32,
    v: u32,
    out_off: u32,   // first position's index in `out` (in positions)
    compare: u32,
}

@group(0) @binding(0) var<storage, read> lo: array<f32>;
@group(0) @binding(1) var<storage, read> lc: array<f32>;
@group(0) @binding(2) var<storage, read> targets: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

const STRIDE: u32 = 13u;

var<workgroup> rv: array<f32, 256>;
var<workgroup> ri: array<u32, 256>;
var<workgroup> sums: array<array<f32, 256>, 7>;

// The largest value and its first index, over the workgroup (NaN never wins).
fn arg_max(v: f32, i: u32, li: u32) -> vec2<f32> {
    rv[li] = v;
    ri[li] = i;
    workgroupBarrier();
    for (var h = 128u; h > 0u; h >>= 1u) {
        if (li < h) {
            let ov = rv[li + h];
            let oi = ri[li + h];
            if (ov > rv[li] || (ov == rv[li] && oi < ri[li])) {
                rv[li] = ov;
                ri[li] = oi;
            }
        }
        workgroupBarrier();
    }
    let r = vec2<f32>(rv[0], bitcast<f32>(ri[0]));
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let row = wg.x;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.v;
    var mo = -3.402823e38;
    var io = 0xffffffffu;
    var mc = -3.402823e38;
    var ic = 0xffffffffu;
    for (var j = li; j < p.v; j += 256u) {
        let o = lo[base + j];
        if (o > mo || (io == 0xffffffffu && o == mo)) {
            mo = o;
            io = j;
        }
        if (p.compare != 0u) {
            let c = lc[base + j];
            if (c > mc || (ic == 0xffffffffu && c == mc)) {
                mc = c;
                ic = j;
            }
        }
    }
    let ao = arg_max(mo, io, li);
    let ac = arg_max(mc, ic, li);
    mo = ao.x;
    mc = ac.x;
    var s: array<f32, 7>;
    for (var j = li; j < p.v; j += 256u) {
        let o = lo[base + j];
        let eo = exp(o - mo);
        s[0] += eo;
        if (p.compare != 0u) {
            let c = lc[base + j];
            let d = o - c;
            s[1] += exp(c - mc);
            s[2] += o * c;
            s[3] += o * o;
            s[4] += c * c;
            s[5] += d * d;
            s[6] += eo * d;
        }
    }
    for (var q = 0u; q < 7u; q++) {
        sums[q][li] = s[q];
    }
    workgroupBarrier();
    for (var h = 128u; h > 0u; h >>= 1u) {
        if (li < h) {
            for (var q = 0u; q < 7u; q++) {
                sums[q][li] += sums[q][li + h];
            }
        }
        workgroupBarrier();
    }
    if (li != 0u) {
        return;
    }
    let ob = (p.out_off + row) * STRIDE;
    let t = targets[p.out_off + row];
    out[ob] = mo;
    out[ob + 1u] = sums[0][0];
    out[ob + 2u] = mc;
    out[ob + 3u] = sums[1][0];
    var ot = 0.0;
    var ct = 0.0;
    if (t < p.v) {
        ot = lo[base + t];
        if (p.compare != 0u) {
            ct = lc[base + t];
        }
    }
    out[ob + 4u] = ot;
    out[ob + 5u] = ct;
    out[ob + 6u] = sums[2][0];
    out[ob + 7u] = sums[3][0];
    out[ob + 8u] = sums[4][0];
    out[ob + 9u] = sums[5][0];
    out[ob + 10u] = sums[6][0];
    out[ob + 11u] = ao.y;
    out[ob + 12u] = ac.y;
}
