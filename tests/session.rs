//! The page's scenarios, natively: the session the wasm edge wraps, driven as the worker drives it — open, load,
//! compress, evaluate, generate, export and reopen, a new model invalidating the old results, memory refusals.
#![cfg(not(target_arch = "wasm32"))]

#[path = "common/mod.rs"]
mod common;

use semantic_llm_compressor::alloc::{self, CountingAlloc};
use semantic_llm_compressor::compression::policy::Policy;
use semantic_llm_compressor::error::ErrorKind;
use semantic_llm_compressor::model::checkpoint::MemSource;
use semantic_llm_compressor::model::generate::SamplingParams;
use semantic_llm_compressor::session::{EvalSpec, EvalSummary, MemoryBudget, ModelFiles, OpenedKind, Session, Which};
use std::path::PathBuf;
use std::sync::Mutex;

#[global_allocator]
static A: CountingAlloc = CountingAlloc;

/// Memory figures are measured per process: the scenarios run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn shared(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared").join(p)
}

fn files(dir: &str, names: &[&str]) -> ModelFiles {
    let mut f = ModelFiles::default();
    for n in names {
        let bytes = std::fs::read(shared(dir).join(n)).unwrap();
        f.add(n, Box::new(MemSource::new(*n, bytes))).unwrap();
    }
    f
}

fn bard() -> ModelFiles {
    files("models/neo-bard-8l", &["config.json", "tokenizer.json", "model.safetensors"])
}

fn session(limit: f64) -> Session {
    Session::new(MemoryBudget::new(limit, None), None)
}

fn text() -> String {
    std::fs::read_to_string(shared("corpus/eval-dev.txt")).unwrap()[..4000].to_string()
}

fn spec() -> EvalSpec {
    EvalSpec { text: text(), skip: 0, tokens: 256, window: 128, part: 0, parts: 1 }
}

fn evaluate(s: &mut Session, spec: &EvalSpec) -> EvalSummary {
    s.eval_begin(spec).unwrap();
    while s.eval_step().unwrap().is_some() {}
    s.eval_report().unwrap()
}

fn generate(s: &mut Session, which: Which) -> String {
    s.generate_start(which, common::ROMEO, SamplingParams::default()).unwrap();
    let mut out = String::new();
    while let Some(step) = s.generate_next(which).unwrap() {
        out.push_str(&step.text);
    }
    out
}

fn compress(s: &mut Session, policy: Policy) -> usize {
    s.compress_begin(policy, None).unwrap();
    let mut layers = 0;
    while let Some(step) = s.compress_step().unwrap() {
        layers += step.layer.is_some() as usize;
    }
    layers
}

/// neo-bard-8l opened and loaded in a session with 4 GiB.
fn loaded() -> Session {
    let mut s = session(4.0 * GIB);
    s.open(bard()).unwrap();
    s.load(&|_, _, _| {}).unwrap();
    s
}

/// The command line's one call on neo-bard-8l, calibrated on `text()`.
fn cli_compress(policy: Policy) -> semantic_llm_compressor::compression::pipeline::Compressed {
    let b = semantic_llm_compressor::model::bundle::ModelBundle::open_dir(&shared("models/neo-bard-8l")).unwrap();
    let original = b.load_model(false).unwrap();
    let ids = b.tokenizer().unwrap().encode(&text()).unwrap();
    semantic_llm_compressor::compression::driver::compress_checkpoint(
        &b.cfg,
        &b.ckpt,
        policy,
        Some((&original, &ids)),
        &mut |_| {},
    )
    .unwrap()
}

/// The compressed checkpoint the session exports, as bytes.
fn export(s: &Session) -> Vec<u8> {
    let mut bytes = Vec::new();
    s.export(&mut |b| {
        bytes.extend_from_slice(b);
        Ok(())
    })
    .unwrap();
    bytes
}

