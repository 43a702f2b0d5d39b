// GPT-Neo's masked softmax over each row of scores [heads, t, l], in place: query i (position pos0 + i) sees keys
// lo..=pos0 + i, every earlier one (global layers) or the last `window` (local); the rest become exactly 0, as the
// CPU path writes them. One workgroup a row.

struct Params {
    t: u32,
    l: u32,
    pos0: u32,
    window: u32,
    rows: u32,
}

@group(0) @binding(0) var<storage, read_write> s: array<f32>;
@group(0) @binding(1) var<uniform> p: Params;

var<workgroup> red: array<f32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let row = wg.x + wg.y * 65535u;
    if (row >= p.rows) {
        return;
    }
    let i = row % p.t;
    let qi = p.pos0 + i;
    let hi = min(qi, p.l - 1u);
    var lo = 0u;
    if (qi + 1u > p.window) {
        lo = qi + 1u - p.window;
    }
    let base = row * p.l;
    var m = -3.402823e38;
    for (var j = lo + li; j <= hi; j += 256u) {
        m = max(m, s[base + j]);
    }
    red[li] = m;
    workgroupBarrier();
    for (var h = 128u; h > 0u; h >>= 1u) {
        if (li < h) {
            red[li] = max(red[li], red[li + h]);
        }
        workgroupBarrier();
    }
    m = red[0];
    workgroupBarrier();
    var sum = 0.0;
    for (var j = lo + li; j <= hi; j += 256u) {
        let e = exp(s[base + j] - m);
        s[base + j] = e;
        sum += e;
    }
    red[li] = sum;
    workgroupBarrier();
    for (var h = 128u; h > 0u; h >>= 1u) {
        if (li < h) {
            red[li] += red[li + h];
        }
        workgroupBarrier();
    }
    let inv = 1.0 / red[0];
    for (var j = li; j < p.l; j += 256u) {
        if (j >= lo && j <= hi) {
            s[base + j] = s[base + j] * inv;
        } else {
            s[base + j] = 0.0;
        }
    }
}
