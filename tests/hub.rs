//! GPT-Neo folders as people have them from the Hub (tests/fixtures/make_hub.py made them with PyTorch and
//! transformers): the slow tokenizer files, `pytorch_model.bin` one file or sharded, files this program ignores, a
//! tied head saved twice; refused `.bin` files and other architectures' configs, each with its sentence.

#![cfg(not(target_arch = "wasm32"))]

use semantic_llm_compressor::compression::driver::compress_checkpoint;
use semantic_llm_compressor::compression::policy::Policy;
use semantic_llm_compressor::evaluation::metrics::Evaluator;
use semantic_llm_compressor::model::bundle::ModelBundle;
use semantic_llm_compressor::model::checkpoint::{ByteSource, FileSource, MemSource, PytorchFile};
use semantic_llm_compressor::model::folder::ModelFiles;
use semantic_llm_compressor::model::generate::{Generation, SamplingParams};
use semantic_llm_compressor::model::tokenizer::Tokenizer;
use semantic_llm_compressor::session::{MemoryBudget, Session};
use std::path::{Path, PathBuf};

fn shared(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared").join(p)
}

fn fixture(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(p)
}

/// The same model in the safetensors + tokenizer.json form: tiny-fast's config.json and tokenizer.json beside the
/// shared fixture's model.safetensors.
fn fast() -> ModelBundle {
    let mut files = ModelFiles::default();
    for p in [
        fixture("tiny-fast/config.json"),
        fixture("tiny-fast/tokenizer.json"),
        shared("fixtures/tiny-gpt-neo-v512/model.safetensors"),
    ] {
        files.add(&p.file_name().unwrap().to_string_lossy(), Box::new(FileSource::open(&p).unwrap())).unwrap();
    }
    ModelBundle::from_files(files).unwrap()
}

fn corpus() -> String {
    std::fs::read_to_string(shared("corpus/eval-dev.txt")).unwrap()
}

fn greedy(b: &ModelBundle, prompt: &str) -> Vec<u32> {
    let m = b.load_model(false).unwrap();
    let ids = b.tokenizer().unwrap().encode(prompt).unwrap();
    let params = SamplingParams { max_new_tokens: 24, stop_at_eos: false, ..Default::default() };
    let mut g = Generation::new(&m, &ids, params).unwrap();
    while g.step(&m).unwrap().is_some() {}
    g.tokens
}

/// Compressed at rank 8 and evaluated on 1024 tokens of the corpus: the report as JSON.
fn compressed_figures(b: &ModelBundle) -> serde_json::Value {
    let policy = Policy { rank: 8, ..Default::default() };
    let c = compress_checkpoint(&b.cfg, &b.ckpt, policy, None, &mut |_| {}).unwrap();
    let original = b.load_model(false).unwrap();
    let ids = b.tokenizer().unwrap().encode(&corpus()).unwrap();
    let mut ev = Evaluator::new(&ids, 1024, 128).unwrap();
    while ev.step(&original, Some(&c.model)).unwrap() {}
    serde_json::to_value(ev.report()).unwrap()
}