/// neo-bard-8l opened and loaded, compressed at rank 16 and evaluated.
fn compressed_and_evaluated() -> Session {
    let mut s = loaded();
    compress(&mut s, Policy { rank: 16, ..Default::default() });
    s.compress_finish().unwrap();
    evaluate(&mut s, &spec());
    s
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

#[test]
fn open_load_compress_evaluate_generate_export_reopen() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut s = session(4.0 * GIB);
    let r = s.open(bard()).unwrap();
    assert_eq!(r.kind, OpenedKind::Original);
    assert_eq!(r.summary.num_layers, 8);
    assert!(r.missing.is_empty());
    let loaded = s.load(&|_, _, _| {}).unwrap();
    assert!(!loaded.keep_half);
    assert_eq!(generate(&mut s, Which::Original), common::ROMEO_CONTINUATION);
    let policy = Policy { rank: 16, skip: vec!["mlp.c_fc".into(), "mlp.c_proj".into()], ..Default::default() };
    assert_eq!(compress(&mut s, policy), 49);
    let fin = s.compress_finish().unwrap();
    assert_eq!(fin.layers_compressed, 32);
    assert_eq!(s.layer_reports().unwrap().len(), 49);
    let first = evaluate(&mut s, &spec());
    assert!(first.eval.cosine.unwrap() > 0.9);
    assert!(!generate(&mut s, Which::Compressed).is_empty());
    // split in two parts, as the helpers do: the same figures exactly
    let mut part = spec();
    part.parts = 2;
    part.part = 1;
    s.eval_begin(&part).unwrap();
    while s.eval_step().unwrap().is_some() {}
    let other = s.eval_partial().unwrap();
    part.part = 0;
    s.eval_begin(&part).unwrap();
    while s.eval_step().unwrap().is_some() {}
    s.eval_merge(&other).unwrap();
    assert_eq!(s.eval_report().unwrap().eval.cosine.unwrap().to_bits(), first.eval.cosine.unwrap().to_bits());

    let bytes = export(&s);
    let mut f = ModelFiles::default();
    f.add("neo-bard-8l-compressed.safetensors", Box::new(MemSource::new("neo-bard-8l-compressed.safetensors", bytes)))
        .unwrap();
    let r = s.open(f).unwrap();
    assert_eq!(r.kind, OpenedKind::Compressed);
    assert!(r.matches_original);
    let second = evaluate(&mut s, &spec());
    for (k, a, b) in [
        ("cosine", first.eval.cosine, second.eval.cosine),
        ("ppl_compressed", first.eval.ppl_compressed, second.eval.ppl_compressed),
        ("kl", first.eval.kl, second.eval.kl),
        ("top1", first.eval.top1, second.eval.top1),
    ] {
        assert_eq!(a, b, "{k} after reopening the export");
    }
    assert_eq!(first.bytes_compressed, second.bytes_compressed);
    assert_eq!(first.layers_compressed, second.layers_compressed);
    assert!(s.export(&mut |_| Ok(())).is_err(), "a compressed model loaded from its file is already exported");
}

#[test]
fn a_new_model_invalidates_the_old_results() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut s = compressed_and_evaluated();
    // another original: nothing of the first survives
    let r = s.open(files("fixtures/tiny-gpt-neo-v512", &["config.json", "model.safetensors"])).unwrap();
    assert_eq!(r.kind, OpenedKind::Original);
    assert_eq!(r.missing.len(), 1, "{:?}", r.missing);
    assert!(s.layer_reports().is_err());
    assert!(s.eval_report().is_err());
    assert!(s.generate_start(Which::Compressed, "x", SamplingParams::default()).is_err());
    assert!(s.generate_start(Which::Original, "x", SamplingParams::default()).is_err(), "not loaded yet");
    assert!(s.export(&mut |_| Ok(())).is_err());
    // a new compression replaces the old compressed model and its evaluation
    let mut s = compressed_and_evaluated();
    s.compress_begin(Policy { rank: 32, ..Default::default() }, None).unwrap();
    assert!(s.eval_report().is_err(), "the evaluation belonged to the replaced model");
    assert!(s.generate_start(Which::Compressed, "x", SamplingParams::default()).is_err());
}

