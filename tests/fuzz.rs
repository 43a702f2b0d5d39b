//! Fuzzing the readers a user's files reach: a seeded mutation loop (structure-aware for the safetensors header, which
//! is JSON behind a length) over seven targets — the header and range reader, the config parser, the shard index,
//! the compressed-format loader (a whole compressed checkpoint opened as the page opens it, and the factored matrix a
//! helper worker sends), the policy parser (parsed, checked and planned), `pytorch_model.bin` (its zip directory, its
//! pickle read as data, every tensor) and GPT-2's slow tokenizer files (`vocab.json` and `merges.txt`). Each input must end in `Ok` or `Err`:
//! a panic, an input that runs for more than [`HANG_SECONDS`], one whose peak heap passes [`HEAP_CAP`] (measured by
//! the counting allocator) or that asks for a single allocation above [`HARD_CAP`] fails the target and is written to
//! `target/fuzz/`; committed to `tests/fuzz/corpus/<target>/` it stays a regression input, since every
//! file there is run first.
//!
//! In `cargo test` each target runs [`CI_RUNS`] seeded mutations (a few seconds). For a long run:
//! `tests/fuzz/run.sh SECONDS` (each target for that long, one after the other; `SLC_FUZZ_SECONDS`, `SLC_FUZZ_SEED`).
#![cfg(not(target_arch = "wasm32"))]

use semantic_llm_compressor::alloc::{self, CountingAlloc};
use semantic_llm_compressor::compression::format::decode_factored;
use semantic_llm_compressor::compression::policy::{MatrixInfo, Policy, RankRule};
use semantic_llm_compressor::model::bundle::ModelBundle;
use semantic_llm_compressor::model::checkpoint::{Checkpoint, MemSource, PytorchFile, SafetensorsFile, TensorFile};
use semantic_llm_compressor::model::config::GptNeoConfig;
use semantic_llm_compressor::model::generate::Rng;
use semantic_llm_compressor::session::{MemoryBudget, ModelFiles, Session};
use std::alloc::{GlobalAlloc, Layout};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[path = "fuzz/mutate.rs"]
mod mutate;
use mutate::*;

/// The most heap one input may take at its peak.
const HEAP_CAP: usize = 256 << 20;
/// A single allocation above this fails the input (it is let through, untouched memory costs nothing on Linux, and
/// counted); above [`ABORT_CAP`] it is refused and the process aborts (the input is reproduced by the same seed).
const HARD_CAP: usize = 1 << 30;
const ABORT_CAP: usize = 16 << 30;
static OVER_CAP: AtomicU64 = AtomicU64::new(0);

fn admit(size: usize) -> bool {
    if size > HARD_CAP {
        OVER_CAP.fetch_max(size as u64, Ordering::SeqCst);
    }
    size <= ABORT_CAP
}
const HANG_SECONDS: u64 = 10;
/// Mutations per target in `cargo test`.
const CI_RUNS: usize = 3000;

/// The counting allocator, with single allocations capped.
struct Capped;

unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if !admit(l.size()) {
            return std::ptr::null_mut();
        }
        unsafe { CountingAlloc.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        if !admit(l.size()) {
            return std::ptr::null_mut();
        }
        unsafe { CountingAlloc.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { CountingAlloc.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        if !admit(n) {
            return std::ptr::null_mut();
        }
        unsafe { CountingAlloc.realloc(p, l, n) }
    }
}

#[global_allocator]
static A: Capped = Capped;

/// Peaks are measured per process: one target at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn shared(p: &str) -> PathBuf {
    root().join("../shared").join(p)
}

// ---------- the targets ----------

// Each target returns how deep its input got (0: refused at once, higher: further checks passed), so a run shows
// that its mutations reach past the first parse.

fn header(bytes: &[u8]) -> usize {
    let Ok(f) = SafetensorsFile::open(Box::new(MemSource::new("model.safetensors", bytes.to_vec()))) else { return 0 };
    let _ = f.metadata();
    let mut depth = 1;
    for name in f.names() {
        if let Ok(t) = f.read(&name) {
            depth = depth.max(2);
            if t.to_f32_vec().is_ok() {
                depth = 3;
            }
            let _ = t.to_half_factor();
        }
    }
    depth
}

fn config(bytes: &[u8]) -> usize {
    let Ok(text) = std::str::from_utf8(bytes) else { return 0 };
    let Ok(c) = GptNeoConfig::from_json(text) else { return 1 };
    let _ = c.attention_kinds();
    let _ = (c.intermediate_size(), c.head_dim());
    2
}

