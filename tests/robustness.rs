//! Nothing a user's file can reach may panic: damaged checkpoints, configs and compressed files give errors.
#![cfg(not(target_arch = "wasm32"))]

use semantic_llm_compressor::model::bundle::ModelBundle;
use semantic_llm_compressor::model::checkpoint::{Checkpoint, MemSource, SafetensorsFile};
use semantic_llm_compressor::model::generate::Rng;
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

/// The tensors of a safetensors file's header: name → (start, end) of its data, relative to the data section.
fn tensor_ranges(bytes: &[u8]) -> Vec<(String, usize, usize)> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let mut out: Vec<(String, usize, usize)> = header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| {
            let o = &v["data_offsets"];
            (k.clone(), o[0].as_u64().unwrap() as usize, o[1].as_u64().unwrap() as usize)
        })
        .collect();
    out.sort_by_key(|t| t.1);
    out
}

/// Every kind of damage is refused with a message that names what is at fault: every truncation names the file,
/// every wrong header length names the file and its header, every NaN names the tensor that holds it, and a flipped
/// header byte names the file or the tensor it spoiled.
#[test]
fn damaged_checkpoints_are_refused_with_what_is_at_fault() {
    let dir = shared("fixtures/tiny-gpt-neo-v512");
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let good = std::fs::read(dir.join("model.safetensors")).unwrap();
    assert!(try_all(&config, good.clone()).is_ok());
    let header_len = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let tensors = tensor_ranges(&good);
    let mut rng = Rng::new(1);
    let mut counts = [0usize; 4];
    let mut flips_accepted = 0;
    for i in 0..400 {
        let mut bytes = good.clone();
        let case = i % 4;
        counts[case] += 1;
        match case {
            // truncate anywhere: always refused, naming the file
            0 => {
                let at = (rng.next_u64() as usize) % good.len();
                bytes.truncate(at);
                let e = try_all(&config, bytes).expect_err(&format!("truncated to {at} bytes"));
                assert!(e.starts_with("model.safetensors: "), "truncated to {at} bytes: {e}");
            }
            // flip bits in the header: refused naming the file or a tensor, or harmless (still loads and runs)
            1 => {
                for _ in 0..3 {
                    let k = 8 + (rng.next_u64() as usize) % header_len;
                    bytes[k] ^= 1 << (rng.next_u64() % 8);
                }
                match try_all(&config, bytes) {
                    Ok(()) => flips_accepted += 1,
                    Err(e) => assert!(
                        e.starts_with("model.safetensors: ")
                            || e.starts_with("tensor `")
                            || e.starts_with("config.json: "),
                        "a flipped header: {e}"
                    ),
                }
            }
            // a wrong header length: refused, naming the file
            2 => {
                let mut n = rng.next_u64() % (2 * good.len() as u64);
                if n == header_len as u64 {
                    n += 1;
                }
                bytes[..8].copy_from_slice(&n.to_le_bytes());
                let e = try_all(&config, bytes).expect_err(&format!("header length {n}"));
                assert!(e.starts_with("model.safetensors: "), "header length {n}: {e}");
            }
            // a NaN or infinity in one tensor's data: refused, naming that tensor
            _ => {
                let (name, a, b) = &tensors[(rng.next_u64() as usize) % tensors.len()];
                let k = 8 + header_len + a + ((rng.next_u64() as usize) % ((b - a) / 4)) * 4;
                let bad = if rng.next_u64().is_multiple_of(2) { f32::NAN } else { f32::INFINITY };
                bytes[k..k + 4].copy_from_slice(&bad.to_le_bytes());
                let e = try_all(&config, bytes).expect_err(&format!("{bad} in {name}"));
                assert!(e.contains(&format!("`{name}`")), "{bad} in {name}: {e}");
            }
        }
    }
    assert_eq!(counts, [100; 4]);
    eprintln!("header flips that left a loadable model: {flips_accepted} of 100");
}

/// Each damaged config is refused with a message naming the key at fault (or, where the config is self-consistent
/// but disagrees with the weights, the tensor whose shape it contradicts).
#[test]
fn damaged_configs_are_refused_naming_the_key() {
    let dir = shared("fixtures/tiny-gpt-neo-v512");
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let good = std::fs::read(dir.join("model.safetensors")).unwrap();
    for (from, to, names) in [
        ("\"num_heads\": 4", "\"num_heads\": 3", &["config.json: ", "num_heads"][..]),
        ("\"num_heads\": 4", "\"num_heads\": 0", &["config.json: ", "num_heads"]),
        ("\"window_size\": 8", "\"window_size\": 0", &["config.json: ", "window_size"]),
        (
            "\"max_position_embeddings\": 128",
            "\"max_position_embeddings\": 2",
            &["tensor `transformer.wpe.weight`", "[2, 64]"],
        ),
        ("\"vocab_size\": 512", "\"vocab_size\": 2", &["tensor `transformer.wte.weight`", "[2, 64]"]),
        ("\"hidden_size\": 64", "\"hidden_size\": 32", &["tensor `transformer.", "32"]),
        ("\"num_layers\": 4", "\"num_layers\": 2", &["config.json: ", "num_layers"]),
        ("\"gelu_new\"", "\"swish\"", &["config.json: ", "activation_function", "swish"]),
        ("\"global\",", "\"sliding\",", &["config.json: ", "sliding"]),
        ("\"layer_norm_epsilon\": 1e-05", "\"layer_norm_epsilon\": -1", &["config.json: ", "layer_norm_epsilon"]),
    ] {
        assert!(config.contains(from), "{from}");
        let e = try_all(&config.replace(from, to), good.clone()).expect_err(to);
        for n in names {
            assert!(e.contains(n), "{to}: the message should name {n}: {e}");
        }
    }
}
