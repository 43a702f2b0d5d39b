//! The commands on one model or a pair: `inspect`, `generate`, `eval`, `roundtrip`, `densify`, `synth`.

use super::io::write_file;
use super::progress::Progress;
use super::{Device, EvalArgs};
use semantic_llm_compressor::evaluation::metrics::Evaluator;
use semantic_llm_compressor::gpu::model::GpuModel;
use semantic_llm_compressor::gpu::tensor::Uploads;
use semantic_llm_compressor::gpu::{block_on, run, Gpu};
use semantic_llm_compressor::model::bundle::ModelBundle;
use semantic_llm_compressor::model::generate::{Generation, SamplingParams};
use semantic_llm_compressor::model::storage::QuantScheme;
use semantic_llm_compressor::model::tokenizer::TextStream;
use semantic_llm_compressor::session::{CompressedSizes, EvalSummary};
use semantic_llm_compressor::{alloc, Error, Result};
use std::io::Write;

pub(super) fn inspect(dir: &std::path::Path, json: bool) -> Result<()> {
    let b = ModelBundle::open_dir(dir)?;
    let s = b.summary()?;
    let mut o = std::io::stdout().lock();
    if json {
        writeln!(o, "{}", serde_json::to_string_pretty(&s)?)?;
        return Ok(());
    }
    writeln!(o, "{}: {} ({}compressed)", dir.display(), s.model_type, if s.compressed { "" } else { "not " })?;
    writeln!(
        o,
        "  layers {}  hidden {}  heads {}  mlp {}  vocab {}  positions {}  window {}",
        s.num_layers,
        s.hidden_size,
        s.num_heads,
        s.intermediate_size,
        s.vocab_size,
        s.max_position_embeddings,
        s.window_size
    )?;
    let att: Vec<&str> = s
        .attention
        .iter()
        .map(|a| if *a == semantic_llm_compressor::model::config::AttentionKind::Global { "global" } else { "local" })
        .collect();
    writeln!(o, "  attention {}", att.join(","))?;
    writeln!(
        o,
        "  parameters {}  files {} ({} bytes)  head {}  tokenizer {}",
        s.parameters,
        s.files.len(),
        s.file_bytes,
        if s.tied_head { "tied to wte" } else { "lm_head.weight" },
        if s.has_tokenizer { "yes" } else { "no" }
    )?;
    writeln!(o, "  dtypes {:?}", s.dtypes)?;
    writeln!(o, "{:<56} {:>5} {:>16} {:>12}", "tensor", "dtype", "shape", "bytes")?;
    for t in &s.tensors {
        writeln!(o, "{:<56} {:>5} {:>16} {:>12}", t.name, t.dtype, format!("{:?}", t.shape), t.bytes)?;
    }
    Ok(())
}

pub(super) fn generate(
    dir: &std::path::Path,
    prompt: &str,
    params: SamplingParams,
    device: Device,
    json: bool,
) -> Result<()> {
    let b = ModelBundle::open_dir(dir)?;
    let tok = b.tokenizer()?;
    let ids = tok.encode(prompt)?;
    let mut stream = TextStream::default();
    let mut out = std::io::stdout();
    let mut show = |id: u32| -> Result<()> {
        if !json {
            write!(out, "{}", stream.push(tok, id)?)?;
            out.flush()?;
        }
        Ok(())
    };
    let tokens = match device {
        Device::Cpu => {
            let model = b.load_model(false)?;
            let mut g = Generation::new(&model, &ids, params)?;
            while let Some(id) = g.step(&model)? {
                show(id)?;
            }
            g.tokens
        }
        Device::Gpu => {
            let (gpu, model) = gpu_model(&b)?;
            block_on(run::generate(&gpu, &model, &ids, params, &mut show))?
        }
    };
    if json {
        let text = tok.decode(&tokens)?;
        println!("{}", serde_json::json!({"ids": tokens, "text": text}));
    } else {
        println!();
    }
    Ok(())
}

/// The first GPU adapter, with the model of `b` on it: a compressed checkpoint as the CPU loads it, a plain one read
/// from its file a tensor at a time.
fn gpu_model(b: &ModelBundle) -> Result<(Gpu, GpuModel)> {
    let gpu = block_on(Gpu::new())?.ok_or_else(|| Error::Gpu("no GPU adapter was found".into()))?;
    eprintln!("GPU: {}", gpu.facts.label());
    let model = gpu_upload(&gpu, b, &mut Uploads::default())?;
    Ok((gpu, model))
}

fn gpu_upload(gpu: &Gpu, b: &ModelBundle, uploads: &mut Uploads) -> Result<GpuModel> {
    if b.is_compressed() {
        GpuModel::from_cpu(gpu, &b.load_model(false)?, uploads, &mut |_, _| {})
    } else {
        GpuModel::from_checkpoint(gpu, &b.cfg, &b.ckpt, uploads, &mut |_, _| {})
    }
}

