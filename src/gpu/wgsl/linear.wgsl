// y[t, n0 + n] (op)= x[t, :] · W[n, :] for the rows n of one chunk of W, 64 × 64 outputs per workgroup of 16 × 16
// invocations (4 × 4 each), through tiles of 16 columns of x and W in workgroup memory; then `product.wgsl`'s
// epilogue.

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<u32>;

fn word(i: u32) -> u32 {
    return w[i];
}

const TM: u32 = 64u;
const TN: u32 = 64u;
const TK: u32 = 16u;

var<workgroup> xs: array<f32, 1024>; // [TK][TM]
var<workgroup> ws: array<f32, 1024>; // [TK][TN]

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
            epilogue(acc[i][j], t, n);
        }
    }
}