#[test]
fn hub_folders_open_like_the_safetensors_form() {
    let fast = fast();
    let text = corpus();
    let want_ids = fast.tokenizer().unwrap().encode(&text).unwrap();
    let want_greedy = greedy(&fast, "ROMEO. O my love,");
    let want_figures = compressed_figures(&fast);
    let logits = |b: &ModelBundle| -> Vec<f32> {
        b.load_model(false).unwrap().logits(&want_ids[..100]).unwrap().flatten_all().unwrap().to_vec1().unwrap()
    };
    let want_logits = logits(&fast);
    for folder in ["tiny-hub", "tiny-hub-sharded"] {
        let b = ModelBundle::open_dir(&fixture(folder)).unwrap();
        assert_eq!(b.tokenizer_source, Some("vocab.json + merges.txt"), "{folder}");
        assert_eq!(b.tokenizer().unwrap().encode(&text).unwrap(), want_ids, "{folder}: token ids");
        let s = b.summary().unwrap();
        assert!(s.tied_head && b.ckpt.head_copy(), "{folder}: the head saved beside the embedding is tied");
        let mut ignored: Vec<&str> = b.ignored.iter().map(|i| i.name.as_str()).collect();
        ignored.sort();
        assert_eq!(
            ignored,
            [
                ".gitattributes",
                "README.md",
                "flax_model.msgpack",
                "generation_config.json",
                "rust_model.ot",
                "tf_model.h5"
            ],
            "{folder}"
        );
        assert!(b.ignored.iter().any(|i| i.name == "flax_model.msgpack" && i.why.contains("Flax")), "{:?}", b.ignored);
        assert_eq!(logits(&b), want_logits, "{folder}: logits bit for bit");
        assert_eq!(greedy(&b, "ROMEO. O my love,"), want_greedy, "{folder}: greedy continuation");
        assert_eq!(compressed_figures(&b), want_figures, "{folder}: evaluation figures");
    }
}

/// A source that fails when read: the files a folder holds beside the model must never be.
struct Untouchable(String);

impl ByteSource for Untouchable {
    fn name(&self) -> &str {
        &self.0
    }
    fn len(&self) -> u64 {
        1 << 40
    }
    fn read_at(&self, _: u64, _: usize) -> semantic_llm_compressor::Result<Vec<u8>> {
        panic!("{} was read", self.0)
    }
}

#[test]
fn ignored_files_are_never_read_and_safetensors_come_before_bin() {
    let dir = fixture("tiny-hub");
    let mut files = ModelFiles::default();
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        let keep = ["config.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"];
        if keep.contains(&name.as_str()) {
            files.add(&name, Box::new(FileSource::open(&p).unwrap())).unwrap();
        } else {
            // the weights too: safetensors beside them are used instead
            files.add(&name, Box::new(Untouchable(name.clone()))).unwrap();
        }
    }
    let st = shared("fixtures/tiny-gpt-neo-v512/model.safetensors");
    files.add("model.safetensors", Box::new(FileSource::open(&st).unwrap())).unwrap();
    let b = ModelBundle::from_files(files).unwrap();
    assert!(
        b.ignored.iter().any(|i| i.name == "pytorch_model.bin" && i.why.contains("safetensors")),
        "{:?}",
        b.ignored
    );
    assert_eq!(b.load_model(false).unwrap().cfg.vocab_size, 512);
}

#[test]
fn slow_gpt2_files_give_the_ids_of_tokenizer_json() {
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(shared("tokenizer/gpt2-tokenizer.json")).unwrap()).unwrap();
    let vocab = serde_json::to_vec(&json["model"]["vocab"]).unwrap();
    let merges: String = std::iter::once("#version: 0.2".to_string())
        .chain(json["model"]["merges"].as_array().unwrap().iter().map(|m| match m {
            serde_json::Value::String(s) => s.clone(),
            pair => format!("{} {}", pair[0].as_str().unwrap(), pair[1].as_str().unwrap()),
        }))
        .collect::<Vec<_>>()
        .join("\n");
    let config = br#"{"add_prefix_space": false, "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "model_max_length": 2048, "tokenizer_class": "GPT2Tokenizer"}"#;
    let special = br#"{"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}"#;
    let (slow, _) = Tokenizer::from_slow_files(&vocab, merges.as_bytes(), Some(config), Some(special)).unwrap();
    let fast = Tokenizer::from_file(&shared("tokenizer/gpt2-tokenizer.json")).unwrap();
    let text = corpus();
    let ids = slow.encode(&text).unwrap();
    assert_eq!(ids, fast.encode(&text).unwrap(), "the whole corpus");
    assert!(ids.len() > 20_000, "{} ids", ids.len());
    for t in
        ["  runs   of\tspaces\n\n\nand newlines", "naïve café — 東京 🚀", "end<|endoftext|>start", "<|endoftext|>", ""]
    {
        assert_eq!(slow.encode(t).unwrap(), fast.encode(t).unwrap(), "{t:?}");
        assert_eq!(slow.decode(&slow.encode(t).unwrap()).unwrap(), t);
    }
    assert_eq!(slow.encode("<|endoftext|>").unwrap(), vec![50256]);
}

