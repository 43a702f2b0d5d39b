// y[t, n0 + n] (op)= x[t, :] · W[n, :] with no workgroup memory and no barrier: a workgroup takes ROWS rows of x
// (the same for all its invocations) and 4 × WG × G rows of W, each invocation 4 × G of them WG apart, reading 16
// elements of each at a time along k as whole vec4 words. The layout that suits adapters running invocations as the SIMD
// lanes of CPU threads, where each load costs about the same whatever its width; which of it and the tiled kernel
// runs is measured on each adapter (`kernels::Plan`). Needs rows of W and x that start on 16 bytes (`Kind::rows_fit`);
// the epilogue is the tiled kernel's (`mode`).

@group(0) @binding(0) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> w4: array<vec4<u32>>;

fn word(i: u32) -> u32 {
    return w4[i >> 2u][i & 3u];
}

fn bf2(q: u32) -> vec2<f32> {
    return bitcast<vec2<f32>>(vec2<u32>(q << 16u, q & 0xffff0000u));
}

// Elements k .. k + 15 of row r as `raw` gives them (k a multiple of 16, the row starting on 16 bytes).
fn raw16(r: u32, k: u32) -> array<vec4<f32>, 4> {
    var o: array<vec4<f32>, 4>;
    let e = r * p.k + k;
    switch KIND {
        case 0u: {
            let v = e >> 2u;
            o[0] = bitcast<vec4<f32>>(w4[v]);
            o[1] = bitcast<vec4<f32>>(w4[v + 1u]);
            o[2] = bitcast<vec4<f32>>(w4[v + 2u]);
            o[3] = bitcast<vec4<f32>>(w4[v + 3u]);
        }
        case 1u: {
            let a = w4[e >> 3u];
            let b = w4[(e >> 3u) + 1u];
            o[0] = vec4<f32>(unpack2x16float(a.x), unpack2x16float(a.y));
            o[1] = vec4<f32>(unpack2x16float(a.z), unpack2x16float(a.w));
            o[2] = vec4<f32>(unpack2x16float(b.x), unpack2x16float(b.y));
            o[3] = vec4<f32>(unpack2x16float(b.z), unpack2x16float(b.w));
        }
        case 2u: {
            let a = w4[e >> 3u];
            let b = w4[(e >> 3u) + 1u];
            o[0] = vec4<f32>(bf2(a.x), bf2(a.y));
            o[1] = vec4<f32>(bf2(a.z), bf2(a.w));
            o[2] = vec4<f32>(bf2(b.x), bf2(b.y));
            o[3] = vec4<f32>(bf2(b.z), bf2(b.w));
        }
        default: {
            let a = w4[e >> 4u];
            // per-tensor codes are offset by the zero point, as the CPU dequantizes them
            let z = vec4<f32>(select(0.0, f32(p.zp), KIND == 4u));
            o[0] = codes4(a.x) - z;
            o[1] = codes4(a.y) - z;
            o[2] = codes4(a.z) - z;
            o[3] = codes4(a.w) - z;
        }
    }
    return o;
}

fn dot16(a: array<vec4<f32>, 4>, b: array<vec4<f32>, 4>) -> f32 {
    return dot(a[0], b[0]) + dot(a[1], b[1]) + dot(a[2], b[2]) + dot(a[3], b[3]);
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let t0 = wg.y * ROWS;
    let nb = wg.x * 4u * WG * G + li;
    // rows past the end read the last row, and are not written
    let last = p.n - 1u;
    var r: array<vec4<u32>, G>;
    for (var g = 0u; g < G; g++) {
        let b = nb + 4u * WG * g;
        r[g] = vec4<u32>(min(b, last), min(b + WG, last), min(b + 2u * WG, last), min(b + 3u * WG, last));
    }
    var acc: array<vec4<f32>, ROWS * G>;
    let k16 = p.k & ~15u;
    for (var k = 0u; k < k16; k += 16u) {
        var wv: array<array<array<vec4<f32>, 4>, 4>, G>;
        for (var g = 0u; g < G; g++) {
            wv[g][0] = raw16(r[g].x, k);
            wv[g][1] = raw16(r[g].y, k);
            wv[g][2] = raw16(r[g].z, k);
            wv[g][3] = raw16(r[g].w, k);
        }
        for (var i = 0u; i < ROWS; i++) {
            let b = (p.x_off + min(t0 + i, p.t - 1u) * p.x_stride + k) >> 2u;
            let xv = array<vec4<f32>, 4>(x4[b], x4[b + 1u], x4[b + 2u], x4[b + 3u]);
            for (var g = 0u; g < G; g++) {
                acc[i * G + g] += vec4<f32>(dot16(xv, wv[g][0]), dot16(xv, wv[g][1]), dot16(xv, wv[g][2]),
                                            dot16(xv, wv[g][3]));
            }
        }
    }
    for (var k = k16; k < p.k; k++) {
        for (var g = 0u; g < G; g++) {
            let q = r[g];
            let wv = vec4<f32>(raw(q.x, k, p.k), raw(q.y, k, p.k), raw(q.z, k, p.k), raw(q.w, k, p.k));
            for (var i = 0u; i < ROWS; i++) {
                let xi = p.x_off + min(t0 + i, p.t - 1u) * p.x_stride + k;
                acc[i * G + g] += x4[xi >> 2u][xi & 3u] * wv;
            }
        }
    }
    for (var j = 0u; j < 4u * G; j++) {
        let n = nb + WG * j;
        if (n >= p.n) {
            break;
        }
        let f = row_factor(n);
        for (var i = 0u; i < ROWS; i++) {
            let t = t0 + i;
            if (t >= p.t) {
                break;
            }
            epilogue(acc[i * G + j / 4u][j % 4u] * f, t, n);
        }
    }
}
