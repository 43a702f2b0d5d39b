//! Golden tests of the model and tokenizer against transformers' outputs, natively.
#![cfg(not(target_arch = "wasm32"))]

mod common;

use semantic_llm_compressor::bundle::ModelBundle;
use std::path::PathBuf;

fn shared(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared").join(p)
}

fn read(p: &str) -> Vec<u8> {
    std::fs::read(shared(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
}

#[test]
fn tiny_gpt_neo_matches_transformers() {
    let cfg = String::from_utf8(read("fixtures/tiny-gpt-neo-v512/config.json")).unwrap();
    common::check_tiny(&cfg, &read("fixtures/tiny-gpt-neo-v512/model.safetensors"), &read("fixtures/tiny-gpt-neo-v512/reference.safetensors"));
}

#[test]
fn gpt2_tokenizer_matches_fixtures() {
    common::check_tokenizer(&read("tokenizer/gpt2-tokenizer.json"), &String::from_utf8(read("tokenizer/gpt2-tokenizer-fixtures.json")).unwrap());
}

#[test]
fn neo_bard_matches_model_card_and_reference_logits() {
    let b = ModelBundle::open_dir(&shared("models/neo-bard-8l")).unwrap();
    let model = b.load_model(false).unwrap();
    let text = String::from_utf8(read("corpus/eval-dev.txt")).unwrap();
    common::check_neo_bard(&model, b.tokenizer().unwrap(), &text, &read("reference/logits.safetensors"));
}

#[test]
fn neo_bard_kept_in_f16_gives_the_same_text() {
    let b = ModelBundle::open_dir(&shared("models/neo-bard-8l")).unwrap();
    let model = b.load_model(true).unwrap();
    let text = String::from_utf8(read("corpus/eval-dev.txt")).unwrap();
    common::check_neo_bard(&model, b.tokenizer().unwrap(), &text, &read("reference/logits.safetensors"));
}