fn shard(name: &str, tensor: &str) -> SafetensorsFile {
    let mut header = format!(r#"{{"{tensor}":{{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}}}"#).into_bytes();
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.append(&mut header);
    b.extend_from_slice(&[0; 8]);
    SafetensorsFile::open(Box::new(MemSource::new(name, b))).unwrap()
}

fn index(bytes: &[u8]) -> usize {
    let Ok(text) = std::str::from_utf8(bytes) else { return 0 };
    let files = vec![
        shard("model-00001-of-00002.safetensors", "transformer.wte.weight"),
        shard("model-00002-of-00002.safetensors", "transformer.h.0.mlp.c_fc.weight"),
    ];
    let Ok(c) = Checkpoint::new(files, Some(text)) else { return 1 };
    for n in c.names().cloned().collect::<Vec<_>>() {
        let _ = c.read(&n);
    }
    2
}

/// A compressed checkpoint opened alone, as the page opens one (memory checked against a small tab), and run; and
/// the same bytes as a factored matrix, as a helper's result and as a helper's work.
fn compressed(bytes: &[u8]) -> usize {
    let mut depth = 0;
    let mut s = Session::new(MemoryBudget::new((HEAP_CAP / 2) as f64, None), None);
    let mut files = ModelFiles::default();
    if files.add("compressed.safetensors", Box::new(MemSource::new("compressed.safetensors", bytes.to_vec()))).is_ok()
        && s.open(files).is_ok()
    {
        depth = 2;
        let _ = s.layer_reports();
        let _ = s.memory();
        let which = semantic_llm_compressor::session::Which::Compressed;
        let params =
            semantic_llm_compressor::model::generate::SamplingParams { max_new_tokens: 2, ..Default::default() };
        let _ = s.generate_start(which, "", params).and_then(|_| s.generate_next(which));
        // the model itself, run on a few ids, as long as it is small
        let f = SafetensorsFile::open(Box::new(MemSource::new("compressed.safetensors", bytes.to_vec())));
        let b = f.and_then(|f| ModelBundle::from_checkpoint(None, None, Checkpoint::new(vec![f], None)?));
        if let Ok(b) = b {
            if b.estimate_model_bytes(true) < (HEAP_CAP / 4) as u64
                && b.load_model(false).and_then(|m| m.logits(&[1, 2, 3])).is_ok()
            {
                depth = 3;
            }
        }
    }
    // the same bytes as what a helper sends back, and as what it is sent
    use semantic_llm_compressor::compression::work::{decode_done, decode_work};
    if decode_factored(bytes.to_vec()).is_ok()
        || decode_done(bytes.to_vec()).is_ok()
        || decode_work(bytes.to_vec()).is_ok()
    {
        depth = depth.max(1);
    }
    depth
}

/// A `pytorch_model.bin`: its zip directory and its pickle read, then every tensor.
fn pytorch(bytes: &[u8]) -> usize {
    let Ok(f) = PytorchFile::open(Box::new(MemSource::new("pytorch_model.bin", bytes.to_vec()))) else { return 0 };
    let mut depth = 1;
    for name in f.names() {
        if let Ok(t) = f.read(&name) {
            depth = depth.max(2);
            if t.to_f32_vec().is_ok() {
                depth = 3;
            }
        }
    }
    depth
}

/// GPT-2's slow tokenizer files, `vocab.json` and `merges.txt` joined by a line holding a NUL: the tokenizer built,
/// then a text through it and back.
fn slow(bytes: &[u8]) -> usize {
    let at = bytes.windows(3).position(|w| w == b"\n\0\n").unwrap_or(bytes.len());
    let (vocab, merges) = (&bytes[..at], bytes.get(at + 3..).unwrap_or(&[]));
    let Ok((t, _)) = semantic_llm_compressor::model::tokenizer::Tokenizer::from_slow_files(vocab, merges, None, None)
    else {
        return 0;
    };
    match t.encode("the quick <|endoftext|> brown fox") {
        Ok(ids) if t.decode(&ids).is_ok() => 2,
        _ => 1,
    }
}

/// GPT-Neo-125M's matrices, and trained-like spectra for the policies that need them.
fn matrices() -> (Vec<MatrixInfo>, Vec<Option<Vec<f64>>>) {
    let mut m = Vec::new();
    for l in 0..2 {
        for (n, o, i) in [("attn.attention.q_proj", 768, 768), ("mlp.c_fc", 3072, 768), ("mlp.c_proj", 768, 3072)] {
            m.push(MatrixInfo {
                name: format!("transformer.h.{l}.{n}.weight"),
                out: o,
                inp: i,
                stored_elem_bytes: 4,
                stored_dtype: "F32".into(),
                tied: false,
            });
        }
    }
    let spectra = m.iter().map(|x| Some((0..x.out.min(x.inp)).map(|k| 1.0 / (1.0 + k as f64)).collect())).collect();
    (m, spectra)
}

fn policy(bytes: &[u8]) -> usize {
    let Ok(text) = std::str::from_utf8(bytes) else { return 0 };
    for rule in text.split([',', '\n']).take(8) {
        let _ = RankRule::parse(rule);
    }
    let Ok(p) = serde_json::from_str::<Policy>(text) else { return 0 };
    if p.validate().is_err() {
        return 1;
    }
    let (mats, spectra) = matrices();
    if p.plan(&mats, &spectra).is_ok() {
        3
    } else {
        2
    }
}

// ---------- the loop ----------

/// The seed corpus of a target: the committed files, then `extra` (seeds made from the fixtures).
fn corpus(target: &str, extra: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let dir = root().join("tests/fuzz/corpus").join(target);
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(&dir).map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect()).unwrap_or_default();
    files.sort();
    let mut out: Vec<Vec<u8>> = files.iter().map(|p| std::fs::read(p).unwrap()).collect();
    out.extend(extra);
    assert!(!out.is_empty(), "no seeds for {target} in {}", dir.display());
    out
}

