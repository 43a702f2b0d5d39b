// What the product kernels (linear, gemv, rows) share: their parameters, the bindings after x and W, and the
// epilogue, which applies in this order and as `mode` asks: a per-column scale (1), a bias (2), gelu_new (4),
// accumulation into y (8). Each kernel binds x (0) and W (1) itself, with the word width it reads.

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

@group(0) @binding(2) var<storage, read> wscale: array<f32>;
@group(0) @binding(3) var<storage, read> vecb: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<uniform> p: Params;

fn zero_point() -> i32 {
    return p.zp;
}

fn gelu_new(v: f32) -> f32 {
    let u = 0.7978846 * (v + 0.044715 * v * v * v);
    return v / (1.0 + exp(-2.0 * u));
}

// Output (t, n) of this chunk, `v`, through the epilogue into y.
fn epilogue(value: f32, t: u32, n: u32) {
    let col = p.n0 + n;
    var v = value;
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