#[test]
fn memory_refusals_name_the_figures() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // f32 (78 MB) does not fit, f16 (39 MB) does: the original is kept as stored, and still generates
    let mut s = session(0.0);
    s.open(bard()).unwrap();
    s.set_memory_limit(alloc::live_bytes() as f64 + 70e6);
    let loaded = s.load(&|_, _, _| {}).unwrap();
    assert!(loaded.keep_half);
    assert_eq!(generate(&mut s, Which::Original), common::ROMEO_CONTINUATION);
    // a generation is estimated before it starts (its cache, the prompt's pass, a weight block expanded): refused
    // with the figures when it will not fit, and the model still there for one that does
    s.set_memory_limit(alloc::live_bytes() as f64 + 4e6);
    let e = s.generate_start(Which::Original, common::ROMEO, SamplingParams::default()).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::Memory);
    let msg = e.to_string();
    assert!(msg.starts_with("not enough memory: generating 30 tokens with the original model needs about "), "{msg}");
    assert!(msg.contains("MiB") && msg.contains("models are still loaded"), "{msg}");
    s.set_memory_limit(alloc::live_bytes() as f64 + 40e6);
    assert_eq!(generate(&mut s, Which::Original), common::ROMEO_CONTINUATION);
    drop(s);

    // nothing fits: the original is refused with the figures, yet it can be compressed and exported
    let mut s = session(0.0);
    s.open(bard()).unwrap();
    s.set_memory_limit(alloc::live_bytes() as f64 + 30e6);
    let e = s.load(&|_, _, _| {}).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::Memory);
    let msg = e.to_string();
    assert!(msg.starts_with("not enough memory: the original model"), "{msg}");
    assert!(msg.contains("MiB") && msg.contains("can still be compressed"), "{msg}");
    // compressing reads one matrix at a time: it needs room for the factors and the dense tensors, not the model
    s.set_memory_limit(alloc::live_bytes() as f64 + 60e6);
    compress(&mut s, Policy { rank: 16, ..Default::default() });
    let fin = s.compress_finish().unwrap();
    assert_eq!(fin.layers_compressed, 48);
    // the streamed evaluation does not fit either
    s.set_memory_limit(alloc::live_bytes() as f64 + 10e6);
    let e = s.eval_begin(&spec()).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::Memory);
    assert!(e.to_string().contains("evaluating with the original read from its file"), "{e}");
    // with room, it streams
    s.set_memory_limit(4.0 * GIB);
    let begin = s.eval_begin(&spec()).unwrap();
    assert_eq!(begin.unit, "stage");
    let bytes = export(&s);
    // a compressed checkpoint larger than the room left is refused, naming it
    let mut small = session(0.0);
    small.set_memory_limit(alloc::live_bytes() as f64 + 10e6);
    let mut f = ModelFiles::default();
    f.add("c.safetensors", Box::new(MemSource::new("c.safetensors", bytes))).unwrap();
    let e = small.open(f).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::Memory);
    assert!(e.to_string().starts_with("not enough memory: the compressed model needs about"), "{e}");
}

/// The page's compression on several workers: helpers that only open the files factor matrices in any order, the
/// coordinator accepts them, and the compressed checkpoint is the one a single worker makes, byte for byte.
#[test]
fn matrices_shared_among_workers_give_the_same_checkpoint() {
    let _g = SERIAL.lock().unwrap();
    let policy = Policy { rank: 24, ..Default::default() };
    let mut one = session(4.0 * GIB);
    one.open(bard()).unwrap();
    compress(&mut one, policy.clone());
    one.compress_finish().unwrap();

    let mut owner = session(4.0 * GIB);
    owner.open(bard()).unwrap();
    let begin = owner.compress_begin(policy.clone(), None).unwrap();
    assert!(begin.can_split);
    let n = begin.matrices.len();
    let mut helpers: Vec<Session> = (0..2).map(|_| session(4.0 * GIB)).collect();
    for h in &mut helpers {
        h.open(bard()).unwrap();
    }
    let share = owner.compress_shareable().unwrap();
    assert_eq!((share.phase, share.todo.len()), ("factor", n));
    // the matrices in reverse, alternating between the helpers
    let mut reports = 0;
    for (k, i) in (0..n).rev().enumerate() {
        let bytes = helpers[k % 2].run_work(owner.compress_work_out(i).unwrap()).unwrap();
        if k == 0 {
            // a result accepted twice is refused, naming the matrix
            let again = bytes.clone();
            owner.compress_accept(bytes).unwrap();
            let e = owner.compress_accept(again).err().unwrap().to_string();
            assert!(e.contains("twice"), "{e}");
            reports += 1;
            continue;
        }
        let step = owner.compress_accept(bytes).unwrap();
        assert_eq!(step.info.done, k + 1);
        reports += step.layer.is_some() as usize;
    }
    assert_eq!(reports, n);
    owner.compress_finish().unwrap();
    assert_eq!(export(&owner), export(&one));
    // a policy with a spectrum pass is not shared
    let mut s = session(4.0 * GIB);
    s.open(bard()).unwrap();
    assert!(!s.compress_begin(Policy { energy: Some(0.5), ..Default::default() }, None).unwrap().can_split);
}

