//! The GPU path natively (lavapipe in CI: a missing adapter fails the run, nothing is skipped): the golden logits
//! within the bounds the CPU path meets, the model card's continuation, and the page's evaluation and generation
//! equal to the CPU's, for the original and compressed models (low-rank INT8 per row, the origin's per-tensor INT8).
#![cfg(not(target_arch = "wasm32"))]

mod common;

use semantic_llm_compressor::compression::policy::Policy;
use semantic_llm_compressor::evaluation::metrics::EvalReport;
use semantic_llm_compressor::gpu::metrics::logits;
use semantic_llm_compressor::gpu::model::GpuModel;
use semantic_llm_compressor::gpu::tensor::Uploads;
use semantic_llm_compressor::gpu::{block_on, Gpu};
use semantic_llm_compressor::model::bundle::ModelBundle;
use semantic_llm_compressor::model::checkpoint::MemSource;
use semantic_llm_compressor::model::generate::SamplingParams;
use semantic_llm_compressor::model::storage::QuantScheme;
use semantic_llm_compressor::session::gpu::wait;
use semantic_llm_compressor::session::{EvalSpec, MemoryBudget, ModelFiles, Session, Which};
use std::path::PathBuf;
use std::sync::OnceLock;

fn shared(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared").join(p)
}

