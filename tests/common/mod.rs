//! Golden checks shared by the native tests (tests/native.rs) and the browser tests (tests/web.rs): each takes the
//! fixture files as bytes, so the browser build can embed them with `include_bytes!`.
#![allow(dead_code)]

use candle_core::{Device, Tensor};
use semantic_llm_compressor::model::bundle::ModelBundle;
use semantic_llm_compressor::model::checkpoint::{Checkpoint, MemSource, SafetensorsFile};
use semantic_llm_compressor::model::generate::{generate, greedy_no_cache, SamplingParams};
use semantic_llm_compressor::model::gpt_neo::GptNeo;
use semantic_llm_compressor::model::tokenizer::Tokenizer;

pub fn open(name: &str, bytes: &[u8]) -> SafetensorsFile {
    SafetensorsFile::open(Box::new(MemSource::new(name, bytes.to_vec()))).expect("open safetensors")
}

pub fn bundle(config: &str, tokenizer: Option<&[u8]>, weights: &[u8]) -> ModelBundle {
    let ck = Checkpoint::new(vec![open("model.safetensors", weights)], None).unwrap();
    ModelBundle::from_parts(config, tokenizer, ck).unwrap()
}

fn f32s(f: &SafetensorsFile, name: &str) -> Vec<f32> {
    f.read(name).unwrap().to_f32_vec().unwrap()
}

fn i64s(f: &SafetensorsFile, name: &str) -> Vec<u32> {
    f.read(name).unwrap().data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32).collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// tiny-gpt-neo-v512: logits within 5e-5 of transformers for both sequences, every hidden state, and the 20 greedy
/// ids with and without the KV cache.
pub fn check_tiny(config: &str, weights: &[u8], reference: &[u8]) {
    let b = bundle(config, None, weights);
    let model = b.load_model(false).unwrap();
    let r = open("reference.safetensors", reference);
    for k in 0..2 {
        let ids = i64s(&r, &format!("input_ids.{k}"));
        let t = Tensor::from_slice(&ids, (1, ids.len()), &Device::Cpu).unwrap();
        let (logits, hidden) = model.forward_with_hidden(&t).unwrap();
        let d = max_abs_diff(&flat(&logits), &f32s(&r, &format!("logits.{k}")));
        assert!(d < 5e-5, "sequence {k}: logits differ by {d}");
        assert_eq!(hidden.len(), model.cfg.num_layers + 1);
        for (l, h) in hidden.iter().enumerate() {
            let d = max_abs_diff(&flat(h), &f32s(&r, &format!("hidden_states.{k}.{l}")));
            assert!(d < 5e-5, "sequence {k}, hidden state {l}: differs by {d}");
        }
        let want = i64s(&r, &format!("greedy_ids.{k}"));
        let cached =
            generate(&model, &ids, SamplingParams { max_new_tokens: 20, stop_at_eos: false, ..Default::default() })
                .unwrap();
        assert_eq!(cached, want, "sequence {k}: greedy ids with the KV cache");
        assert_eq!(greedy_no_cache(&model, &ids, 20).unwrap(), want, "sequence {k}: greedy ids without the cache");
    }
}

/// The GPT-2 tokenizer gives the fixture ids exactly and decodes them back, with merges as strings and as pairs.
pub fn check_tokenizer(tokenizer_json: &[u8], fixtures_json: &str) {
    let cases: Vec<serde_json::Value> = serde_json::from_str(fixtures_json).unwrap();
    // The same tokenizer with its merges rewritten as pairs, as newer `tokenizers` write them.
    let mut as_pairs: serde_json::Value = serde_json::from_slice(tokenizer_json).unwrap();
    let merges = as_pairs["model"]["merges"].as_array().unwrap().clone();
    assert!(merges[0].is_string(), "the fixture tokenizer should use string merges");
    as_pairs["model"]["merges"] = serde_json::Value::Array(
        merges
            .iter()
            .map(|m| {
                let (a, b) = m.as_str().unwrap().split_once(' ').unwrap();
                serde_json::json!([a, b])
            })
            .collect(),
    );
    let pairs_bytes = serde_json::to_vec(&as_pairs).unwrap();
    for tok in [Tokenizer::from_bytes(tokenizer_json).unwrap(), Tokenizer::from_bytes(&pairs_bytes).unwrap()] {
        assert_eq!(tok.vocab_size(), 50257);
        for case in &cases {
            let text = case["text"].as_str().unwrap();
            let ids: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
            assert_eq!(tok.encode(text).unwrap(), ids, "encoding {text:?}");
            assert_eq!(tok.decode(&ids).unwrap(), text, "decoding {ids:?}");
        }
    }
}

pub const ROMEO: &str = "ROMEO. O my love,";
pub const ROMEO_CONTINUATION: &str = "\nAnd I will not be my husband's son.\n\n[Exit.]\n\n[Enter RICHARD.]\n\nRICHARD.";

/// neo-bard-8l: the model card's greedy continuation, and logits on the first 64 tokens of eval-dev.txt within 1e-3
/// of transformers' f32 logits.
pub fn check_neo_bard(model: &GptNeo, tok: &Tokenizer, eval_text: &str, logits_ref: &[u8]) {
    let prompt = tok.encode(ROMEO).unwrap();
    let out = generate(model, &prompt, SamplingParams { max_new_tokens: 30, ..Default::default() }).unwrap();
    assert_eq!(tok.decode(&out).unwrap(), ROMEO_CONTINUATION);

    let r = open("logits.safetensors", logits_ref);
    let ids: Vec<u32> = tok.encode(eval_text).unwrap()[..64].to_vec();
    assert_eq!(ids, i64s(&r, "input_ids"));
    let logits = flat(&model.logits(&ids).unwrap());
    let d = max_abs_diff(&logits, &f32s(&r, "logits_original_f32"));
    assert!(d < 1e-3, "neo-bard-8l logits differ from transformers by {d}");
}

/// Compress with `policy`, export to bytes, load the bytes back: the logits are bit-identical and every layer keeps
/// its storage (INT8 stays INT8).
pub fn check_export_roundtrip(
    config: &str,
    weights: &[u8],
    policy: semantic_llm_compressor::compression::policy::Policy,
) {
    use semantic_llm_compressor::compression::driver::compress_checkpoint;
    use semantic_llm_compressor::compression::format::Export;
    let b = bundle(config, None, weights);
    let c = compress_checkpoint(&b.cfg, &b.ckpt, policy, None, &mut |_| {}).unwrap();
    assert!(
        c.reports.iter().any(|r| r.decision != semantic_llm_compressor::compression::matrix::Decision::Dense),
        "nothing was compressed"
    );
    let bytes =
        Export::new(&b.ckpt, config, None, &c.weights, &c.reports, &c.policy).unwrap().to_bytes(&b.ckpt).unwrap();
    let ck = Checkpoint::new(vec![open("exported.safetensors", &bytes)], None).unwrap();
    let back = ModelBundle::from_checkpoint(None, None, ck).unwrap();
    assert!(back.is_compressed());
    let loaded = back.load_model(false).unwrap();
    for (a, l) in c.model.linears().iter().zip(loaded.linears()) {
        assert_eq!(a.weight.describe(), l.weight.describe(), "{} changed storage", a.name);
    }
    let ids: Vec<u32> = (0..24).map(|i| (i * 37 + 11) % 500).collect();
    let x = flat(&c.model.logits(&ids).unwrap());
    let y = flat(&loaded.logits(&ids).unwrap());
    assert!(x.iter().zip(&y).all(|(a, b)| a.to_bits() == b.to_bits()), "logits differ after export → import");
}
