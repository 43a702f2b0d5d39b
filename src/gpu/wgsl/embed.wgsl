// The token and position embeddings: y[t, c] = wte[ids[t], c] + wpe[pos0 + t, c], for the ids that fall in this
// chunk of wte's rows (row0..row0 + rows); a token embedding split over several chunks takes one dispatch each.

struct Params {
    t: u32,
    d: u32,
    row0: u32,
    rows: u32,
    pos0: u32,
    zp: i32,
}

@group(0) @binding(0) var<storage, read> ids: array<u32>;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> wscale: array<f32>;
@group(0) @binding(3) var<storage, read> wpe: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<uniform> p: Params;

fn word(i: u32) -> u32 {
    return w[i];
}

fn zero_point() -> i32 {
    return p.zp;
}

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let idx = gid.x + gid.y * 65535u * 256u;
    if (idx >= p.t * p.d) {
        return;
    }
    let t = idx / p.d;
    let c = idx % p.d;
    let id = ids[t];
    if (id < p.row0 || id >= p.row0 + p.rows) {
        return;
    }
    y[idx] = weight(id - p.row0, c, p.d) + wpe[(p.pos0 + t) * p.d + c];
}
