//! The mutations: structure-aware for text (JSON, configs, merges), bytes, and the safetensors header.

use super::*;

pub(super) const NUMBERS: [&str; 16] = [
    "0",
    "1",
    "-1",
    "2",
    "8",
    "255",
    "65536",
    "4294967295",
    "4294967296",
    "9007199254740993",
    "18446744073709551615",
    "18446744073709551616",
    "1e309",
    "-0.0",
    "0.5",
    "NaN",
];
pub(super) const STRINGS: [&str; 38] = [
    "rank",
    "budget",
    "energy",
    "skip",
    "rank_for",
    "pattern",
    "method",
    "quant",
    "quant_bits",
    "budget_mode",
    "budget_unit",
    "damp",
    "probe",
    "calibration_tokens",
    "svd",
    "whitened",
    "refit",
    "int8",
    "per-row",
    "per-tensor",
    "loss",
    "uniform",
    "params",
    "bytes",
    "F32",
    "F16",
    "BF16",
    "I8",
    "I32",
    "BOOL",
    "F33",
    "",
    "__metadata__",
    "gpt_neo",
    "global",
    "local",
    "transformer.wte.weight",
    "slc-compressed-v1",
];

pub(super) fn pick<'a>(rng: &mut Rng, xs: &[&'a str]) -> &'a str {
    xs[(rng.next_u64() % xs.len() as u64) as usize]
}

/// Spans of JSON numbers and strings in `text`, for mutations that keep it JSON-like.
pub(super) fn tokens(text: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < text.len() {
        let c = text[i];
        if c == b'"' {
            let s = i;
            i += 1;
            while i < text.len() && text[i] != b'"' {
                i += if text[i] == b'\\' { 2 } else { 1 };
            }
            out.push((s, (i + 1).min(text.len())));
        } else if c == b'-' || c.is_ascii_digit() {
            let s = i;
            while i < text.len() && matches!(text[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') {
                i += 1;
            }
            out.push((s, i));
            continue;
        }
        i += 1;
    }
    out
}

pub(super) fn mutate_text(rng: &mut Rng, t: &mut Vec<u8>) {
    let toks = tokens(t);
    match rng.next_u64() % 6 {
        0 | 1 if !toks.is_empty() => {
            let (a, b) = toks[(rng.next_u64() % toks.len() as u64) as usize];
            let by =
                if t[a] == b'"' { format!("\"{}\"", pick(rng, &STRINGS)) } else { pick(rng, &NUMBERS).to_string() };
            t.splice(a..b, by.into_bytes());
        }
        2 if !toks.is_empty() => {
            // an entry repeated (duplicate keys, doubled values)
            let (a, b) = toks[(rng.next_u64() % toks.len() as u64) as usize];
            let piece = t[a..b].to_vec();
            let at = (rng.next_u64() as usize) % (t.len() + 1);
            t.splice(at..at, piece);
        }
        3 => {
            let at = (rng.next_u64() as usize) % (t.len() + 1);
            let c = [b'{', b'}', b'[', b']', b',', b':', b'"', b'\\', 0xff][(rng.next_u64() % 9) as usize];
            t.insert(at, c);
        }
        _ if !t.is_empty() => {
            let a = (rng.next_u64() as usize) % t.len();
            let b = (a + 1 + (rng.next_u64() as usize) % 16).min(t.len());
            t.drain(a..b);
        }
        _ => {}
    }
}

pub(super) fn mutate_bytes(rng: &mut Rng, b: &mut Vec<u8>) {
    if b.is_empty() {
        b.push(rng.next_u64() as u8);
        return;
    }
    // most faults that matter sit near the start (the length and the header)
    let near = |rng: &mut Rng, len: usize| {
        if !rng.next_u64().is_multiple_of(4) {
            (rng.next_u64() as usize) % len.min(4096)
        } else {
            (rng.next_u64() as usize) % len
        }
    };
    match rng.next_u64() % 6 {
        0 => {
            let k = near(rng, b.len());
            b[k] ^= 1 << (rng.next_u64() % 8);
        }
        1 => {
            let k = near(rng, b.len());
            b[k] = [0, 1, 0x7f, 0x80, 0xff][(rng.next_u64() % 5) as usize];
        }
        2 => {
            let n = b.len() as u64;
            let v = [0, 1, 7, 8, n, n - 1, n + 1, 1 << 32, 1 << 63, u64::MAX][(rng.next_u64() % 10) as usize];
            let k = if rng.next_u64().is_multiple_of(2) { 0 } else { near(rng, b.len()) };
            let end = (k + 8).min(b.len());
            b[k..end].copy_from_slice(&v.to_le_bytes()[..end - k]);
        }
        3 => {
            let k = (rng.next_u64() as usize) % b.len();
            b.truncate(k);
        }
        4 => {
            let a = near(rng, b.len());
            let len = ((rng.next_u64() as usize) % 64).min(b.len() - a);
            let piece = b[a..a + len].to_vec();
            let at = near(rng, b.len());
            b.splice(at..at, piece);
        }
        _ => {
            let a = near(rng, b.len());
            let e = (a + 1 + (rng.next_u64() as usize) % 64).min(b.len());
            b.drain(a..e);
        }
    }
}

/// A safetensors file with its header JSON mutated and (mostly) its length field fixed up, so mutations reach the
/// checks behind the JSON parse.
pub(super) fn mutate_header(rng: &mut Rng, b: &mut Vec<u8>) -> bool {
    if b.len() < 8 {
        return false;
    }
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    if n == 0 || n.checked_add(8).is_none_or(|e| e > b.len()) {
        return false;
    }
    let mut json = b[8..8 + n].to_vec();
    mutate_text(rng, &mut json);
    let len = if rng.next_u64().is_multiple_of(8) { n } else { json.len() };
    let mut out = (len as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    out.extend_from_slice(&b[8 + n..]);
    *b = out;
    true
}

#[derive(Clone, Copy, PartialEq)]
pub(super) enum Shape {
    Text,
    Safetensors,
    Bytes,
}

pub(super) fn mutate(rng: &mut Rng, shape: Shape, input: &mut Vec<u8>, corpus: &[Vec<u8>]) {
    // one or two changes mostly (more break the JSON before anything behind it is reached), now and then up to six
    let n = if rng.next_u64().is_multiple_of(4) { 1 + rng.next_u64() % 6 } else { 1 + rng.next_u64() % 2 };
    for _ in 0..n {
        match (shape, rng.next_u64() % 10) {
            (Shape::Text, 0..=6) => mutate_text(rng, input),
            (Shape::Safetensors, 0..=5) => {
                if !mutate_header(rng, input) {
                    mutate_bytes(rng, input)
                }
            }
            (_, 9) if corpus.len() > 1 => {
                // splice: the head of this input and the tail of another
                let other = &corpus[(rng.next_u64() % corpus.len() as u64) as usize];
                let (a, c) =
                    ((rng.next_u64() as usize) % (input.len() + 1), (rng.next_u64() as usize) % (other.len() + 1));
                input.truncate(a);
                input.extend_from_slice(&other[c..]);
            }
            _ => mutate_bytes(rng, input),
        }
    }
}
