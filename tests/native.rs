//! Golden tests of the model and tokenizer against transformers' outputs, natively.
#![cfg(not(target_arch = "wasm32"))]

mod common;

use semantic_llm_compressor::model::bundle::ModelBundle;
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
    common::check_tiny(
        &cfg,
        &read("fixtures/tiny-gpt-neo-v512/model.safetensors"),
        &read("fixtures/tiny-gpt-neo-v512/reference.safetensors"),
    );
}

#[test]
fn gpt2_tokenizer_matches_fixtures() {
    common::check_tokenizer(
        &read("tokenizer/gpt2-tokenizer.json"),
        &String::from_utf8(read("tokenizer/gpt2-tokenizer-fixtures.json")).unwrap(),
    );
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

/// Hub checkpoints come sharded, with attention-mask buffers, with an `lm_head.weight` (a copy of the embedding,
/// recognised as tied and stored once, or a head of its own), or in bf16: all load, and a config that disagrees with
/// the tensors is refused naming the tensor.
#[test]
fn shards_buffers_untied_head_and_bf16() {
    use safetensors::tensor::TensorView;
    use safetensors::Dtype;
    use semantic_llm_compressor::model::checkpoint::{FileSource, SafetensorsFile};
    let src = shared("fixtures/tiny-gpt-neo-v512");
    let cfg = std::fs::read_to_string(src.join("config.json")).unwrap();
    let ck = ModelBundle::open_dir(&src).unwrap().ckpt;
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> =
        ck.names().map(|n| ck.read(n).unwrap()).map(|r| (r.name, r.dtype, r.shape, r.data)).collect();
    let wte = tensors.iter().find(|t| t.0 == "transformer.wte.weight").unwrap().clone();
    tensors.push(("lm_head.weight".into(), wte.1, wte.2.clone(), wte.3.clone()));
    for i in 0..4 {
        tensors.push((format!("transformer.h.{i}.attn.attention.bias"), Dtype::BOOL, vec![1, 1, 8, 8], vec![1u8; 64]));
        tensors.push((
            format!("transformer.h.{i}.attn.attention.masked_bias"),
            Dtype::F32,
            vec![],
            (-1e9f32).to_le_bytes().to_vec(),
        ));
    }
    let write = |dir: &std::path::Path, tensors: &[(String, Dtype, Vec<usize>, Vec<u8>)], config: &str| {
        std::fs::create_dir_all(dir).unwrap();
        let (a, b): (Vec<_>, Vec<_>) = tensors.iter().enumerate().partition(|(i, _)| i % 2 == 0);
        let mut map = serde_json::Map::new();
        for (k, part) in [a, b].into_iter().enumerate() {
            let file = format!("model-0000{}-of-00002.safetensors", k + 1);
            let views: Vec<(String, TensorView)> =
                part.iter().map(|(_, t)| (t.0.clone(), TensorView::new(t.1, t.2.clone(), &t.3).unwrap())).collect();
            for (_, t) in &part {
                map.insert(t.0.clone(), serde_json::Value::String(file.clone()));
            }
            std::fs::write(dir.join(&file), safetensors::serialize(views, None).unwrap()).unwrap();
        }
        let index = serde_json::json!({"metadata": {}, "weight_map": map});
        std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
        std::fs::write(dir.join("config.json"), config).unwrap();
    };
    let tmp = std::env::temp_dir().join(format!("slc-shards-{}", std::process::id()));
    let r = SafetensorsFile::open(Box::new(FileSource::open(&src.join("reference.safetensors")).unwrap())).unwrap();
    let ids: Vec<u32> = r
        .read("input_ids.1")
        .unwrap()
        .data
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
        .collect();
    let want = r.read("logits.1").unwrap().to_f32_vec().unwrap();
    let logits = |b: &ModelBundle, half: bool| -> Vec<f32> {
        b.load_model(half).unwrap().logits(&ids).unwrap().flatten_all().unwrap().to_vec1().unwrap()
    };
    let max_diff = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);

    write(&tmp.join("f32"), &tensors, &cfg);
    let b = ModelBundle::open_dir(&tmp.join("f32")).unwrap();
    assert!(b.summary().unwrap().tied_head && b.ckpt.head_copy(), "a head equal to the embedding is tied");
    assert!(!b.ckpt.contains("lm_head.weight"), "and stored once");
    assert!(max_diff(&logits(&b, false), &want) < 5e-5);
    // a head of its own (twice the embedding): untied, and its logits twice the tied model's
    let twice: Vec<_> = tensors
        .iter()
        .map(|t| match t.0.as_str() {
            "lm_head.weight" => {
                let data =
                    t.3.chunks_exact(4).flat_map(|c| (2.0 * f32::from_le_bytes(c.try_into().unwrap())).to_le_bytes());
                (t.0.clone(), t.1, t.2.clone(), data.collect())
            }
            _ => t.clone(),
        })
        .collect();
    write(&tmp.join("untied"), &twice, &cfg);
    let u = ModelBundle::open_dir(&tmp.join("untied")).unwrap();
    assert!(!u.summary().unwrap().tied_head && !u.ckpt.head_copy());
    let doubled: Vec<f32> = want.iter().map(|x| 2.0 * x).collect();
    assert!(max_diff(&logits(&u, false), &doubled) < 1e-4);

    // bf16: every float tensor rounded to bf16; kept as stored or converted, the model computes the same thing
    let bf16: Vec<_> = tensors
        .iter()
        .map(|t| match t.1 {
            Dtype::F32 if !t.2.is_empty() => {
                let data =
                    t.3.chunks_exact(4)
                        .flat_map(|c| half::bf16::from_f32(f32::from_le_bytes(c.try_into().unwrap())).to_le_bytes())
                        .collect();
                (t.0.clone(), Dtype::BF16, t.2.clone(), data)
            }
            _ => t.clone(),
        })
        .collect();
    write(&tmp.join("bf16"), &bf16, &cfg);
    let b = ModelBundle::open_dir(&tmp.join("bf16")).unwrap();
    let (x, y) = (logits(&b, false), logits(&b, true));
    assert!(max_diff(&x, &y) < 1e-4, "bf16 kept vs converted: {}", max_diff(&x, &y));
    let d = max_diff(&x, &want);
    assert!(d > 1e-4 && d < 0.5, "bf16 logits vs f32 reference: {d}");

    // a config that disagrees with the tensors
    write(&tmp.join("bad"), &tensors, &cfg.replace("\"intermediate_size\": 256", "\"intermediate_size\": 128"));
    let e = ModelBundle::open_dir(&tmp.join("bad")).unwrap().load_model(false).err().unwrap().to_string();
    assert!(
        e.contains("transformer.h.0.mlp.c_fc.weight") && e.contains("[256, 64]") && e.contains("config.json"),
        "{e}"
    );
    // a missing shard is named
    std::fs::remove_file(tmp.join("f32/model-00002-of-00002.safetensors")).unwrap();
    let e = ModelBundle::open_dir(&tmp.join("f32")).err().unwrap().to_string();
    assert!(e.contains("model-00002-of-00002.safetensors"), "{e}");
    std::fs::remove_dir_all(&tmp).ok();
}

