// Attention over a window in the rows kernel's layout (no workgroup memory, no barrier; see `rows.wgsl`): a
// workgroup takes ROWS queries (the same for all its invocations, so their loads are uniform) and one head (`wg.z`).
//
// `scores`: s[h, i, j] = q[i, h] · k[j, h], an invocation four keys 16 apart, reading 16 elements of each at a time
// as whole vec4 words; blocks of keys no query of the workgroup sees (past the last query, or before the first one's local
// window) are not computed, as the softmax never reads them.
// `normalize`: GPT-Neo's softmax over the keys each query sees, in place, an invocation a row of scores (a loop over
// it, no barrier: barriers cost a coroutine switch per invocation on such adapters); the keys it does not see are
// left as they are.
// `mix`: o[i, h] = Σ_j p[h, i, j] v[j, h], an invocation four columns of the head, four keys at a time, over the
// keys each query sees.
//
// Needs a head width that is a multiple of 16 and rows of scores (`ls`) a multiple of 4 apart.

struct Params {
    t: u32,        // queries
    l: u32,        // keys (pos0 + t)
    ls: u32,       // scores' row stride (l rounded up to 4)
    hd: u32,       // head width
    d: u32,        // q, k, v and o rows' stride
    h0: u32,       // the first head of this dispatch (wg.z counts from it)
    pos0: u32,     // the first query's position
    window: u32,   // keys a query sees: the last `window` (local layers) or all (u32 max)
    heads: u32,    // heads of this dispatch
}

@group(0) @binding(0) var<storage, read> a4: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> b4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

// The keys query i sees: lo ..= hi.
fn keys(i: u32) -> vec2<u32> {
    let q = p.pos0 + i;
    var lo = 0u;
    if (q + 1u > p.window) {
        lo = q + 1u - p.window;
    }
    return vec2<u32>(lo, min(q, p.l - 1u));
}

// The keys the queries i0 .. i0 + ROWS - 1 see between them: lo ..= hi.
fn seen(i0: u32) -> vec2<u32> {
    return vec2<u32>(keys(i0).x, keys(min(i0 + ROWS, p.t) - 1u).y);
}

// a = queries [t, d], b = keys [l, d], c = scores [heads, t, ls]
@compute @workgroup_size(16)
fn scores(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i0 = wg.y * ROWS;
    let j0 = wg.x * 64u;
    let range = seen(i0);
    if (j0 > range.y || j0 + 63u < range.x) {
        return;
    }
    let h = p.h0 + wg.z;
    // four keys an invocation, 16 apart
    let last = p.l - 1u;
    let jb = j0 + li;
    let kb = vec4<u32>(min(jb, last), min(jb + 16u, last), min(jb + 32u, last), min(jb + 48u, last)) * p.d + h * p.hd;
    var acc: array<vec4<f32>, ROWS>;
    for (var k0 = 0u; k0 < p.hd; k0 += 16u) {
        var kv: array<array<vec4<f32>, 4>, 4>;
        for (var r = 0u; r < 4u; r++) {
            let e = (kb[r] + k0) >> 2u;
            kv[r] = array<vec4<f32>, 4>(b4[e], b4[e + 1u], b4[e + 2u], b4[e + 3u]);
        }
        for (var i = 0u; i < ROWS; i++) {
            let qb = (min(i0 + i, p.t - 1u) * p.d + h * p.hd + k0) >> 2u;
            let qv = array<vec4<f32>, 4>(a4[qb], a4[qb + 1u], a4[qb + 2u], a4[qb + 3u]);
            var dots: vec4<f32>;
            for (var r = 0u; r < 4u; r++) {
                dots[r] = dot(qv[0], kv[r][0]) + dot(qv[1], kv[r][1]) + dot(qv[2], kv[r][2]) + dot(qv[3], kv[r][3]);
            }
            acc[i] += dots;
        }
    }
    let cb = wg.z * p.t * p.ls;
    for (var r = 0u; r < 4u; r++) {
        let j = jb + 16u * r;
        if (j >= p.l) {
            break;
        }
        for (var i = 0u; i < ROWS; i++) {
            if (i0 + i >= p.t) {
                break;
            }
            c[cb + (i0 + i) * p.ls + j] = acc[i][r];
        }
    }
}

// a = probabilities [heads, t, ls], b = values [l, d], c = output [t, d]
@compute @workgroup_size(16)
fn mix(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i0 = wg.y * ROWS;
    let col = wg.x * 64u + li * 4u;
    let h = p.h0 + wg.z;
    let range = seen(i0);
    let vc = min(col, p.hd - 4u);
    let vb = (h * p.hd + vc) >> 2u;
    let d4 = p.d >> 2u;
    let pb = (wg.z * p.t * p.ls) >> 2u;
    let ls4 = p.ls >> 2u;
    var seen_by: array<vec2<u32>, ROWS>;
    for (var i = 0u; i < ROWS; i++) {
        seen_by[i] = keys(min(i0 + i, p.t - 1u));
    }
    var acc: array<vec4<f32>, ROWS>;
    var j = range.x & ~3u;
    for (; j + 3u <= range.y; j += 4u) {
        let v0 = b4[vb + j * d4];
        let v1 = b4[vb + (j + 1u) * d4];
        let v2 = b4[vb + (j + 2u) * d4];
        let v3 = b4[vb + (j + 3u) * d4];
        let jv = vec4<u32>(j, j + 1u, j + 2u, j + 3u);
        for (var i = 0u; i < ROWS; i++) {
            let r = seen_by[i];
            let pr = select(vec4<f32>(0.0), a4[pb + min(i0 + i, p.t - 1u) * ls4 + (j >> 2u)],
                            (jv >= vec4<u32>(r.x)) & (jv <= vec4<u32>(r.y)));
            acc[i] += pr.x * v0 + pr.y * v1 + pr.z * v2 + pr.w * v3;
        }
    }
    for (; j <= range.y; j++) {
        let v = b4[vb + j * d4];
        for (var i = 0u; i < ROWS; i++) {
            let r = seen_by[i];
            let e = (pb << 2u) + min(i0 + i, p.t - 1u) * p.ls + j;
            acc[i] += select(0.0, a4[e >> 2u][e & 3u], j >= r.x && j <= r.y) * v;
        }
    }
    if (col >= p.hd) {
        return;
    }
    for (var i = 0u; i < ROWS; i++) {
        if (i0 + i >= p.t) {
            break;
        }
        let o = (i0 + i) * p.d + h * p.hd + col;
        c[o] = acc[i].x;
        c[o + 1u] = acc[i].y;
        c[o + 2u] = acc[i].z;
        c[o + 3u] = acc[i].w;
    }
}

// c = scores [heads, t, ls]
@compute @workgroup_size(64)
fn normalize(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row = gid.x + gid.y * 65535u * 64u;
    if (row >= p.heads * p.t) {
        return;
    }
    let r = keys(row % p.t);
    let base = row * p.ls;
    var m = -3.402823e38;
    for (var j = r.x; j <= r.y; j++) {
        m = max(m, c[base + j]);
    }
    var sum = 0.0;
    for (var j = r.x; j <= r.y; j++) {
        let e = exp(c[base + j] - m);
        c[base + j] = e;
        sum += e;
    }
    let inv = 1.0 / sum;
    for (var j = r.x; j <= r.y; j++) {
        c[base + j] = c[base + j] * inv;
    }
}
