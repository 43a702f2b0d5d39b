//! One precise sentence per fault: every kind of damage a user's files can carry, each refused with a message that
//! names the file, the tensor or the setting at fault and what was expected. Each case asserts the words of its
//! message (the page shows these sentences as they are). The fuzzing of the same readers is in tests/fuzz.rs.
#![cfg(not(target_arch = "wasm32"))]

use safetensors::tensor::{Dtype, TensorView};
use semantic_llm_compressor::compression::driver::compress_checkpoint;
use semantic_llm_compressor::compression::format::Export;
use semantic_llm_compressor::compression::policy::{BudgetUnit, Method, Policy};
use semantic_llm_compressor::model::bundle::ModelBundle;
use semantic_llm_compressor::model::checkpoint::{Checkpoint, MemSource, SafetensorsFile};
use semantic_llm_compressor::session::{MemoryBudget, ModelFiles, Session};
use std::collections::HashMap;
use std::path::PathBuf;

fn shared(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared").join(p)
}

fn tiny() -> (String, Vec<u8>) {
    let dir = shared("fixtures/tiny-gpt-neo-v512");
    (std::fs::read_to_string(dir.join("config.json")).unwrap(), std::fs::read(dir.join("model.safetensors")).unwrap())
}

type Tensors = Vec<(String, Dtype, Vec<usize>, Vec<u8>)>;

/// A file's tensors (in name order) and metadata.
fn tensors_of(bytes: &[u8]) -> (Tensors, Option<HashMap<String, String>>) {
    let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
    let mut out: Tensors =
        st.tensors().into_iter().map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec())).collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).unwrap();
    (out, meta.metadata().clone())
}

fn file_of(tensors: &Tensors, meta: Option<HashMap<String, String>>) -> Vec<u8> {
    let views: Vec<(String, TensorView)> =
        tensors.iter().map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    safetensors::serialize(views, meta).unwrap()
}

/// A file from a header written by hand and `data` zero bytes after it.
fn raw(header: &str, data: usize) -> Vec<u8> {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.resize(b.len() + data, 0);
    b
}

fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn open_err(bytes: Vec<u8>) -> String {
    SafetensorsFile::open(Box::new(MemSource::new("model.safetensors", bytes))).err().expect("refused").to_string()
}

/// Open, load and run a plain model; its error as the page shows it.
fn model_err(config: &str, weights: Vec<u8>, tokenizer: Option<&[u8]>) -> String {
    let run = || -> semantic_llm_compressor::Result<()> {
        let f = SafetensorsFile::open(Box::new(MemSource::new("model.safetensors", weights)))?;
        let b = ModelBundle::from_checkpoint(Some(config), tokenizer, Checkpoint::new(vec![f], None)?)?;
        b.summary()?;
        b.load_model(false)?.logits(&[1, 2, 3])?;
        Ok(())
    };
    run().expect_err("refused").to_string()
}

fn has(e: &str, needles: &[&str]) {
    for n in needles {
        assert!(e.contains(n), "the message should say {n:?}: {e}");
    }
}