/// An f32 checkpoint whose f32 weights do not fit (as GPT-Neo-1.3B's 5.3 GB do not fit a 4 GiB tab): the original is
/// held with every matrix converted to f16, says so, and still generates.
#[test]
fn an_f32_original_that_does_not_fit_is_held_in_f16() {
    use semantic_llm_compressor::model::synth::Synth;
    use semantic_llm_compressor::model::weights::Precision;
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cfg_text = std::fs::read_to_string(shared("models/neo-bard-8l/config.json")).unwrap();
    let cfg = semantic_llm_compressor::model::config::GptNeoConfig::from_json(&cfg_text).unwrap();
    let plan = Synth::new(&cfg, safetensors::Dtype::F32, 5, 0).unwrap();
    let header = plan.header().unwrap();
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header);
    plan.tensors(&mut |_, b| {
        bytes.extend_from_slice(b);
        Ok(())
    })
    .unwrap();
    let model_files = |bytes: Vec<u8>| {
        let mut f = ModelFiles::default();
        f.add("config.json", Box::new(MemSource::new("config.json", cfg_text.clone().into_bytes()))).unwrap();
        let tok = std::fs::read(shared("models/neo-bard-8l/tokenizer.json")).unwrap();
        f.add("tokenizer.json", Box::new(MemSource::new("tokenizer.json", tok))).unwrap();
        f.add("model.safetensors", Box::new(MemSource::new("model.safetensors", bytes))).unwrap();
        f
    };
    // with room: f32
    let mut full = session(4.0 * GIB);
    full.open(model_files(bytes.clone())).unwrap();
    let loaded = full.load(&|_, _, _| {}).unwrap();
    assert_eq!(loaded.precision, Precision::F32);
    let f32_bytes = loaded.resident_bytes;
    // f32 (78 MB) does not fit, neither does anything kept as stored (all of it is f32); f16 (40 MB) does
    let mut s = session(0.0);
    s.open(model_files(bytes)).unwrap();
    s.set_memory_limit(alloc::live_bytes() as f64 + 60e6);
    let loaded = s.load(&|_, _, _| {}).unwrap();
    assert_eq!(loaded.precision, Precision::F16);
    assert!(loaded.keep_half);
    assert!((loaded.resident_bytes as f64) < 0.55 * f32_bytes as f64, "{} vs {f32_bytes}", loaded.resident_bytes);
    let text = generate(&mut s, Which::Original);
    assert!(!text.is_empty());
    assert!(serde_json::to_string(&loaded).unwrap().contains("\"precision\":\"f16\""), "the page is told");
}