pub(super) fn roundtrip(dir: &std::path::Path, ranks: &[usize], scheme: QuantScheme, json: bool) -> Result<()> {
    use semantic_llm_compressor::compression::matrix::factors;
    use semantic_llm_compressor::compression::source::{considered_matrices, reader};
    use semantic_llm_compressor::compression::svd;
    let b = ModelBundle::open_dir(dir)?;
    let read = reader(&b.ckpt);
    let mut rows = Vec::new();
    for m in considered_matrices(&b.cfg, &b.ckpt)? {
        if m.tied {
            continue;
        }
        let w = read(&m.name)?;
        let full = svd::exact(&w, m.out, m.inp).map_err(|e| Error::tensor(&m.name, e.to_string()))?;
        for &r in ranks {
            let mut t = full.clone().truncate(r);
            t.canonicalize_signs();
            let err_svd = svd::rel_fro_error(&w, &t.reconstruct());
            let err_int8 = svd::stored_error(
                &w,
                &factors(&t, semantic_llm_compressor::compression::policy::FactorStorage::Int8(scheme)),
            )?;
            rows.push(serde_json::json!({"name": m.name, "shape": [m.out, m.inp], "rank": t.rank(), "err_svd": err_svd, "err_int8": err_int8}));
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let mut o = std::io::stdout().lock();
    writeln!(
        o,
        "{:<48} {:>12} {:>6} {:>9} {:>9}",
        "matrix",
        "shape",
        "rank",
        "err svd",
        format!("+{}", scheme.as_str())
    )?;
    for r in &rows {
        writeln!(
            o,
            "{:<48} {:>12} {:>6} {:>8.2}% {:>8.2}%",
            r["name"].as_str().unwrap_or(""),
            format!("{}x{}", r["shape"][0], r["shape"][1]),
            r["rank"],
            100.0 * r["err_svd"].as_f64().unwrap_or(f64::NAN),
            100.0 * r["err_int8"].as_f64().unwrap_or(f64::NAN)
        )?;
    }
    Ok(())
}

pub(super) fn eval(a: &EvalArgs) -> Result<()> {
    let ob = ModelBundle::open_dir(&a.original)?;
    let cb = ModelBundle::open_dir(&a.compressed)?;
    let om = ob.load_model(false)?;
    // measured: live heap bytes the compressed model holds once loaded
    let (cm, resident, peak) = alloc::measure(|| cb.load_model(false));
    let cm = cm?;
    let text = std::fs::read_to_string(&a.text)
        .map_err(|e| Error::file(a.text.display().to_string(), format!("cannot be read ({e})")))?;
    let ids = ob.tokenizer()?.encode(&text)?;
    let mut ev = Evaluator::after(&ids, a.skip_tokens, a.tokens, a.window, 0, 1)?;
    let bar = Progress::new("window", a.json);
    let device = match a.device {
        Device::Cpu => {
            while ev.step(&om, Some(&cm))? {
                bar.set(ev.done(), ev.total_windows(), "");
            }
            "CPU".to_string()
        }
        Device::Gpu => {
            let gpu = block_on(Gpu::new())?.ok_or_else(|| Error::Gpu("no GPU adapter was found".into()))?;
            eprintln!("GPU: {}", gpu.facts.label());
            let mut uploads = Uploads::default();
            let og = GpuModel::from_cpu(&gpu, &om, &mut uploads, &mut |_, _| {})?;
            let cg = GpuModel::from_cpu(&gpu, &cm, &mut uploads, &mut |_, _| {})?;
            block_on(run::evaluate(&gpu, &og, Some(&cg), &mut ev, &mut |d, t| bar.set(d, t, "")))?;
            format!("GPU: {}", gpu.facts.label())
        }
    };
    bar.finish();
    let r = ev.report();
    let layers: Option<serde_json::Value> =
        cb.ckpt.metadata().and_then(|m| m.get("layers")).and_then(|l| serde_json::from_str(l).ok());
    let sizes = CompressedSizes { model: &cm, tensor_bytes: cb.tensor_bytes(), resident_bytes: resident };
    let summary = EvalSummary::new(r.clone(), false, &ob, Some(&om), Some(sizes));
    let (layers_compressed, layers_total) = (cm.compressed_layers(), summary.layers_total);
    let mut v = serde_json::to_value(&summary)?;
    let extra = serde_json::json!({
        "file_bytes_original": ob.ckpt.file_bytes(),
        "file_bytes_compressed": cb.ckpt.file_bytes(),
        "peak_load_bytes_compressed": peak,
        "layers": layers,
        "device": device,
    });
    if let (Some(a), Some(b)) = (v.as_object_mut(), extra.as_object()) {
        a.extend(b.clone());
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let f = |k: &str| v[k].as_f64().map_or("-".to_string(), |x| format!("{x:.4}"));
    println!("{}", r.convention);
    println!("perplexity original {}  compressed {}", f("ppl_original"), f("ppl_compressed"));
    println!(
        "cosine per position {}  global {}  mse {}  top-1 {}  kl {}",
        f("cosine"),
        f("cosine_global"),
        f("mse"),
        f("top1"),
        f("kl")
    );
    println!(
        "bytes original {}  compressed {} (resident, measured: {})  layers compressed {}/{}",
        v["bytes_original"], v["bytes_compressed"], resident, layers_compressed, layers_total
    );
    Ok(())
}

pub(super) fn synth(
    config: &std::path::Path,
    out: &std::path::Path,
    dtype: SynthDtype,
    seed: u64,
    pad: u64,
) -> Result<()> {
    use semantic_llm_compressor::model::config::GptNeoConfig;
    use semantic_llm_compressor::model::synth::Synth;
    let text = std::fs::read_to_string(config).map_err(|e| Error::file(config.display().to_string(), e.to_string()))?;
    let cfg = GptNeoConfig::from_json(&text)?;
    if cfg.vocab_size < 50257 {
        return Err(Error::Config(format!(
            "{}: vocab_size {} is smaller than the GPT-2 tokenizer's 50257 tokens that `slc synth` writes",
            config.display(),
            cfg.vocab_size
        )));
    }
    let (dt, name) = match dtype {
        SynthDtype::F32 => (safetensors::Dtype::F32, "float32"),
        SynthDtype::F16 => (safetensors::Dtype::F16, "float16"),
        SynthDtype::Bf16 => (safetensors::Dtype::BF16, "bfloat16"),
    };
    let plan = Synth::new(&cfg, dt, seed, pad)?;
    std::fs::create_dir_all(out)?;
    let t = std::time::Instant::now();
    plan.write(&out.join("model.safetensors"))?;
    let mut json: serde_json::Value = serde_json::from_str(&text)?;
    json["torch_dtype"] = serde_json::json!(name);
    write_file(&out.join("config.json"), serde_json::to_string_pretty(&json)?.as_bytes())?;
    write_file(&out.join("tokenizer.json"), GPT2_TOKENIZER)?;
    println!(
        "wrote {} ({:.2} GB of {name} weights{}, seed {seed}) in {:.1} s",
        out.display(),
        plan.weight_bytes() as f64 / 1e9,
        if pad > 0 { format!(" after a {pad}-byte buffer") } else { String::new() },
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

pub(super) fn densify(dir: &std::path::Path, out: &std::path::Path) -> Result<()> {
    use safetensors::tensor::TensorView;
    let b = ModelBundle::open_dir(dir)?;
    let model = b.load_model(false)?;
    let dense = semantic_llm_compressor::compression::format::densify(&model)?;
    let replaced: std::collections::HashSet<String> = dense.iter().map(|(n, _, _)| n.clone()).collect();
    let is_factor = |n: &str| replaced.iter().any(|r| n.starts_with(&format!("{r}.")));
    let mut tensors: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for name in b.ckpt.names() {
        if is_factor(name) {
            continue;
        }
        let raw = b.ckpt.read(name)?;
        tensors.push((name.clone(), raw.dtype, raw.shape, raw.data));
    }
    for (name, shape, w) in dense {
        tensors.push((name, safetensors::Dtype::F32, shape, w.iter().flat_map(|x| x.to_le_bytes()).collect()));
    }
    let views = tensors
        .iter()
        .map(|(n, d, s, bytes)| {
            Ok((n.clone(), TensorView::new(*d, s.clone(), bytes).map_err(|e| Error::tensor(n, e.to_string()))?))
        })
        .collect::<Result<Vec<_>>>()?;
    std::fs::create_dir_all(out)?;
    let bytes = safetensors::serialize(views, None).map_err(|e| Error::msg(e.to_string()))?;
    write_file(&out.join("model.safetensors"), &bytes)?;
    write_file(&out.join("config.json"), b.config_json.as_bytes())?;
    if let Some(t) = &b.tokenizer_json {
        write_file(&out.join("tokenizer.json"), t.as_bytes())?;
    }
    println!("wrote {} ({} tensors, linear layers as dense f32)", out.display(), tensors.len());
    Ok(())
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(super) enum SynthDtype {
    F32,
    F16,
    Bf16,
}

/// The GPT-2 tokenizer every GPT-Neo checkpoint uses (the demo model's copy).
const GPT2_TOKENIZER: &[u8] = include_bytes!("../../../www/models/neo-bard-8l/tokenizer.json");