fn read(p: &str) -> Vec<u8> {
    std::fs::read(shared(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn new_gpu(cap: u64) -> Gpu {
    block_on(Gpu::with_binding_cap(cap))
        .expect("the GPU device")
        .expect("no GPU adapter: install a Vulkan driver (./build.sh setup installs lavapipe)")
}

fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| new_gpu(u64::MAX))
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn gpu_logits(gpu: &Gpu, m: &GpuModel, ids: &[u32]) -> Vec<f32> {
    f32s(&block_on(logits(gpu, m, ids).unwrap().read()).unwrap())
}

/// Greedy ids from a model on the GPU, the sampling done by the CPU's own code.
fn gpu_generate(gpu: &Gpu, m: &GpuModel, prompt: &[u32], params: SamplingParams) -> Vec<u32> {
    block_on(semantic_llm_compressor::gpu::run::generate(gpu, m, prompt, params, &mut |_| Ok(()))).unwrap()
}

#[test]
fn tiny_gpt_neo_on_the_gpu_matches_transformers() {
    let cfg = String::from_utf8(read("fixtures/tiny-gpt-neo-v512/config.json")).unwrap();
    let b = common::bundle(&cfg, None, &read("fixtures/tiny-gpt-neo-v512/model.safetensors"));
    let cpu = b.load_model(false).unwrap();
    let gpu = gpu();
    let m = GpuModel::from_cpu(gpu, &cpu, &mut Uploads::default(), &mut |_, _| {}).unwrap();
    let r = common::open("reference.safetensors", &read("fixtures/tiny-gpt-neo-v512/reference.safetensors"));
    let ids_of = |name: &str| -> Vec<u32> {
        r.read(name).unwrap().data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32).collect()
    };
    for k in 0..2 {
        let ids = ids_of(&format!("input_ids.{k}"));
        let want = r.read(&format!("logits.{k}")).unwrap().to_f32_vec().unwrap();
        let d = max_abs_diff(&gpu_logits(gpu, &m, &ids), &want);
        assert!(d < 5e-5, "sequence {k}: the GPU's logits differ from transformers' by {d}");
        let params = SamplingParams { max_new_tokens: 20, stop_at_eos: false, ..Default::default() };
        assert_eq!(gpu_generate(gpu, &m, &ids, params), ids_of(&format!("greedy_ids.{k}")), "sequence {k}");
    }
}

#[test]
fn neo_bard_on_the_gpu_matches_the_model_card_and_reference_logits() {
    let b = ModelBundle::open_dir(&shared("models/neo-bard-8l")).unwrap();
    let tok = b.tokenizer().unwrap();
    let gpu = gpu();
    // read from the file a tensor at a time, as the page does with a model too large for its memory
    let m = GpuModel::from_checkpoint(gpu, &b.cfg, &b.ckpt, &mut Uploads::default(), &mut |_, _| {}).unwrap();
    let prompt = tok.encode(common::ROMEO).unwrap();
    let out = gpu_generate(gpu, &m, &prompt, SamplingParams { max_new_tokens: 30, ..Default::default() });
    assert_eq!(tok.decode(&out).unwrap(), common::ROMEO_CONTINUATION);
    let text = String::from_utf8(read("corpus/eval-dev.txt")).unwrap();
    let ids: Vec<u32> = tok.encode(&text).unwrap()[..64].to_vec();
    let r = common::open("logits.safetensors", &read("reference/logits.safetensors"));
    let d = max_abs_diff(&gpu_logits(gpu, &m, &ids), &r.read("logits_original_f32").unwrap().to_f32_vec().unwrap());
    assert!(d < 1e-3, "neo-bard-8l's logits on the GPU differ from transformers by {d}");
    // the CPU model's upload holds the same numbers; a token embedding split over several bindings gives the
    // same logits to the bit
    let cpu = b.load_model(false).unwrap();
    let from_cpu = GpuModel::from_cpu(gpu, &cpu, &mut Uploads::default(), &mut |_, _| {}).unwrap();
    let want = gpu_logits(gpu, &m, &ids);
    assert_eq!(gpu_logits(gpu, &from_cpu, &ids), want);
    let small = new_gpu(8 << 20);
    let split = GpuModel::from_checkpoint(&small, &b.cfg, &b.ckpt, &mut Uploads::default(), &mut |_, _| {}).unwrap();
    assert_eq!(gpu_logits(&small, &split, &ids), want, "the token embedding in chunks of 8 MiB");
}

fn bard_files() -> ModelFiles {
    let mut f = ModelFiles::default();
    for n in ["config.json", "tokenizer.json", "model.safetensors"] {
        let bytes = std::fs::read(shared("models/neo-bard-8l").join(n)).unwrap();
        f.add(n, Box::new(MemSource::new(n, bytes))).unwrap();
    }
    f
}

fn evaluate_on_cpu(s: &mut Session, spec: &EvalSpec) -> EvalReport {
    s.eval_begin(spec).unwrap();
    while s.eval_step().unwrap().is_some() {}
    s.eval_report().unwrap().eval
}

fn evaluate_on_gpu(s: &mut Session, spec: &EvalSpec) -> EvalReport {
    wait(s.gpu_prepare(&mut |_, _, _| {}).unwrap()).unwrap();
    s.gpu_eval_begin(spec).unwrap();
    while let Some(p) = s.gpu_eval_submit().unwrap() {
        let bytes = wait(p).unwrap();
        s.gpu_eval_accept(&bytes).unwrap();
    }
    s.eval_report().unwrap().eval
}

fn generate_on_cpu(s: &mut Session, which: Which, n: usize) -> Vec<u32> {
    let params = SamplingParams { max_new_tokens: n, stop_at_eos: false, ..Default::default() };
    s.generate_start(which, common::ROMEO, params).unwrap();
    let mut ids = Vec::new();
    while let Some(step) = s.generate_next(which).unwrap() {
        ids.push(step.id);
    }
    ids
}

fn generate_on_gpu(s: &mut Session, which: Which, n: usize) -> Vec<u32> {
    let params = SamplingParams { max_new_tokens: n, stop_at_eos: false, ..Default::default() };
    s.generate_start(which, common::ROMEO, params).unwrap();
    let mut ids = Vec::new();
    while let Some(p) = s.gpu_generate_submit(which).unwrap() {
        ids.push(s.gpu_generate_accept(which, &wait(p).unwrap()).unwrap().id);
    }
    ids
}

/// The tolerances the page's figures meet between the two devices.
fn assert_same_figures(cpu: &EvalReport, gpu: &EvalReport, what: &str) {
    let rel = |a: f64, b: f64| (a - b).abs() / b.abs();
    assert_eq!(cpu.predictions, gpu.predictions);
    assert!(rel(gpu.ppl_original, cpu.ppl_original) < 1e-4, "{what}: {} vs {}", gpu.ppl_original, cpu.ppl_original);
    let (pc, pg) = (cpu.ppl_compressed.unwrap(), gpu.ppl_compressed.unwrap());
    assert!(rel(pg, pc) < 1e-4, "{what}: compressed perplexity {pg} vs {pc}");
    let (cc, cg) = (cpu.cosine.unwrap(), gpu.cosine.unwrap());
    assert!((cg - cc).abs() < 1e-5, "{what}: cosine {cg} vs {cc}");
    let (kc, kg) = (cpu.kl.unwrap(), gpu.kl.unwrap());
    assert!((kg - kc).abs() < 1e-4, "{what}: KL {kg} vs {kc}");
    let positions = (cpu.predictions + cpu.windows) as f64;
    let top1 = (gpu.top1.unwrap() - cpu.top1.unwrap()).abs() * positions;
    assert!(top1 <= 2.0 * (positions / 1024.0).max(1.0), "{what}: top-1 differs at {top1} positions");
}

#[test]
fn the_page_evaluates_and_generates_alike_on_both_devices() {
    let text = std::fs::read_to_string(shared("corpus/eval-dev.txt")).unwrap();
    let spec = EvalSpec { text, skip: 0, tokens: 1024, window: 512, part: 0, parts: 1 };
    let mut s = Session::new(MemoryBudget::new(4.0 * 1024.0 * 1024.0 * 1024.0, None), None);
    s.open(bard_files()).unwrap();
    s.load(&|_, _, _| {}).unwrap();
    s.gpu_attach(new_gpu(u64::MAX));
    let low_rank = Policy { rank: 16, ..Default::default() };
    let origin = Policy { rank: 32, quant: QuantScheme::PerTensor, break_even_guard: false, ..Default::default() };
    for (name, policy) in [("low-rank INT8 per row", low_rank), ("the origin's per-tensor INT8", origin)] {
        s.compress_begin(policy, None).unwrap();
        while s.compress_step().unwrap().is_some() {}
        s.compress_finish().unwrap();
        let cpu = evaluate_on_cpu(&mut s, &spec);
        let gpu = evaluate_on_gpu(&mut s, &spec);
        assert_same_figures(&cpu, &gpu, name);
        for which in [Which::Original, Which::Compressed] {
            let want = generate_on_cpu(&mut s, which, 32);
            assert_eq!(
                generate_on_gpu(&mut s, which, 32),
                want,
                "{name}: the {} model's 32 greedy tokens",
                which.name()
            );
        }
    }
}