#[test]
fn safetensors_header_faults_name_the_file_the_tensor_and_what_was_expected() {
    let t = |n: &str, d: &str, s: &str, a: u64, b: u64| {
        format!(r#""{n}":{{"dtype":"{d}","shape":{s},"data_offsets":[{a},{b}]}}"#)
    };
    // the header length
    let good = raw(&format!("{{{}}}", t("a", "F32", "[1]", 0, 4)), 4);
    let mut past = good.clone();
    past[..8].copy_from_slice(&1000u64.to_le_bytes());
    has(&open_err(past), &["model.safetensors: ", "header of 1000 bytes", "holds only"]);
    let mut absurd = good.clone();
    absurd[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    has(&open_err(absurd), &["model.safetensors: ", "header of 18446744073709551615 bytes", "limit of 100000000"]);
    has(&open_err(vec![1, 2, 3]), &["model.safetensors: ", "3 bytes long", "too short"]);
    // not UTF-8, not JSON, not an object of tensors
    let mut not_utf8 = raw("{\"a~\": 1}", 0);
    let at = not_utf8.iter().position(|&b| b == b'~').unwrap();
    not_utf8[at] = 0xff;
    has(&open_err(not_utf8), &["model.safetensors: ", "not UTF-8"]);
    has(&open_err(raw("{\"a\": ", 0)), &["model.safetensors: ", "not a JSON object of tensors"]);
    has(&open_err(raw("[1, 2]", 0)), &["model.safetensors: ", "not a JSON object of tensors"]);
    has(
        &open_err(raw(r#"{"a": {"dtype": "F32", "shape": [1]}}"#, 4)),
        &["tensor `a`", "model.safetensors", "data_offsets"],
    );
    has(&open_err(raw(r#"{"__metadata__": {"k": 1}}"#, 0)), &["model.safetensors: ", "__metadata__"]);
    // a name twice
    let dup = format!("{{{},{}}}", t("a", "F32", "[1]", 0, 4), t("a", "F32", "[1]", 4, 8));
    has(&open_err(raw(&dup, 8)), &["tensor `a`", "appears twice", "model.safetensors"]);
    // offsets: a gap, an overlap, a range that ends before it starts, data past the end, bytes after the last tensor
    let gap = format!("{{{},{}}}", t("a", "F32", "[1]", 0, 4), t("b", "F32", "[1]", 8, 12));
    has(&open_err(raw(&gap, 12)), &["tensor `b`", "gap", "from byte 4 to 8"]);
    let overlap = format!("{{{},{}}}", t("a", "F32", "[2]", 0, 8), t("b", "F32", "[1]", 4, 8));
    has(&open_err(raw(&overlap, 8)), &["tensor `b`", "overlaps", "ends at 8"]);
    let backwards = format!("{{{},{}}}", t("a", "F32", "[1]", 0, 4), t("b", "F32", "[1]", 8, 4));
    has(&open_err(raw(&backwards, 8)), &["tensor `b`", "8..4", "ends before it starts"]);
    let inverted = format!("{{{},{}}}", t("a", "F32", "[0]", 0, 0), t("b", "F32", "[0]", 4, 0));
    has(&open_err(raw(&inverted, 4)), &["tensor `b`", "4..0"]);
    let two = format!("{{{},{}}}", t("a", "F32", "[1]", 0, 4), t("b", "F32", "[1]", 4, 8));
    has(&open_err(raw(&two, 6)), &["model.safetensors: ", "truncated", "tensor `b`", "4..8", "holds 6"]);
    has(&open_err(raw(&two, 9)), &["model.safetensors: ", "describes 8 bytes", "holds 9", "1 bytes after"]);
    // listed out of offset order in the JSON is allowed (the format sorts by offset), as the crate does
    let reordered = format!("{{{},{}}}", t("b", "F32", "[1]", 4, 8), t("a", "F32", "[1]", 0, 4));
    SafetensorsFile::open(Box::new(MemSource::new("model.safetensors", raw(&reordered, 8)))).unwrap();
    // dtype × shape against the byte range, an overflowing shape, an unknown dtype
    has(
        &open_err(raw(&format!("{{{}}}", t("a", "F16", "[3]", 0, 8)), 8)),
        &["tensor `a`", "F16 × [3] is 6 bytes", "hold 8"],
    );
    has(
        &open_err(raw(&format!("{{{}}}", t("a", "F32", "[4294967296,4294967296,16]", 0, 8)), 8)),
        &["tensor `a`", "overflows"],
    );
    has(
        &open_err(raw(&format!("{{{}}}", t("a", "Q9", "[1]", 0, 1)), 1)),
        &["tensor `a`", "dtype \"Q9\"", "F32, F16, BF16 and F64"],
    );
}

#[test]
fn model_faults_name_the_tensor_or_the_key() {
    let (config, good) = tiny();
    let (tensors, meta) = tensors_of(&good);
    let with = |f: &dyn Fn(&mut Tensors)| {
        let mut t = tensors.clone();
        f(&mut t);
        file_of(&t, meta.clone())
    };
    let v = "transformer.h.1.attn.attention.v_proj.weight";
    // a tensor the config needs that the header lacks
    let e = model_err(&config, with(&|t| t.retain(|x| x.0 != v)), None);
    has(&e, &[&format!("tensor `{v}`"), "missing"]);
    // an unexpected shape: the MLP's matrix transposed
    let fc = "transformer.h.0.mlp.c_fc.weight";
    let e = model_err(&config, with(&|t| t.iter_mut().filter(|x| x.0 == fc).for_each(|x| x.2 = vec![64, 256])), None);
    has(&e, &[&format!("tensor `{fc}`"), "shape [64, 256]", "implies [256, 64]"]);
    // a weight of an integer dtype
    let e = model_err(&config, with(&|t| t.iter_mut().filter(|x| x.0 == v).for_each(|x| x.1 = Dtype::I32)), None);
    has(&e, &[&format!("tensor `{v}`"), "dtype I32", "F32, F16, BF16 and F64"]);
    // NaN and infinity in a weight
    for bad in [f32::NAN, f32::INFINITY] {
        let e = model_err(
            &config,
            with(&|t| t.iter_mut().filter(|x| x.0 == v).for_each(|x| x.3[40..44].copy_from_slice(&bad.to_le_bytes()))),
            None,
        );
        has(&e, &[&format!("tensor `{v}`"), "non-finite", "element 10"]);
    }
    // config.json: not GPT-Neo, keys missing, values out of range
    for (from, to, needles) in [
        ("\"gpt_neo\"", "\"gpt2\"", &["config.json: ", "model_type is \"gpt2\"", "gpt_neo"][..]),
        ("\"model_type\": \"gpt_neo\",", "", &["config.json: ", "model_type is missing"]),
        ("\"hidden_size\": 64,", "", &["config.json: ", "missing field `hidden_size`"]),
        ("\"num_heads\": 4", "\"num_heads\": 0", &["config.json: ", "num_heads is 0"]),
        ("\"num_heads\": 4", "\"num_heads\": 3", &["config.json: ", "hidden_size 64", "num_heads 3"]),
        ("\"window_size\": 8", "\"window_size\": 0", &["config.json: ", "window_size is 0"]),
        ("\"num_layers\": 4", "\"num_layers\": 2", &["config.json: ", "num_layers"]),
        ("\"vocab_size\": 512", "\"vocab_size\": -1", &["config.json: ", "value of vocab_size", "-1"]),
        ("\"num_layers\": 4", "\"num_layers\": \"four\"", &["config.json: ", "value of num_layers", "four"]),
    ] {
        assert!(config.contains(from), "{from}");
        has(&model_err(&config.replace(from, to), good.clone(), None), needles);
    }
    // tokenizer.json: broken, or another model's
    has(&model_err(&config, good.clone(), Some(b"{not json")), &["tokenizer.json: ", "cannot be loaded"]);
    let gpt2 = std::fs::read(shared("tokenizer/gpt2-tokenizer.json")).unwrap();
    has(&model_err(&config, good.clone(), Some(&gpt2)), &["tokenizer.json: ", "50257 tokens", "vocab_size is 512"]);
}

#[test]
fn shard_index_faults_name_the_shard_or_the_tensor() {
    let one = |n: &str| file_of(&vec![(n.to_string(), Dtype::F32, vec![1], f32s(&[1.0]))], None);
    let open = |f: &str, n: &str| SafetensorsFile::open(Box::new(MemSource::new(f, one(n)))).unwrap();
    let (s1, s2) = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors");
    let idx = format!(r#"{{"metadata":{{}},"weight_map":{{"a":"{s1}","b":"{s2}"}}}}"#);
    Checkpoint::new(vec![open(s1, "a"), open(s2, "b")], Some(&idx)).unwrap();
    let e = Checkpoint::new(vec![open(s1, "a")], Some(&idx)).err().unwrap().to_string();
    has(&e, &[s2, "model.safetensors.index.json", "`b`", "not given"]);
    let e = Checkpoint::new(vec![open(s1, "b"), open(s2, "a")], Some(&idx)).err().unwrap().to_string();
    has(&e, &["tensor `a`", s1, "does not hold it"]);
    let e = Checkpoint::new(vec![open(s1, "a"), open(s2, "b")], Some("{\"weight_map\": [")).err().unwrap().to_string();
    has(&e, &["model.safetensors.index.json: ", "cannot be parsed"]);
    let e = Checkpoint::new(vec![open(s1, "a"), open(s2, "a")], None).err().unwrap().to_string();
    has(&e, &["tensor `a`", "both", s1, s2]);
}

/// The tiny model compressed at rank 8 with INT8 factors (per-row), as the page exports it.
fn compressed_tiny(quant_bits: u8) -> (String, Vec<u8>) {
    let (config, good) = tiny();
    let ckpt = Checkpoint::new(
        vec![SafetensorsFile::open(Box::new(MemSource::new("model.safetensors", good))).unwrap()],
        None,
    )
    .unwrap();
    let b = ModelBundle::from_checkpoint(Some(&config), None, ckpt).unwrap();
    let policy = Policy { rank: 8, quant_bits, method: Method::Svd, ..Default::default() };
    let c = compress_checkpoint(&b.cfg, &b.ckpt, policy, None, &mut |_| {}).unwrap();
    let bytes =
        Export::new(&b.ckpt, &config, None, &c.weights, &c.reports, &c.policy).unwrap().to_bytes(&b.ckpt).unwrap();
    (config, bytes)
}

/// Open a compressed checkpoint alone in a session, as the page does; its error.
fn open_compressed(bytes: Vec<u8>) -> Result<(), String> {
    let mut s = Session::new(MemoryBudget::new(4e9, None), None);
    let mut files = ModelFiles::default();
    files.add("compressed.safetensors", Box::new(MemSource::new("compressed.safetensors", bytes))).unwrap();
    s.open(files).map(|_| ()).map_err(|e| e.to_string())
}

#[test]
fn compressed_checkpoint_faults_name_the_record_or_the_factor() {
    let (_, good) = compressed_tiny(8);
    open_compressed(good.clone()).unwrap();
    let (tensors, meta) = tensors_of(&good);
    let meta = meta.unwrap();
    let with_meta = |key: &str, value: Option<&str>| {
        let mut m = meta.clone();
        match value {
            Some(v) => m.insert(key.to_string(), v.to_string()),
            None => m.remove(key),
        };
        file_of(&tensors, Some(m))
    };
    let f = "compressed.safetensors: ";
    has(&open_compressed(with_meta("layers", Some("{not json"))).unwrap_err(), &[f, "damaged metadata", "`layers`"]);
    has(&open_compressed(with_meta("source", None)).unwrap_err(), &[f, "damaged metadata", "`source`", "missing"]);
    has(&open_compressed(with_meta("source", Some("{\"fingerprint\": 3}"))).unwrap_err(), &[f, "`source`"]);
    has(
        &open_compressed(with_meta("format", Some("slc-compressed-v9"))).unwrap_err(),
        &[f, "\"slc-compressed-v9\"", "reads \"slc-compressed-v1\""],
    );
    let policy: serde_json::Value = serde_json::from_str(&meta["policy"]).unwrap();
    let mut zero = policy.clone();
    zero["rank"] = 0.into();
    has(
        &open_compressed(with_meta("policy", Some(&zero.to_string()))).unwrap_err(),
        &[f, "`policy`", "rank must be at least 1"],
    );
    has(&open_compressed(with_meta("policy", Some("[1]"))).unwrap_err(), &[f, "`policy`"]);
    has(
        &open_compressed(with_meta("config_json", Some("{\"model_type\": \"gpt_neo\"}"))).unwrap_err(),
        &["config.json: ", "missing field"],
    );

    let q = "transformer.h.0.attn.attention.q_proj.weight";
    let edit = |f: &dyn Fn(&mut Tensors)| {
        let mut t = tensors.clone();
        f(&mut t);
        open_compressed(file_of(&t, Some(meta.clone()))).unwrap_err()
    };
    // codes of the wrong length for the layer: U one row short, codes and scales alike
    let e = edit(&|t| {
        for x in t.iter_mut() {
            if x.0 == format!("{q}.U.q") {
                x.2 = vec![63, 8];
                x.3.truncate(63 * 8);
            } else if x.0 == format!("{q}.U.scale") {
                x.2 = vec![63];
                x.3.truncate(63 * 4);
            }
        }
    });
    has(&e, &[&format!("tensor `{q}.U`"), "[63, 8]", "does not fit the layer"]);
    // a scale per row, one missing
    let e = edit(&|t| {
        let s = t.iter_mut().find(|x| x.0 == format!("{q}.U.scale")).unwrap();
        s.2 = vec![63];
        s.3.truncate(63 * 4);
    });
    has(&e, &[&format!("tensor `{q}.U.q`"), "63 scales", "for 64 rows", "one scale per row"]);
    // a scale that is not finite
    let e = edit(&|t| {
        let s = t.iter_mut().find(|x| x.0 == format!("{q}.Vh.scale")).unwrap();
        s.3[..4].copy_from_slice(&f32::INFINITY.to_le_bytes());
    });
    has(&e, &[&format!("tensor `{q}.Vh.scale`"), "non-finite"]);
    // a rank above the matrix's size: f32 factors of rank 65 for a 64×64 layer
    let e = edit(&|t| {
        t.retain(|x| !x.0.starts_with(&format!("{q}.")));
        t.push((format!("{q}.U"), Dtype::F32, vec![64, 65], f32s(&vec![0.1; 64 * 65])));
        t.push((format!("{q}.S"), Dtype::F32, vec![65], f32s(&[1.0; 65])));
        t.push((format!("{q}.Vh"), Dtype::F32, vec![65, 64], f32s(&vec![0.1; 65 * 64])));
    });
    has(&e, &[&format!("tensor `{q}.U`"), "rank 65", "ranks 1 to 64"]);
}

#[test]
fn policy_values_out_of_range_name_the_setting() {
    for (p, needles) in [
        (Policy { rank: 0, ..Default::default() }, &["invalid setting: ", "rank must be at least 1"][..]),
        (Policy { budget: Some(0.0), ..Default::default() }, &["invalid setting: ", "budget 0", "(0, 1]"]),
        (Policy { budget: Some(-0.5), ..Default::default() }, &["budget -0.5", "(0, 1]"]),
        (Policy { budget: Some(1.5), ..Default::default() }, &["budget 1.5", "(0, 1]"]),
        (Policy { budget: Some(f64::NAN), ..Default::default() }, &["budget NaN", "(0, 1]"]),
        (Policy { energy: Some(0.0), ..Default::default() }, &["invalid setting: ", "energy 0", "(0, 1]"]),
        (Policy { energy: Some(1.2), ..Default::default() }, &["energy 1.2", "(0, 1]"]),
        (Policy { quant_bits: 5, ..Default::default() }, &["invalid setting: ", "quant_bits is 5"]),
        (Policy { quant_bits: 4, group: 3, ..Default::default() }, &["invalid setting: ", "group is 3"]),
        (
            Policy { budget: Some(40.0), budget_unit: BudgetUnit::Bits, ..Default::default() },
            &["budget 40 bits per parameter", "(0, 32]"],
        ),
    ] {
        has(&p.validate().unwrap_err().to_string(), needles);
    }
    // the page's policy arrives as JSON: unknown values name the field
    let e = serde_json::from_str::<Policy>(r#"{"method": "magic"}"#).unwrap_err().to_string();
    has(&e, &["magic"]);
    let e = semantic_llm_compressor::compression::policy::RankRule::parse("attn=").unwrap_err().to_string();
    has(&e, &["invalid setting: ", "rank rule \"attn=\""]);
}
