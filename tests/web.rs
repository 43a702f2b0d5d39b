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

/// A workspace with neo-bard-8l's three files open (not loaded), and what `open` reported.
fn bard_workspace() -> (semantic_llm_compressor::wasm::Workspace, wasm_bindgen::JsValue) {
    let files = js_sys::Array::new();
    files.push(&file("config.json", BARD_CONFIG.as_bytes()));
    files.push(&file("tokenizer.json", BARD_TOKENIZER));
    files.push(&file("model.safetensors", BARD_WEIGHTS));
    let mut ws = semantic_llm_compressor::wasm::Workspace::new();
    let report = ws.open(files).map_err(JsValueDbg).unwrap();
    (ws, report)
}

/// Evaluation settings as the worker sends them: the text's first `tokens` tokens in windows of `window`, one part.
fn spec(text: &str, tokens: usize, window: usize) -> wasm_bindgen::JsValue {
    let spec =
        semantic_llm_compressor::session::EvalSpec { text: text.into(), skip: 0, tokens, window, part: 0, parts: 1 };
    serde_wasm_bindgen::to_value(&spec).unwrap()
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
    let (mut ws, report) = bard_workspace();
    let layers =
        js_sys::Reflect::get(&js_sys::Reflect::get(&report, &"summary".into()).unwrap(), &"num_layers".into()).unwrap();
    assert_eq!(layers.as_f64(), Some(8.0));
    ws.load(None).map_err(JsValueDbg).unwrap();
    ws.generate_start("original", common::ROMEO, wasm_bindgen::JsValue::UNDEFINED).map_err(JsValueDbg).unwrap();
    let mut text = String::new();
    loop {
        let step = ws.generate_next("original").map_err(JsValueDbg).unwrap();
        if step.is_null() {
            break;
        }
        text.push_str(&js_sys::Reflect::get(&step, &"text".into()).unwrap().as_string().unwrap());
    }
    assert_eq!(text, common::ROMEO_CONTINUATION);
}

/// Export → import → bit-identical logits, in the browser too.
#[wasm_bindgen_test]
fn export_then_import_gives_identical_logits() {
    use semantic_llm_compressor::compression::policy::{Method, Policy};
    common::check_export_roundtrip(
        BARD_CONFIG,
        BARD_WEIGHTS,
        Policy { rank: 32, skip: vec!["mlp.c_fc".into(), "mlp.c_proj".into()], ..Default::default() },
    );
    common::check_export_roundtrip(BARD_CONFIG, BARD_WEIGHTS, Policy { method: Method::Int8, ..Default::default() });
    common::check_export_roundtrip(TINY_CONFIG, TINY_WEIGHTS, Policy { rank: 8, ..Default::default() });
}