/// The page's step-by-step compression (calibration windows, probes, spectra, a block of refit per step) gives the
/// same checkpoint as the command line's one call, for the loss allocation with the sequential refit.
#[test]
fn refit_with_loss_allocation_steps_to_the_same_checkpoint_as_the_cli() {
    use semantic_llm_compressor::compression::policy::{BudgetMode, Method};
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let policy = Policy {
        method: Method::Refit,
        budget: Some(0.2),
        budget_mode: BudgetMode::Loss,
        calibration_tokens: 512,
        calibration_window: 256,
        sensitivity_tokens: 256,
        ..Default::default()
    };
    let mut s = loaded();
    s.compress_begin(policy.clone(), Some(&text())).unwrap();
    let mut phases = std::collections::BTreeSet::new();
    while let Some(step) = s.compress_step().unwrap() {
        phases.insert(step.info.phase);
    }
    assert_eq!(phases.into_iter().collect::<Vec<_>>(), ["calibrate", "factor", "refit", "spectrum"]);
    let finished = s.compress_finish().unwrap();
    // the model's memory, not the probes' logits (256 tokens × 50257 × 4 B = 51 MB) or the refit's states: measured
    // 30.8 MB for 27.6 MB of tensors on two threads, 28.7 MB on one (RAYON_NUM_THREADS=1): ~2 MB is what the second
    // thread of the pool keeps, the other ~1.1 MB (layer reports, the model's small structures) is not broken down. It
    // was 39.2 MB until the linear algebra's per-thread scratch (6.3 MB of it here) was reserved before measuring
    // what compression touched and what it did not add up to the export's tensors
    assert_eq!(finished.totals.bytes_after + finished.bytes_untouched, finished.tensor_bytes);
    assert_eq!(finished.totals.bytes_considered + finished.bytes_untouched, finished.bytes_original);
    let (resident, stored) = (finished.resident_bytes as f64, finished.tensor_bytes as f64);
    assert!(resident < 1.25 * stored, "resident {resident} B for {stored} B of tensors");
    let page = export(&s);
    let cli = cli_compress(policy);
    let reports = s.layer_reports().unwrap();
    for (p, c) in reports.iter().zip(&cli.reports) {
        assert_eq!((&p.name, p.rank, p.err_activations), (&c.name, c.rank, c.err_activations));
        if p.rank.is_some() {
            assert!(c.probe.is_some_and(|x| x.damage.positions == 256), "{} was probed", c.name);
        }
    }
    // a budget of 20%: what the allocation kept
    let kept: usize = cli.reports.iter().filter(|r| !r.tied).map(|r| r.params_after).sum();
    let all: usize = cli.reports.iter().filter(|r| !r.tied).map(|r| r.params_before).sum();
    assert!(kept as f64 <= 0.2 * all as f64 && kept as f64 > 0.15 * all as f64, "{kept} of {all}");
    assert!(page.len() > 1_000_000);
}

/// A quality target searched the page's way (a compression, then an evaluation on the calibration tokens, a point
/// recorded, per budget) walks the same path as the command line's one call and keeps the same budget.
#[test]
fn a_target_searched_step_by_step_walks_the_cli_path() {
    use semantic_llm_compressor::compression::policy::{BudgetMode, Method};
    use semantic_llm_compressor::explore::{search_target, Target};
    use semantic_llm_compressor::session::TargetSpec;
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let policy = Policy {
        method: Method::Whitened,
        budget_mode: BudgetMode::Proportional,
        calibration_tokens: 512,
        calibration_window: 256,
        ..Default::default()
    };
    let spec: TargetSpec = serde_json::from_str(r#"{"target": {"cosine": 0.97}, "tolerance": 0.1}"#).unwrap();
    let mut s = loaded();
    let text = text();
    let mut state = serde_json::to_value(s.target_begin(&policy, &spec).unwrap()).unwrap();
    let mut budgets = Vec::new();
    while let Some(b) = state["next_budget"].as_f64() {
        budgets.push(b);
        s.compress_begin(Policy { budget: Some(b), ..policy.clone() }, Some(&text)).unwrap();
        while s.compress_step().unwrap().is_some() {}
        s.compress_finish().unwrap();
        let split = &state["split"];
        let n = |k: &str| split[k].as_u64().unwrap() as usize;
        if budgets.len() == 1 {
            // measured on the tokens after the calibration, it is not what the target asks for: refused, unrecorded
            let after = EvalSpec { text: text.clone(), skip: n("tokens"), tokens: 256, window: 256, part: 0, parts: 1 };
            evaluate(&mut s, &after);
            let e = s.target_record().err().expect("an evaluation off the calibration tokens is refused");
            assert!(e.to_string().contains("calibration tokens"), "{e}");
        }
        evaluate(
            &mut s,
            &EvalSpec {
                text: text.clone(),
                skip: n("skip"),
                tokens: n("tokens"),
                window: n("window"),
                part: 0,
                parts: 1,
            },
        );
        state = serde_json::to_value(s.target_record().unwrap()).unwrap();
        assert!(budgets.len() < 10, "the search ends");
    }
    // nothing is recorded once the search is over
    assert!(s.target_record().is_err());

    let b = semantic_llm_compressor::model::bundle::ModelBundle::open_dir(&shared("models/neo-bard-8l")).unwrap();
    let original = b.load_model(false).unwrap();
    let ids = b.tokenizer().unwrap().encode(&text).unwrap();
    let (_, path) =
        search_target(&b.cfg, &b.ckpt, &original, &ids, &policy, Target::Cosine(0.97), 0.1, &mut |_| {}).unwrap();
    let page: Vec<(f64, f64)> = state["path"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["budget"].as_f64().unwrap(), p["cosine"].as_f64().unwrap()))
        .collect();
    let cli: Vec<(f64, f64)> = path.iter().map(|p| (p.budget.unwrap(), p.cosine)).collect();
    assert_eq!(page.len(), cli.len());
    for ((bp, cp), (bc, cc)) in page.iter().zip(&cli) {
        assert_eq!(bp, bc);
        assert!((cp - cc).abs() < 1e-9, "cosine {cp} vs {cc} at budget {bp}");
    }
    assert!(page.len() >= 3, "a search, not one point: {page:?}");
    let best = state["best"].as_f64().unwrap();
    let met: Vec<bool> = state["path_met"].as_array().unwrap().iter().map(|m| m.as_bool().unwrap()).collect();
    // the kept budget is the smallest that met the target, and every point below it missed
    for ((b, c), m) in page.iter().zip(&met) {
        assert_eq!(*m, *c >= 0.97);
        assert!(*b >= best || !m, "{b} met the target below the kept {best}");
    }
    assert!(met.iter().any(|&m| m) && best < 1.0);
}

