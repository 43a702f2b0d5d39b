//! Nothing a user's file can reach may panic: damaged checkpoints, configs and compressed files give errors.
#![cfg(not(target_arch = "wasm32"))]

use semantic_llm_compressor::bundle::ModelBundle;
use semantic_llm_compressor::checkpoint::{Checkpoint, MemSource, SafetensorsFile};
use semantic_llm_compressor::generate::Rng;
use std::path::PathBuf;

fn shared(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared").join(p)
}

/// Open, load and run a model from bytes; Ok or Err are both fine, a panic is not.
fn try_all(config: &str, weights: Vec<u8>) -> Result<(), String> {
    let run = || -> semantic_llm_compressor::Result<()> {
        let f = SafetensorsFile::open(Box::new(MemSource::new("model.safetensors", weights)))?;
        let b = ModelBundle::from_checkpoint(Some(config), None, Checkpoint::new(vec![f], None)?)?;
        b.summary()?;
        let m = b.load_model(false)?;
        m.logits(&[1, 2, 3])?;
        Ok(())
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => panic!("a damaged file made the program panic"),
    }
}

#[test]
fn damaged_checkpoints_are_errors_not_panics() {
    let dir = shared("fixtures/tiny-gpt-neo-v512");
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let good = std::fs::read(dir.join("model.safetensors")).unwrap();
    assert!(try_all(&config, good.clone()).is_ok());
    let header_len = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let mut rng = Rng::new(1);
    let mut errors = 0;
    for i in 0..300 {
        let mut bytes = good.clone();
        match i % 4 {
            // truncate anywhere
            0 => bytes.truncate((rng.next_u64() as usize) % good.len()),
            // flip bytes in the header
            1 => {
                for _ in 0..3 {
                    let k = 8 + (rng.next_u64() as usize) % header_len;
                    bytes[k] ^= 1 << (rng.next_u64() % 8);
                }
            }
            // a wrong header length
            2 => bytes[..8].copy_from_slice(&((rng.next_u64() % (2 * good.len() as u64)) as u64).to_le_bytes()),
            // non-finite weights
            _ => {
                for _ in 0..4 {
                    let k = 8 + header_len + ((rng.next_u64() as usize) % (good.len() - 8 - header_len)) / 4 * 4;
                    bytes[k..k + 4].copy_from_slice(&f32::NAN.to_le_bytes());
                }
            }
        }
        if let Err(e) = try_all(&config, bytes) {
            assert!(!e.is_empty());
            errors += 1;
        }
    }
    assert!(errors > 100, "most damaged files should be refused, {errors} were");
}

#[test]
fn damaged_configs_are_errors_not_panics() {
    let dir = shared("fixtures/tiny-gpt-neo-v512");
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let good = std::fs::read(dir.join("model.safetensors")).unwrap();
    for (from, to) in [
        ("\"num_heads\": 4", "\"num_heads\": 3"),
        ("\"num_heads\": 4", "\"num_heads\": 0"),
        ("\"window_size\": 8", "\"window_size\": 0"),
        ("\"max_position_embeddings\": 128", "\"max_position_embeddings\": 2"),
        ("\"vocab_size\": 512", "\"vocab_size\": 2"),
        ("\"hidden_size\": 64", "\"hidden_size\": 32"),
        ("\"num_layers\": 4", "\"num_layers\": 2"),
        ("\"gelu_new\"", "\"swish\""),
        ("\"global\",", "\"sliding\","),
        ("\"layer_norm_epsilon\": 1e-05", "\"layer_norm_epsilon\": -1"),
    ] {
        assert!(config.contains(from), "{from}");
        let e = try_all(&config.replace(from, to), good.clone()).expect_err(to);
        assert!(e.contains("config.json") || e.contains("tensor") || e.contains("token"), "{to}: {e}");
    }
}