/// A checkpoint whose weights lie past byte 4 GiB (behind an ignored 4.4 GB buffer; a sparse file, so it costs
/// almost no disk) reads like the same weights without the buffer: the same offsets shifted, the same logits.
#[test]
fn weights_past_4_gib_read_like_the_same_weights_before_it() {
    use semantic_llm_compressor::model::synth::{Synth, PAD_TENSOR};
    let cfg_text = String::from_utf8(read("models/neo-bard-8l/config.json")).unwrap();
    let cfg = semantic_llm_compressor::model::config::GptNeoConfig::from_json(&cfg_text).unwrap();
    let dir = std::env::temp_dir().join(format!("slc-past-4gib-{}", std::process::id()));
    let pad = 4_400_000_000u64;
    let mut models = Vec::new();
    for (sub, pad) in [("near", 0), ("far", pad)] {
        let d = dir.join(sub);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("config.json"), &cfg_text).unwrap();
        Synth::new(&cfg, safetensors::Dtype::F32, 3, pad).unwrap().write(&d.join("model.safetensors")).unwrap();
        models.push(ModelBundle::open_dir(&d).unwrap());
    }
    let (near, far) = (&models[0], &models[1]);
    assert!(far.ckpt.file_bytes() > pad);
    assert_eq!(far.ckpt.info(PAD_TENSOR).unwrap().bytes(), pad);
    let q = "transformer.h.7.mlp.c_proj.weight";
    let (a, b) = (near.ckpt.info(q).unwrap(), far.ckpt.info(q).unwrap());
    assert!(b.start > 1 << 32 && b.start - a.start == pad && b.end - a.end == pad);
    assert_eq!(near.ckpt.read(q).unwrap().data, far.ckpt.read(q).unwrap().data);
    let ids: Vec<u32> = vec![464, 3290, 286, 262, 1110];
    let logits = |b: &ModelBundle| {
        let m = b.load_model(false).unwrap();
        let t = candle_core::Tensor::new(ids.as_slice(), &candle_core::Device::Cpu).unwrap().unsqueeze(0).unwrap();
        m.forward(&t, None).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
    };
    assert_eq!(logits(near), logits(far));
    std::fs::remove_dir_all(&dir).unwrap();
}