/// The preview of a policy that fixes its ranks from the shapes is what the compression then stores, matrix by
/// matrix (decision, rank, bytes) and in total; a policy that chooses ranks from the spectra says so and gives no
/// sizes it does not know.
#[test]
fn a_preview_is_what_the_compression_then_stores() {
    use semantic_llm_compressor::compression::policy::{BudgetMode, Method};
    use semantic_llm_compressor::model::storage::QuantScheme;
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut s = session(4.0 * GIB);
    s.open(bard()).unwrap();
    let policies = [
        Policy { rank: 16, quant: QuantScheme::PerTensor, break_even_guard: false, ..Default::default() },
        Policy { rank: 64, skip: vec!["mlp.c_fc".into(), "mlp.c_proj".into()], ..Default::default() },
        Policy { rank: 200, quant_bits: 32, ..Default::default() }, // the guard keeps some dense
        Policy { budget: Some(0.3), budget_mode: BudgetMode::Proportional, ..Default::default() },
        Policy { budget: Some(0.3), budget_mode: BudgetMode::Uniform, ..Default::default() },
        Policy { method: Method::Int8, ..Default::default() },
    ];
    for policy in policies {
        let p = s.preview(&policy).unwrap();
        assert!(p.decided_when_run.is_none(), "{policy:?}");
        compress(&mut s, policy.clone());
        let done = s.compress_finish().unwrap();
        let reports = s.layer_reports().unwrap();
        assert_eq!(p.matrices.len(), reports.len());
        for (m, r) in p.matrices.iter().zip(reports) {
            assert_eq!(m.name, r.name);
            assert_eq!(m.rank, r.rank, "{}", m.name);
            assert_eq!(m.bytes_after, Some(r.bytes_after), "{} under {policy:?}", m.name);
            assert_eq!(m.decision == "dense", r.reason.is_some() || r.storage.starts_with("dense"), "{}", m.name);
        }
        assert_eq!(p.linear_bytes_before, done.totals.bytes_considered);
        assert_eq!(p.linear_bytes_after, Some(done.totals.bytes_after), "{policy:?}");
        assert_eq!(p.linear_params_after, Some(done.totals.params_after), "{policy:?}");
        assert_eq!(p.bytes_untouched, done.bytes_untouched);
        assert_eq!(p.layers_compressed, done.totals.layers_compressed, "{policy:?}");
    }
    for policy in [
        Policy { budget: Some(0.5), budget_mode: BudgetMode::Energy, ..Default::default() },
        Policy { energy: Some(0.9), ..Default::default() },
    ] {
        let p = s.preview(&policy).unwrap();
        let why = p.decided_when_run.expect("ranks from spectra are decided when it runs");
        assert!(why.contains("when it runs"), "{why}");
        assert_eq!(p.linear_bytes_after, None);
        assert!(p
            .matrices
            .iter()
            .filter(|m| !m.tied)
            .all(|m| m.decision == "from-spectrum" && m.bytes_after.is_none()));
    }
    // a bad setting is refused with its sentence, as the compression would refuse it
    let e = s.preview(&Policy { budget: Some(1.5), ..Default::default() }).unwrap_err();
    assert!(e.to_string().contains("budget 1.5"), "{e}");
}

