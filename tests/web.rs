//! Browser tests: the same golden checks as tests/native.rs, run by wasm-bindgen-test in headless Chromium inside a
//! dedicated worker (where the page runs the model), plus the `File`-slicing path the page uses.
#![cfg(target_arch = "wasm32")]

mod common;

use wasm_bindgen::JsCast;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_dedicated_worker);

const TINY_CONFIG: &str = include_str!("../../shared/fixtures/tiny-gpt-neo-v512/config.json");
const TINY_WEIGHTS: &[u8] = include_bytes!("../../shared/fixtures/tiny-gpt-neo-v512/model.safetensors");
const TINY_REF: &[u8] = include_bytes!("../../shared/fixtures/tiny-gpt-neo-v512/reference.safetensors");
const TOKENIZER: &[u8] = include_bytes!("../../shared/tokenizer/gpt2-tokenizer.json");
const TOKENIZER_FIXTURES: &str = include_str!("../../shared/tokenizer/gpt2-tokenizer-fixtures.json");
const BARD_CONFIG: &str = include_str!("../../shared/models/neo-bard-8l/config.json");
const BARD_WEIGHTS: &[u8] = include_bytes!("../../shared/models/neo-bard-8l/model.safetensors");
const BARD_TOKENIZER: &[u8] = include_bytes!("../../shared/models/neo-bard-8l/tokenizer.json");
const EVAL_TEXT: &str = include_str!("../../shared/corpus/eval-dev.txt");
const LOGITS_REF: &[u8] = include_bytes!("../../shared/reference/logits.safetensors");

fn file(name: &str, bytes: &[u8]) -> web_sys::File {
    let arr = js_sys::Uint8Array::from(bytes);
    let parts = js_sys::Array::of1(&arr);
    web_sys::File::new_with_u8_array_sequence(&parts, name).unwrap()
}

#[wasm_bindgen_test]
fn tiny_gpt_neo_matches_transformers() {
    common::check_tiny(TINY_CONFIG, TINY_WEIGHTS, TINY_REF);
}

#[wasm_bindgen_test]
fn gpt2_tokenizer_matches_fixtures() {
    common::check_tokenizer(TOKENIZER, TOKENIZER_FIXTURES);
}

#[wasm_bindgen_test]
fn neo_bard_matches_model_card_and_reference_logits() {
    let b = common::bundle(BARD_CONFIG, Some(BARD_TOKENIZER), BARD_WEIGHTS);
    let model = b.load_model(false).unwrap();
    common::check_neo_bard(&model, b.tokenizer().unwrap(), EVAL_TEXT, LOGITS_REF);
}

/// The page's path: `File`s read in slices by the worker, then streamed generation.
#[wasm_bindgen_test]
fn workspace_reads_files_in_slices_and_generates() {
    use semantic_llm_compressor::wasm::Workspace;
    let files = js_sys::Array::new();
    files.push(&file("config.json", BARD_CONFIG.as_bytes()));
    files.push(&file("tokenizer.json", BARD_TOKENIZER));
    files.push(&file("model.safetensors", BARD_WEIGHTS));
    let mut ws = Workspace::new();
    let report = ws.open(files).map_err(|e| JsValueDbg(e.into())).unwrap();
    let layers = js_sys::Reflect::get(&js_sys::Reflect::get(&report, &"summary".into()).unwrap(), &"num_layers".into()).unwrap();
    assert_eq!(layers.as_f64(), Some(8.0));
    ws.load().map_err(|e| JsValueDbg(e.into())).unwrap();
    ws.generate_start("original", common::ROMEO, wasm_bindgen::JsValue::UNDEFINED).map_err(|e| JsValueDbg(e.into())).unwrap();
    let mut text = String::new();
    loop {
        let step = ws.generate_next("original").map_err(|e| JsValueDbg(e.into())).unwrap();
        if step.is_null() {
            break;
        }
        text.push_str(&js_sys::Reflect::get(&step, &"text".into()).unwrap().as_string().unwrap());
    }
    assert_eq!(text, common::ROMEO_CONTINUATION);
}

/// A missing config.json is reported as a sentence that names it.
#[wasm_bindgen_test]
fn workspace_names_missing_files() {
    use semantic_llm_compressor::wasm::Workspace;
    let files = js_sys::Array::new();
    files.push(&file("model.safetensors", TINY_WEIGHTS));
    let mut ws = Workspace::new();
    let err: wasm_bindgen::JsValue = ws.open(files).err().unwrap().into();
    let msg = err.unchecked_into::<js_sys::Error>().message().as_string().unwrap();
    assert!(msg.contains("config.json"), "{msg}");
}

struct JsValueDbg(wasm_bindgen::JsValue);
impl std::fmt::Debug for JsValueDbg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let msg = self.0.clone().dyn_into::<js_sys::Error>().map(|e| String::from(e.message())).unwrap_or_else(|_| format!("{:?}", self.0));
        f.write_str(&msg)
    }
}
