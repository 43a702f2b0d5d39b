// LayerNorm of each row of x [t, d] into y: (x − mean) / √(var + eps) · g + b, the variance of the centred values
// (two passes, as the CPU path). One workgroup a row.

struct Params {
    t: u32,
    d: u32,
    eps: f32,
    x_off: u32,
    y_off: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> g: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

var<workgroup> red: array<f32, 256>;

fn total(v: f32, li: u32) -> f32 {
    red[li] = v;
    workgroupBarrier();
    for (var h = 128u; h > 0u; h >>= 1u) {
        if (li < h) {
            red[li] += red[li + h];
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let row = wg.x;
    let xb = p.x_off + row * p.d;
    let yb = p.y_off + row * p.d;
    var s = 0.0;
    for (var c = li; c < p.d; c += 256u) {
        s += x[xb + c];
    }
    let mean = total(s, li) / f32(p.d);
    var q = 0.0;
    for (var c = li; c < p.d; c += 256u) {
        let v = x[xb + c] - mean;
        q += v * v;
    }
    let inv = 1.0 / sqrt(total(q, li) / f32(p.d) + p.eps);
    for (var c = li; c < p.d; c += 256u) {
        y[yb + c] = (x[xb + c] - mean) * inv * g[c] + b[c];
    }
}

// The same, an invocation a row and no barrier (for adapters that run invocations as the SIMD lanes of CPU threads,
// where a barrier costs a coroutine switch per invocation).
@compute @workgroup_size(64)
fn rows(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row = gid.x + gid.y * 65535u * 64u;
    if (row >= p.t) {
        return;
    }
    let xb = p.x_off + row * p.d;
    let yb = p.y_off + row * p.d;
    var s = 0.0;
    for (var c = 0u; c < p.d; c++) {
        s += x[xb + c];
    }
    let mean = s / f32(p.d);
    var q = 0.0;
    for (var c = 0u; c < p.d; c++) {
        let v = x[xb + c] - mean;
        q += v * v;
    }
    let inv = 1.0 / sqrt(q / f32(p.d) + p.eps);
    for (var c = 0u; c < p.d; c++) {
        y[yb + c] = (x[xb + c] - mean) * inv * g[c] + b[c];
    }
}