/// The sensitivity table measured in parts, a matrix at a time (as the page's workers share it), has the rows of the
/// table measured in one call, each exactly.
#[test]
fn sensitivity_in_parts_equals_the_whole_table() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let policy = Policy {
        rank: 8,
        calibration_tokens: 256,
        calibration_window: 128,
        sensitivity_tokens: 128,
        ..Default::default()
    };
    let mut s = loaded();
    let text = text();
    let whole = s.sensitivity(&policy, &text).unwrap();
    assert_eq!(whole.len(), 8 * 6);
    let mut parts = Vec::new();
    for part in 0..3 {
        let n = s.sensitivity_begin(&policy, &text, part, 3).unwrap();
        assert_eq!(n, 16);
        let mut got = 0;
        while let Some(row) = s.sensitivity_step().unwrap() {
            got += 1;
            parts.push(row);
        }
        assert_eq!(got, n);
        assert!(s.sensitivity_step().is_err(), "a finished part is not stepped again");
    }
    parts.sort_by_key(|r| whole.iter().position(|w| w.name == r.name).unwrap());
    for (a, b) in whole.iter().zip(&parts) {
        assert_eq!(a.name, b.name);
        assert_eq!(a.rank, b.rank);
        assert_eq!(a.damage, b.damage, "{}", a.name);
    }
    assert!(s.sensitivity_begin(&policy, &text, 3, 3).is_err());
}

/// The memory a compressed model holds, as measured, does not depend on what the session ran before: the first
/// compression of a session and the same one after others report the same bytes (before the linear algebra's
/// per-thread scratch was reserved first, the first reported 8.4 MB more: 44,838,544 against 36,430,856).
#[test]
fn the_resident_figure_does_not_depend_on_what_ran_before() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let p = Policy { rank: 64, skip: vec!["mlp.c_fc".into(), "mlp.c_proj".into()], ..Default::default() };
    let mut s = loaded();
    compress(&mut s, p.clone());
    let first = s.compress_finish().unwrap().resident_bytes;
    for rank in [16, 200] {
        compress(&mut s, Policy { rank, ..Default::default() });
        s.compress_finish().unwrap();
        evaluate(&mut s, &spec());
        generate(&mut s, Which::Compressed);
    }
    compress(&mut s, p);
    let again = s.compress_finish().unwrap().resident_bytes;
    assert_eq!(first, again, "the same compression after others");
    assert!(first > 0);
}

/// The block-level refinement in the page's steps: one call per Adam step, each reported ("refine", block and step),
/// as many steps as the compression announced, and the same checkpoint as the command line's one call.
#[test]
fn refinement_steps_one_at_a_time_to_the_same_checkpoint_as_the_cli() {
    use semantic_llm_compressor::compression::policy::{BudgetMode, Method};
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let policy = Policy {
        method: Method::Refit,
        budget: Some(0.5),
        budget_mode: BudgetMode::Proportional,
        calibration_tokens: 512,
        calibration_window: 128,
        refine_steps: 3,
        ..Default::default()
    };
    let mut s = loaded();
    let total = s.compress_begin(policy.clone(), Some(&text())).unwrap().total_steps;
    let (mut steps, mut refine) = (0, Vec::new());
    while let Some(step) = s.compress_step().unwrap() {
        steps += 1;
        if step.info.phase == "refine" {
            refine.push(step.info.name.clone());
        }
    }
    assert_eq!(steps, total, "steps taken and announced");
    assert_eq!(refine.len(), 8 * 3, "three steps for each of the 8 blocks: {refine:?}");
    assert!(refine[0].starts_with("block 1/8, step 1/3, output error "), "{}", refine[0]);
    assert!(refine[23].starts_with("block 8/8, step 3/3"), "{}", refine[23]);
    let refined_bytes = s.compress_finish().unwrap().tensor_bytes;
    let page = export(&s);
    let cli = cli_compress(policy.clone());
    let reports = s.layer_reports().unwrap();
    assert_eq!(reports.len(), cli.reports.len());
    let mut refined = 0;
    for (p, c) in reports.iter().zip(&cli.reports) {
        assert_eq!((&p.name, p.rank, p.err_stored), (&c.name, c.rank, c.err_stored));
        refined += p.reason.as_deref().is_some_and(|r| r.starts_with("refined with its block")) as usize;
    }
    assert_eq!(refined, 48, "every block matrix refined");
    // and the refinement changed what is stored: the refit alone stores other factors
    let mut s0 = loaded();
    s0.compress_begin(Policy { refine_steps: 0, ..policy }, Some(&text())).unwrap();
    while s0.compress_step().unwrap().is_some() {}
    assert_eq!(s0.compress_finish().unwrap().tensor_bytes, refined_bytes, "same ranks, same bytes");
    assert_ne!(export(&s0), page);
}

