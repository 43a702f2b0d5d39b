//! Memory, measured: with the counting allocator as this test binary's global allocator, a compressed model loaded
//! from its exported file holds about as many heap bytes as the file's tensors take (INT8 stays INT8; dense tensors
//! stay in their stored dtype).
#![cfg(not(target_arch = "wasm32"))]

use semantic_llm_compressor::alloc::{self, CountingAlloc};
use semantic_llm_compressor::compression::driver::compress_checkpoint;
use semantic_llm_compressor::compression::format::Export;
use semantic_llm_compressor::compression::policy::Policy;
use semantic_llm_compressor::model::bundle::ModelBundle;
use std::path::PathBuf;

#[global_allocator]
static A: CountingAlloc = CountingAlloc;

fn shared(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared").join(p)
}

/// Bytes a loaded compressed model may hold beyond its stored tensor bytes.
const MAX_OVERHEAD: i64 = 700_000;

#[test]
fn compressed_model_resident_bytes_are_its_stored_bytes() {
    let src = shared("models/neo-bard-8l");
    let b = ModelBundle::open_dir(&src).unwrap();
    let config = std::fs::read_to_string(src.join("config.json")).unwrap();
    for policy in [
        Policy { rank: 32, ..Default::default() },
        Policy { rank: 32, skip: vec!["mlp.c_fc".into(), "mlp.c_proj".into()], ..Default::default() },
        Policy { method: semantic_llm_compressor::compression::policy::Method::Int8, ..Default::default() },
    ] {
        let c = compress_checkpoint(&b.cfg, &b.ckpt, policy, None, &mut |_| {}).unwrap();
        let dir = std::env::temp_dir().join(format!("slc-memory-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let export = Export::new(&b.ckpt, &config, None, &c.weights, &c.reports, &c.policy).unwrap();
        std::fs::write(dir.join("model.safetensors"), export.to_bytes(&b.ckpt).unwrap()).unwrap();
        drop(c);
        let cb = ModelBundle::open_dir(&dir).unwrap();
        let stored = cb.tensor_bytes();
        let (model, resident, peak) = alloc::measure(|| cb.load_model(false).unwrap());
        let over = resident as i64 - stored as i64;
        eprintln!("stored {stored} B, resident {resident} B ({over:+} B), peak while loading {peak} B");
        // What a loaded model holds besides its tensors is a constant ~0.6 MB (measured: 593,492–603,476 B for these
        // three policies): tensor headers, the layer names, candle's storage. Rank-32 factors held in f16 instead of
        // INT8 would add ~1.2 MB; anything expanded to f32 far more.
        assert!((0..=MAX_OVERHEAD).contains(&over), "resident {resident} B vs stored {stored} B: {over:+} B");
        // running it must not keep anything expanded: the scratch of a forward pass is freed (the first pass may
        // initialise candle's lazy statics, so measure the second)
        let _ = model.logits(&[1, 2, 3, 4]).unwrap();
        let before = alloc::live_bytes();
        let (logits, left, peak) = alloc::measure(|| model.logits(&[1, 2, 3, 4]).unwrap());
        eprintln!("a forward pass of 4 tokens: peak {peak} B above the model, {left} B left (the logits)");
        assert!(left >= 4 * 50257 * 4, "the logits ({left} B) are counted");
        assert!(left <= 4 * 50257 * 4 + 4096, "a forward pass left {left} B behind");
        drop(logits);
        let after = alloc::live_bytes();
        assert!(
            after <= before + 4096,
            "{} B stay allocated after the logits are dropped",
            after as i64 - before as i64
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
