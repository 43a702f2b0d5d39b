// y[t, n0 + n] (op)= x[t, :] · W[n, :] for the rows n of one chunk of W, 64 × 64 outputs per workgroup of 16 × 16
// invocations (4 × 4 each), through tiles of 16 columns of x and W in workgroup memory. The epilogue applies, in
// this order and as `mode` asks: a per-column scale (1), a bias (2), gelu_new (4), accumulation into y (8).

struct Params {
    t: u32,          // rows of x
    n: u32,          // rows of this chunk of W (outputs it makes)
    k: u32,          // columns of x and W
    n0: u32,         // the chunk's first row: its outputs' first column in y
    x_off: u32,
    x_stride: u32,
    y_off: u32,
    y_stride: u32,
    mode: u32,
    zp: i32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> wscale: array<f32>;
@group(0) @binding(3) var<storage, read> vecb: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<uniform> p: Params;

fn word(i: u32) -> u32 {
    return w[i];
}

fn zero_point() -> i32 {
    return p.zp;
}

const TM: u32 = 64u;
const TN: u32 = 64u;
const TK: u32 = 16u;

var<workgroup> xs: array<f32, 1024>; // [TK][TM]
var<workgroup> ws: array<f32, 1024>; // [TK][TN]

fn gelu_new(v: f32) -> f32 {
    let u = 0.7978846 * (v + 0.044715 * v * v * v);
    return v / (1.0 + exp(-2.0 * u));
}

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let t0 = wg.y * TM;
    let m0 = wg.x * TN;
    var acc: array<vec4<f32>, 4>;
    for (var k0 = 0u; k0 < p.k; k0 += TK) {
        for (var i = 0u; i < 4u; i++) {
            let e = li + 256u * i;
            let row = e / TK;
            let kk = e % TK;
            let k = k0 + kk;
            let t = t0 + row;
            var xv = 0.0;
            if (t < p.t && k < p.k) {
                xv = x[p.x_off + t * p.x_stride + k];
            }
            xs[kk * TM + row] = xv;
            let n = m0 + row;
            var wv = 0.0;
            if (n < p.n && k < p.k) {
                wv = weight(n, k, p.k);
            }
            ws[kk * TN + row] = wv;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            let a = kk * TM + lid.y * 4u;
            let b = kk * TN + lid.x * 4u;
            let bv = vec4<f32>(ws[b], ws[b + 1u], ws[b + 2u], ws[b + 3u]);
            acc[0] += xs[a] * bv;
            acc[1] += xs[a + 1u] * bv;
            acc[2] += xs[a + 2u] * bv;
            acc[3] += xs[a + 3u] * bv;
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let t = t0 + lid.y * 4u + i;
        if (t >= p.t) {
            break;
        }
        for (var j = 0u; j < 4u; j++) {
            let n = m0 + lid.x * 4u + j;
            if (n >= p.n) {
                break;
            }
            let col = p.n0 + n;
            var v = acc[i][j];
            if ((p.mode & 1u) != 0u) {
                v = v * vecb[col];
            }
            if ((p.mode & 2u) != 0u) {
                v = v + vecb[col];
            }
            if ((p.mode & 4u) != 0u) {
                v = gelu_new(v);
            }
            let yi = p.y_off + t * p.y_stride + col;
            if ((p.mode & 8u) != 0u) {
                v = y[yi] + v;
            }
            y[yi] = v;
        }
    }
}
