// One row of x times a chunk of W: y[n0 + n] (op)= x · W[n, :], 8 rows of W per workgroup of 256 invocations, 32 to
// a row reading it a word at a time (4 INT8 codes, 2 halves or 1 f32), so that the whole of W is read once, in
// order: decoding is bound by that read. Rows whose length is not a whole number of words are read an element at
// a time. The epilogue is the tiled kernel's (`mode`).

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<u32>;

fn word(i: u32) -> u32 {
    return w[i];
}

var<workgroup> part: array<f32, 256>;

fn xv4(k: u32) -> vec4<f32> {
    let b = p.x_off + k;
    return vec4<f32>(x[b], x[b + 1u], x[b + 2u], x[b + 3u]);
}

// Σ_k x[k] W[n, k], without the row's INT8 scale (applied once at the end).
fn row_dot(n: u32, lane: u32) -> f32 {
    var s = 0.0;
    switch KIND {
        case 0u: {
            let base = n * p.k;
            for (var k = lane; k < p.k; k += 32u) {
                s += x[p.x_off + k] * bitcast<f32>(w[base + k]);
            }
        }
        case 1u, 2u: {
            if ((p.k & 1u) == 0u) {
                let base = n * (p.k >> 1u);
                for (var q = lane; q < (p.k >> 1u); q += 32u) {
                    let word = w[base + q];
                    var h: vec2<f32>;
                    if (KIND == 1u) {
                        h = unpack2x16float(word);
                    } else {
                        h = vec2<f32>(bitcast<f32>(word << 16u), bitcast<f32>(word & 0xffff0000u));
                    }
                    s += x[p.x_off + 2u * q] * h.x + x[p.x_off + 2u * q + 1u] * h.y;
                }
            } else {
                for (var k = lane; k < p.k; k += 32u) {
                    s += x[p.x_off + k] * weight(n, k, p.k);
                }
            }
        }
        default: {
            // per-tensor codes are offset by the zero point first, as the CPU dequantizes them
            let zp = select(0, p.zp, KIND == 4u);
            if ((p.k & 3u) == 0u) {
                let base = n * (p.k >> 2u);
                var acc = vec4<f32>(0.0);
                for (var q = lane; q < (p.k >> 2u); q += 32u) {
                    acc += xv4(4u * q) * (codes4(w[base + q]) - vec4<f32>(f32(zp)));
                }
                s = acc.x + acc.y + acc.z + acc.w;
            } else {
                for (var k = lane; k < p.k; k += 32u) {
                    s += x[p.x_off + k] * f32(code(n * p.k + k) - zp);
                }
            }
        }
    }
    return s;
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let lane = li & 31u;
    let n = (wg.x + wg.y * 65535u) * 8u + (li >> 5u);
    var s = 0.0;
    if (n < p.n) {
        s = row_dot(n, lane);
    }
    part[li] = s;
    workgroupBarrier();
    for (var half = 16u; half > 0u; half >>= 1u) {
        if (lane < half) {
            part[li] += part[li + half];
        }
        workgroupBarrier();
    }
    if (lane != 0u || n >= p.n) {
        return;
    }
    var v = part[li];
    if (KIND == 3u) {
        v = v * wscale[n];
    } else if (KIND == 4u) {
        v = v * wscale[0];
    }
    epilogue(v, 0u, n);
}
