// How a chunk of a weight matrix is stored (`override KIND`), and its element (r, c) as f32: rows of `cols`
// elements, row-major, in 32-bit words (word `i` is what the including kernel's `word(i)` reads). 0: f32; 1: f16 in
// pairs (low half first); 2: bf16 in pairs; 3: INT8 codes four to a word (lowest byte first) with one scale per row;
// 4: INT8 codes with one scale and one zero point.
override KIND: u32 = 0u;

// The code of element `e` (sign-extended from its byte).
fn code(e: u32) -> i32 {
    return bitcast<i32>(word(e >> 2u) << (24u - 8u * (e & 3u))) >> 24u;
}

// The four codes of a word, lowest byte first (sign-extended).
fn codes4(word: u32) -> vec4<f32> {
    return vec4<f32>(f32(bitcast<i32>(word << 24u) >> 24u), f32(bitcast<i32>(word << 16u) >> 24u),
                     f32(bitcast<i32>(word << 8u) >> 24u), f32(bitcast<i32>(word) >> 24u));
}

fn weight(r: u32, c: u32, cols: u32) -> f32 {
    let e = r * cols + c;
    switch KIND {
        case 0u: {
            return bitcast<f32>(word(e));
        }
        case 1u: {
            let v = unpack2x16float(word(e >> 1u));
            return select(v.x, v.y, (e & 1u) == 1u);
        }
        case 2u: {
            let h = word(e >> 1u);
            return bitcast<f32>(select(h << 16u, h & 0xffff0000u, (e & 1u) == 1u));
        }
        case 3u: {
            return f32(code(e)) * wscale[r];
        }
        default: {
            return f32(code(e) - zero_point()) * wscale[0];
        }
    }
}

// Element (r, c) without its scale: the value for f32 and halves, the code (less the zero point) for INT8, whose
// scale `row_factor` gives.
fn raw(r: u32, c: u32, cols: u32) -> f32 {
    let e = r * cols + c;
    switch KIND {
        case 3u: {
            return f32(code(e));
        }
        case 4u: {
            return f32(code(e) - zero_point());
        }
        default: {
            return weight(r, c, cols);
        }
    }
}

// What `raw` elements of row `r` are multiplied by.
fn row_factor(r: u32) -> f32 {
    switch KIND {
        case 3u: {
            return wscale[r];
        }
        case 4u: {
            return wscale[0];
        }
        default: {
            return 1.0;
        }
    }
}