/// Run `f` on `input`: a panic, a hang or a peak above the cap is a failure, and the input is saved.
fn check(
    name: &str,
    f: fn(&[u8]) -> usize,
    input: &[u8],
    started: &AtomicU64,
    clock: Instant,
) -> Result<usize, String> {
    let save = |why: &str| {
        let dir = root().join("target/fuzz");
        std::fs::create_dir_all(&dir).ok();
        let hash = input.iter().fold(0xcbf29ce484222325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100000001b3));
        let p = dir.join(format!("{name}-{hash:016x}"));
        std::fs::write(&p, input).ok();
        format!("{name}: {why}; the input is in {}", p.display())
    };
    started.store(clock.elapsed().as_millis() as u64 + 1, Ordering::SeqCst);
    OVER_CAP.store(0, Ordering::SeqCst);
    let (r, _, peak) = alloc::measure(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(input))));
    started.store(0, Ordering::SeqCst);
    let Ok(depth) = r else { return Err(save("panicked")) };
    let over = OVER_CAP.load(Ordering::SeqCst);
    if over > 0 {
        return Err(save(&format!("asked for one allocation of {over} bytes (the cap is {HARD_CAP})")));
    }
    if peak > HEAP_CAP {
        return Err(save(&format!("took {peak} bytes of heap at its peak (the cap is {HEAP_CAP})")));
    }
    Ok(depth)
}

