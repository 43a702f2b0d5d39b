use clap::{Parser, Subcommand};
use semantic_llm_compressor::bundle::ModelBundle;
use semantic_llm_compressor::generate::{Generation, SamplingParams};
use semantic_llm_compressor::tokenizer::TextStream;
use semantic_llm_compressor::Result;
use std::io::Write;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "slc", version, about = "Compress GPT-Neo models by truncated SVD + INT8 and measure what it did")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Show a checkpoint's config and every tensor's name, dtype, shape and size.
    Inspect {
        /// Directory with config.json and model.safetensors (or shards).
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Continue a prompt (greedy unless a temperature is given).
    Generate {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        prompt: String,
        #[arg(long = "max-new-tokens", alias = "max_new_tokens", default_value_t = 30)]
        max_new_tokens: usize,
        #[arg(long, default_value_t = 0.0)]
        temperature: f64,
        #[arg(long = "top-k", alias = "top_k", default_value_t = 0)]
        top_k: usize,
        #[arg(long = "top-p", alias = "top_p", default_value_t = 1.0)]
        top_p: f64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Print {"ids": [...], "text": "..."} instead of the text.
        #[arg(long)]
        json: bool,
    },
    /// Benchmarks that print figures (see BENCHMARKS.md).
    #[command(subcommand)]
    Bench(BenchCmd),
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Greedy decode speed with the KV cache: tokens/s after the prompt, best of `--runs`.
    Decode {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value = "ROMEO. O my love,")]
        prompt: String,
        #[arg(long, default_value_t = 128)]
        tokens: usize,
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
}

pub fn run() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Inspect { dir, json } => inspect(&dir, json),
        Cmd::Generate { model, prompt, max_new_tokens, temperature, top_k, top_p, seed, json } => {
            let params = SamplingParams { temperature, top_k, top_p, seed, max_new_tokens, stop_at_eos: true };
            generate(&model, &prompt, params, json)
        }
        Cmd::Bench(BenchCmd::Decode { model, prompt, tokens, runs }) => bench_decode(&model, &prompt, tokens, runs),
    }
}

fn bench_decode(dir: &std::path::Path, prompt: &str, tokens: usize, runs: usize) -> Result<()> {
    let b = ModelBundle::open_dir(dir)?;
    let model = b.load_model(false)?;
    let ids = b.tokenizer()?.encode(prompt)?;
    let params = SamplingParams { max_new_tokens: tokens, stop_at_eos: false, ..Default::default() };
    let mut best = 0f64;
    for run in 0..runs.max(1) {
        let mut g = Generation::new(&model, &ids, params.clone())?;
        g.step(&model)?; // the prompt (prefill) and the first token
        let t0 = std::time::Instant::now();
        let mut n = 0;
        while g.step(&model)?.is_some() {
            n += 1;
        }
        let rate = n as f64 / t0.elapsed().as_secs_f64();
        println!("run {run}: {n} tokens decoded at {rate:.1} tokens/s");
        best = best.max(rate);
    }
    println!("decode {}: best {best:.1} tokens/s (greedy, KV cache, {} prompt tokens, native, 1 thread)", dir.display(), ids.len());
    Ok(())
}

fn inspect(dir: &std::path::Path, json: bool) -> Result<()> {
    let b = ModelBundle::open_dir(dir)?;
    let s = b.summary()?;
    let mut o = std::io::stdout().lock();
    if json {
        writeln!(o, "{}", serde_json::to_string_pretty(&s)?)?;
        return Ok(());
    }
    writeln!(o, "{}: {} ({}compressed)", dir.display(), s.model_type, if s.compressed { "" } else { "not " })?;
    writeln!(o, 
        "  layers {}  hidden {}  heads {}  mlp {}  vocab {}  positions {}  window {}",
        s.num_layers, s.hidden_size, s.num_heads, s.intermediate_size, s.vocab_size, s.max_position_embeddings, s.window_size
    )?;
    let att: Vec<&str> = s.attention.iter().map(|a| if *a == semantic_llm_compressor::config::AttentionKind::Global { "global" } else { "local" }).collect();
    writeln!(o, "  attention {}", att.join(","))?;
    writeln!(o, 
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

fn generate(dir: &std::path::Path, prompt: &str, params: SamplingParams, json: bool) -> Result<()> {
    let b = ModelBundle::open_dir(dir)?;
    let tok = b.tokenizer()?;
    let model = b.load_model(false)?;
    let ids = tok.encode(prompt)?;
    let mut g = Generation::new(&model, &ids, params)?;
    let mut stream = TextStream::default();
    let mut out = std::io::stdout();
    while let Some(id) = g.step(&model)? {
        if !json {
            write!(out, "{}", stream.push(tok, id)?)?;
            out.flush()?;
        }
    }
    if json {
        let text = tok.decode(&g.tokens)?;
        println!("{}", serde_json::json!({"ids": g.tokens, "text": text}));
    } else {
        println!();
    }
    Ok(())
}