/// The original is evaluated once per span: a later evaluation on the same tokens makes the original's logits from
/// its kept final states with the head alone, and every figure is the same to the last bit as when the original runs
/// again (a fresh session) — for a second compression, and for the same one evaluated twice.
#[test]
fn the_original_is_evaluated_once_per_span_and_the_figures_are_the_same_to_the_bit() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let figures = |r: &EvalSummary| serde_json::to_string(&r.eval).unwrap();
    let mut s = loaded();
    compress(&mut s, Policy { rank: 32, ..Default::default() });
    s.compress_finish().unwrap();
    let first = evaluate(&mut s, &spec());
    assert_eq!(s.original_windows_reused(), 0, "the first evaluation runs the original");
    let windows = first.eval.windows;
    compress(&mut s, Policy { rank: 16, ..Default::default() });
    s.compress_finish().unwrap();
    let second = evaluate(&mut s, &spec());
    assert_eq!(s.original_windows_reused(), windows, "the second reuses every window's states");
    let again = evaluate(&mut s, &spec());
    assert_eq!(figures(&again), figures(&second), "the same evaluation twice");

    let mut fresh = loaded();
    compress(&mut fresh, Policy { rank: 16, ..Default::default() });
    fresh.compress_finish().unwrap();
    let want = evaluate(&mut fresh, &spec());
    assert_eq!(fresh.original_windows_reused(), 0);
    assert_eq!(figures(&second), figures(&want), "kept states and a fresh run of the original give the same figures");
    assert_eq!(second.eval.ppl_original.to_bits(), want.eval.ppl_original.to_bits());
    // another span runs the original again
    let other = EvalSpec { skip: 256, ..spec() };
    evaluate(&mut s, &other);
    assert_eq!(s.original_windows_reused(), 2 * windows, "a new span is not found among the kept states");
}

/// Work one compression has done is not done again by the next: the origin's fix keeps the attention matrices of the
/// origin's setting as they were factored (taken, not factored again), and its checkpoint is the same to the byte as
/// a fresh session's; a policy that factors differently (another rank) takes nothing.
#[test]
fn a_compression_takes_what_the_one_before_factored_the_same_way() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    use semantic_llm_compressor::model::storage::QuantScheme;
    let origin = Policy { rank: 16, quant: QuantScheme::PerTensor, break_even_guard: false, ..Default::default() };
    let fix = Policy { skip: vec!["mlp.c_fc".into(), "mlp.c_proj".into()], ..origin.clone() };
    let mut s = loaded();
    let todo = s.compress_begin(origin.clone(), None).unwrap().todo.len();
    assert_eq!(todo, 49, "the first compression factors every matrix");
    while s.compress_step().unwrap().is_some() {}
    s.compress_finish().unwrap();
    let begin = s.compress_begin(fix.clone(), None).unwrap();
    let names: Vec<String> = begin.todo.iter().map(|&i| begin.matrices[i].name.clone()).collect();
    assert!(
        names.iter().all(|n| n.contains("mlp") || n.contains("lm_head")),
        "only the MLP and the head are left: {names:?}"
    );
    while s.compress_step().unwrap().is_some() {}
    s.compress_finish().unwrap();
    let mut fresh = loaded();
    compress(&mut fresh, fix);
    fresh.compress_finish().unwrap();
    assert_eq!(export(&s), export(&fresh), "taken factors are the ones the work would make");
    // another rank: nothing is taken
    let other = s.compress_begin(Policy { rank: 8, ..origin }, None).unwrap().todo.len();
    assert_eq!(other, 49);
}