/// Every seed, then mutations until `SLC_FUZZ_SECONDS` pass (or [`CI_RUNS`] of them when it is unset).
fn fuzz(name: &str, f: fn(&[u8]) -> usize, shape: Shape, extra: Vec<Vec<u8>>) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let seeds = corpus(name, extra);
    let seconds: Option<u64> = std::env::var("SLC_FUZZ_SECONDS").ok().and_then(|s| s.parse().ok());
    let seed: u64 = std::env::var("SLC_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let mut rng = Rng::new(seed ^ name.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64)));
    // the watchdog: an input that runs longer than HANG_SECONDS ends the process, its bytes in target/fuzz/
    let clock = Instant::now();
    let started: &'static AtomicU64 = Box::leak(Box::new(AtomicU64::new(0)));
    // the input running now, for the watchdog to leave behind
    static CURRENT: Mutex<Option<std::sync::Arc<Vec<u8>>>> = Mutex::new(None);
    let current = root().join("target/fuzz").join(format!("{name}.current"));
    std::fs::create_dir_all(current.parent().unwrap()).unwrap();
    let done: &'static std::sync::atomic::AtomicBool = Box::leak(Box::new(std::sync::atomic::AtomicBool::new(false)));
    let (label, watched) = (name.to_string(), current.clone());
    let watchdog = std::thread::spawn(move || {
        while !done.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(200));
            let s = started.load(Ordering::SeqCst);
            if s > 0 && clock.elapsed().as_millis() as u64 > s + HANG_SECONDS * 1000 {
                if let Some(input) = CURRENT.lock().ok().and_then(|c| c.clone()) {
                    std::fs::write(&watched, input.as_slice()).ok();
                }
                eprintln!("{label}: an input ran for more than {HANG_SECONDS} s; it is in {}", watched.display());
                std::process::abort();
            }
        }
    });
    let mut runs = 0usize;
    let mut failures = Vec::new();
    let mut depths = [0usize; 4];
    for s in &seeds {
        if let Err(e) = check(name, f, s, started, clock) {
            failures.push(e);
        }
    }
    let deadline = seconds.map(|s| clock + Duration::from_secs(s));
    while failures.len() < 5 && deadline.map_or(runs < CI_RUNS, |d| Instant::now() < d) {
        let mut input = seeds[(rng.next_u64() % seeds.len() as u64) as usize].clone();
        mutate(&mut rng, shape, &mut input, &seeds);
        let input = std::sync::Arc::new(input);
        *CURRENT.lock().unwrap_or_else(|e| e.into_inner()) = Some(input.clone());
        match check(name, f, &input, started, clock) {
            Ok(d) => depths[d.min(3)] += 1,
            Err(e) => failures.push(e),
        }
        runs += 1;
    }
    done.store(true, Ordering::SeqCst);
    watchdog.join().ok();
    eprintln!(
        "fuzz {name}: {} seeds and {runs} mutations in {:.1} s (seed {seed}), {} failures; depth reached 0/1/2/3: {:?}",
        seeds.len(),
        clock.elapsed().as_secs_f64(),
        failures.len(),
        depths
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn fixture(p: &str) -> Vec<u8> {
    std::fs::read(shared(p)).unwrap()
}

#[test]
fn fuzz_header() {
    // the demo's header with a few bytes of data per tensor is too large to run quickly; the tiny fixture is not
    fuzz("header", header, Shape::Safetensors, vec![fixture("fixtures/tiny-gpt-neo-v512/model.safetensors")]);
}

#[test]
fn fuzz_config() {
    fuzz("config", config, Shape::Text, vec![std::fs::read(root().join("tests/configs/gpt-neo-1.3B.json")).unwrap()]);
}

#[test]
fn fuzz_index() {
    fuzz("index", index, Shape::Text, vec![]);
}

#[test]
fn fuzz_compressed() {
    fuzz("compressed", compressed, Shape::Safetensors, vec![]);
}

#[test]
fn fuzz_pytorch() {
    fuzz("pytorch", pytorch, Shape::Bytes, vec![]);
}

#[test]
fn fuzz_slow() {
    fuzz("slow", slow, Shape::Text, vec![]);
}

#[test]
fn fuzz_policy() {
    let defaults = serde_json::to_vec(&Policy::default()).unwrap();
    fuzz("policy", policy, Shape::Text, vec![defaults]);
}

/// Writes the seeds that are made, not hand-written: the tiny model compressed (INT8 per-row and per-tensor, f32
/// factors) and a factored matrix as a helper sends it. `cargo test --release --test fuzz -- --ignored write_seeds`
#[test]
#[ignore]
fn write_seeds() {
    use semantic_llm_compressor::compression::driver::compress_checkpoint;
    use semantic_llm_compressor::compression::format::Export;
    use semantic_llm_compressor::compression::policy::Method;
    use semantic_llm_compressor::model::storage::QuantScheme;
    let dir = root().join("tests/fuzz/corpus/compressed");
    std::fs::create_dir_all(&dir).unwrap();
    let config = String::from_utf8(fixture("fixtures/tiny-gpt-neo-v512/config.json")).unwrap();
    let open = || {
        let f = SafetensorsFile::open(Box::new(MemSource::new(
            "model.safetensors",
            fixture("fixtures/tiny-gpt-neo-v512/model.safetensors"),
        )))
        .unwrap();
        ModelBundle::from_checkpoint(Some(&config), None, Checkpoint::new(vec![f], None).unwrap()).unwrap()
    };
    for (file, policy) in [
        ("tiny-rank4-int8-per-row.safetensors", Policy { rank: 4, ..Default::default() }),
        (
            "tiny-rank4-int8-per-tensor.safetensors",
            Policy { rank: 4, quant: QuantScheme::PerTensor, ..Default::default() },
        ),
        ("tiny-rank4-f32.safetensors", Policy { rank: 4, quant_bits: 32, ..Default::default() }),
        ("tiny-int8.safetensors", Policy { method: Method::Int8, ..Default::default() }),
    ] {
        let b = open();
        let c = compress_checkpoint(&b.cfg, &b.ckpt, policy, None, &mut |_| {}).unwrap();
        let e = Export::new(&b.ckpt, &config, None, &c.weights, &c.reports, &c.policy).unwrap();
        std::fs::write(dir.join(file), e.to_bytes(&b.ckpt).unwrap()).unwrap();
    }
    // a factored matrix as a helper worker sends it to its coordinator
    let mut session = Session::new(MemoryBudget::new(1e9, None), None);
    let mut files = ModelFiles::default();
    files.add("config.json", Box::new(MemSource::new("config.json", config.clone().into_bytes()))).unwrap();
    let weights = fixture("fixtures/tiny-gpt-neo-v512/model.safetensors");
    files.add("model.safetensors", Box::new(MemSource::new("model.safetensors", weights))).unwrap();
    session.open(files).unwrap();
    session.compress_begin(Policy { rank: 4, ..Default::default() }, None).unwrap();
    let work = session.compress_work_out(0).unwrap();
    std::fs::write(dir.join("work-factor-0.safetensors"), &work).unwrap();
    std::fs::write(dir.join("done-factor-0.safetensors"), session.run_work(work).unwrap()).unwrap();
}