#[test]
fn refused_bin_files_and_other_architectures_are_sentences() {
    let open =
        |name: &str| match PytorchFile::open(Box::new(FileSource::open(&fixture(&format!("bad-bin/{name}"))).unwrap()))
        {
            Ok(_) => panic!("{name} was accepted"),
            Err(e) => e.to_string(),
        };
    let e = open("os-system.bin");
    assert!(e.contains("os-system.bin") && e.contains(".system`") && e.contains("refused"), "{e}");
    let e = open("compressed.bin");
    assert!(e.contains("compressed.bin") && e.contains("data/0") && e.contains("compressed"), "{e}");
    let e = open("truncated.bin");
    assert!(e.contains("truncated.bin") && e.contains("zip"), "{e}");
    let e = open("legacy.bin");
    assert!(e.contains("legacy.bin") && e.contains("legacy format") && e.contains("1.6"), "{e}");
    // a file that is not a PyTorch checkpoint at all
    let e =
        PytorchFile::open(Box::new(MemSource::new("pytorch_model.bin", b"hello".to_vec()))).err().unwrap().to_string();
    assert!(e.contains("pytorch_model.bin") && e.contains("not a PyTorch checkpoint"), "{e}");

    for (file, name, class) in [
        ("gpt2.json", "GPT-2", "GPT2LMHeadModel"),
        ("gpt-j-6b.json", "GPT-J", "GPTJForCausalLM"),
        ("gpt-neox-20b.json", "GPT-NeoX", "GPTNeoXForCausalLM"),
    ] {
        let text =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/configs/other").join(file))
                .unwrap();
        let e = semantic_llm_compressor::model::config::GptNeoConfig::from_json(&text).unwrap_err().to_string();
        assert!(
            e.starts_with("config.json: ")
                && e.contains(&format!("this is a {name} model"))
                && e.contains(class)
                && e.contains("GPT-Neo"),
            "{e}"
        );
    }
}

#[test]
fn an_export_from_a_hub_folder_carries_its_tokenizer() {
    let mut s = Session::new(MemoryBudget::new(4e9, None), None);
    let mut files = ModelFiles::default();
    for e in std::fs::read_dir(fixture("tiny-hub")).unwrap() {
        let p = e.unwrap().path();
        files.add(&p.file_name().unwrap().to_string_lossy(), Box::new(FileSource::open(&p).unwrap())).unwrap();
    }
    let report = s.open(files).unwrap();
    assert!(report.ignored.iter().any(|i| i.starts_with("flax_model.msgpack")), "{:?}", report.ignored);
    s.load(&|_, _, _| {}).unwrap();
    s.compress_begin(Policy { rank: 8, ..Default::default() }, None).unwrap();
    while s.compress_step().unwrap().is_some() {}
    s.compress_finish().unwrap();
    let mut bytes = Vec::new();
    s.export(&mut |b| {
        bytes.extend_from_slice(b);
        Ok(())
    })
    .unwrap();
    // the exported file alone: its tokenizer is the one the slow files stand for
    let mut files = ModelFiles::default();
    files.add("compressed.safetensors", Box::new(MemSource::new("compressed.safetensors", bytes))).unwrap();
    let b = ModelBundle::from_files(files).unwrap();
    let text = &corpus()[..5000];
    assert_eq!(b.tokenizer().unwrap().encode(text).unwrap(), fast().tokenizer().unwrap().encode(text).unwrap());
}
