// The adapter's own bounds, measured in the same run as the kernels they bound: `copy`, `copy16` and `read16` move a
// buffer (the fastest one's bytes read and written per second are the bandwidth bound) and `madd` runs independent
// multiply-adds from registers (operations per second, counting a multiply-add as two, are the throughput bound).

struct Params {
    n: u32,        // vec4s to copy, or iterations per invocation
    seed: f32,
}

@group(0) @binding(0) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> dst: array<vec4<f32>>;
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(256)
fn copy(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let stride = nw.x * 256u;
    for (var i = gid.x; i < p.n; i += stride) {
        dst[i] = src[i];
    }
}

@compute @workgroup_size(256)
fn madd(@builtin(global_invocation_id) gid: vec3<u32>) {
    var a = vec4<f32>(f32(gid.x) * 1e-9, 0.5, 0.25, 0.125);
    var b = a + vec4<f32>(0.1);
    var c = a + vec4<f32>(0.2);
    var d = a + vec4<f32>(0.3);
    var e = a + vec4<f32>(0.4);
    var f = a + vec4<f32>(0.5);
    var g = a + vec4<f32>(0.6);
    var h = a + vec4<f32>(0.7);
    let m = vec4<f32>(p.seed);
    let k = vec4<f32>(0.5);
    for (var i = 0u; i < p.n; i++) {
        a = fma(a, m, k);
        b = fma(b, m, k);
        c = fma(c, m, k);
        d = fma(d, m, k);
        e = fma(e, m, k);
        f = fma(f, m, k);
        g = fma(g, m, k);
        h = fma(h, m, k);
    }
    dst[gid.x] = a + b + c + d + e + f + g + h;
}

// The same copy with each invocation moving 16 consecutive vec4s at a time (the layout the rows kernels read W in).
@compute @workgroup_size(64)
fn copy16(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let stride = nw.x * 64u * 16u;
    for (var i = gid.x * 16u; i + 15u < p.n; i += stride) {
        let a = array<vec4<f32>, 16>(src[i], src[i + 1u], src[i + 2u], src[i + 3u], src[i + 4u], src[i + 5u],
            src[i + 6u], src[i + 7u], src[i + 8u], src[i + 9u], src[i + 10u], src[i + 11u], src[i + 12u],
            src[i + 13u], src[i + 14u], src[i + 15u]);
        for (var j = 0u; j < 16u; j++) {
            dst[i + j] = a[j];
        }
    }
}

// Reading alone: each invocation sums 16 consecutive vec4s at a time and writes one vec4.
@compute @workgroup_size(64)
fn read16(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let stride = nw.x * 64u * 16u;
    var acc = vec4<f32>(0.0);
    for (var i = gid.x * 16u; i + 15u < p.n; i += stride) {
        for (var j = 0u; j < 16u; j++) {
            acc += src[i + j];
        }
    }
    dst[gid.x] = acc;
}