/// The page's compression path: compress in steps, export as pieces, open the export: it is recognised as the
/// compression of the open original, and the evaluation compares the two.
#[wasm_bindgen_test]
fn workspace_compresses_exports_and_reopens() {
    let get = |v: &wasm_bindgen::JsValue, k: &str| js_sys::Reflect::get(v, &k.into()).unwrap();
    let (mut ws, _) = bard_workspace();
    ws.load(None).map_err(JsValueDbg).unwrap();
    let policy = js_sys::JSON::parse(r#"{"rank": 16, "skip": ["mlp.c_fc", "mlp.c_proj"]}"#).unwrap();
    ws.compress_begin(policy, None).map_err(JsValueDbg).unwrap();
    let mut layers = 0;
    while !ws.compress_step().map_err(JsValueDbg).unwrap().is_null() {
        layers += 1;
    }
    assert_eq!(layers, 49);
    let fin = ws.compress_finish().map_err(JsValueDbg).unwrap();
    assert_eq!(get(&fin, "layers_compressed").as_f64(), Some(32.0));
    ws.eval_begin(spec(&EVAL_TEXT[..4000], 256, 128)).map_err(JsValueDbg).unwrap();
    while !ws.eval_step().map_err(JsValueDbg).unwrap().is_null() {}
    let first = ws.eval_report().map_err(JsValueDbg).unwrap();
    let parts = ws.export().map_err(JsValueDbg).unwrap();
    let exported = web_sys::File::new_with_u8_array_sequence(&parts, "neo-bard-8l-compressed.safetensors").unwrap();
    let again = js_sys::Array::of1(&exported);
    let report = ws.open(again).map_err(JsValueDbg).unwrap();
    assert_eq!(get(&report, "kind").as_string().as_deref(), Some("compressed"));
    assert_eq!(get(&report, "matches_original").as_bool(), Some(true));
    ws.eval_begin(spec(&EVAL_TEXT[..4000], 256, 128)).map_err(JsValueDbg).unwrap();
    while !ws.eval_step().map_err(JsValueDbg).unwrap().is_null() {}
    let second = ws.eval_report().map_err(JsValueDbg).unwrap();
    for k in ["cosine", "ppl_compressed", "kl", "top1", "bytes_compressed", "layers_compressed"] {
        assert_eq!(get(&first, k).as_f64(), get(&second, k).as_f64(), "{k}");
    }
    assert!(get(&second, "cosine").as_f64().unwrap() > 0.9);
}

/// With the original not in memory, the evaluation streams it from its `File` a block at a time, with the figures
/// of the in-memory evaluation.
#[wasm_bindgen_test]
fn workspace_streams_the_original_when_it_is_not_loaded() {
    let get = |v: &wasm_bindgen::JsValue, k: &str| js_sys::Reflect::get(v, &k.into()).unwrap();
    let run = |load: bool| {
        let (mut ws, _) = bard_workspace();
        if load {
            ws.load(None).map_err(JsValueDbg).unwrap();
        }
        let policy = js_sys::JSON::parse(r#"{"rank": 16}"#).unwrap();
        ws.compress_begin(policy, None).map_err(JsValueDbg).unwrap();
        while !ws.compress_step().map_err(JsValueDbg).unwrap().is_null() {}
        ws.compress_finish().map_err(JsValueDbg).unwrap();
        let begin = ws.eval_begin(spec(&EVAL_TEXT[..3000], 256, 128)).map_err(JsValueDbg).unwrap();
        assert_eq!(get(&begin, "unit").as_string().as_deref(), Some(if load { "window" } else { "stage" }));
        while !ws.eval_step().map_err(JsValueDbg).unwrap().is_null() {}
        ws.eval_report().map_err(JsValueDbg).unwrap()
    };
    let (memory, streamed) = (run(true), run(false));
    assert_eq!(get(&streamed, "streamed").as_bool(), Some(true));
    for k in ["cosine", "ppl_original", "ppl_compressed", "kl"] {
        let (a, b) = (get(&memory, k).as_f64().unwrap(), get(&streamed, k).as_f64().unwrap());
        assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "{k}: {a} vs {b}");
    }
}

/// A missing config.json is reported as a sentence that names it.
#[wasm_bindgen_test]
fn workspace_names_missing_files() {
    let files = js_sys::Array::new();
    files.push(&file("model.safetensors", TINY_WEIGHTS));
    let mut ws = semantic_llm_compressor::wasm::Workspace::new();
    let err: wasm_bindgen::JsValue = ws.open(files).err().unwrap();
    let kind = js_sys::Reflect::get(&err, &"kind".into()).unwrap().as_string();
    assert_eq!(kind.as_deref(), Some("file"), "the error carries its kind");
    let msg = err.unchecked_into::<js_sys::Error>().message().as_string().unwrap();
    assert!(msg.contains("config.json"), "{msg}");
}

/// GPT-Neo-1.3B's linear layers in f32 are 4.83 GB: the totals the page shows must not wrap at 4 GiB, as a 32-bit
/// `usize` does here (the page once said "536.9 MB → 115.2 MB").
#[wasm_bindgen_test]
fn totals_of_the_1_3b_shape_pass_4_gib() {
    use semantic_llm_compressor::compression::matrix::{totals, LayerReport};
    use semantic_llm_compressor::compression::policy::{MatrixInfo, Policy};
    use semantic_llm_compressor::compression::preview::preview;
    let (h, f) = (2048, 8192);
    let mats: Vec<MatrixInfo> = (0..24)
        .flat_map(|i| {
            [("q", h, h), ("k", h, h), ("v", h, h), ("o", h, h), ("fc", f, h), ("proj", h, f)].map(|(s, out, inp)| {
                MatrixInfo {
                    name: format!("h.{i}.{s}.weight"),
                    out,
                    inp,
                    stored_elem_bytes: 4,
                    stored_dtype: "F32".into(),
                    tied: false,
                }
            })
        })
        .collect();
    let want_bytes = 24 * 4 * (4 * h * h + 2 * h * f) as u64;
    assert_eq!(want_bytes, 4_831_838_208);
    let reports: Vec<LayerReport> = mats.iter().map(|m| LayerReport::stored(m, None)).collect();
    let t = totals(&reports);
    assert_eq!((t.bytes_considered, t.bytes_after, t.params_considered), (want_bytes, want_bytes, want_bytes / 4));
    let p = preview(&Policy { rank: 128, ..Default::default() }, &mats, 5_262_338_096).unwrap();
    assert_eq!(p.linear_bytes_before, want_bytes);
    assert_eq!(p.bytes_untouched, 5_262_338_096 - want_bytes);
}

struct JsValueDbg(wasm_bindgen::JsValue);
impl std::fmt::Debug for JsValueDbg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let msg = self
            .0
            .clone()
            .dyn_into::<js_sys::Error>()
            .map(|e| String::from(e.message()))
            .unwrap_or_else(|_| format!("{:?}", self.0));
        f.write_str(&msg)
    }
}
