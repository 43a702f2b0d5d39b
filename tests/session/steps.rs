//! The session's step-by-step paths against the command line's (refit, targets, refinement, sensitivity, previews)
//! and what one step keeps for the next (the original's figures, earlier factors).

use super::*;

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
    // a policy whose plans need the weights' spectra, which a later compression takes instead of computing them
    // (the talk's story ends on one): fresh, then after itself
    let budget = Policy { budget: Some(0.5), ..Default::default() };
    let mut fresh = loaded();
    compress(&mut fresh, budget.clone());
    let first = fresh.compress_finish().unwrap().resident_bytes;
    compress(&mut fresh, Policy { rank: 16, ..Default::default() });
    fresh.compress_finish().unwrap();
    compress(&mut fresh, budget);
    assert_eq!(first, fresh.compress_finish().unwrap().resident_bytes, "a budget's compression after others");
}

/// A compression refused midway (here its allocation check's probe does not fit beside its calibration statistics)
/// leaves nothing the next compression counts as its own: the next one's resident bytes are a fresh session's.
#[test]
fn a_compression_refused_midway_does_not_count_in_the_next_ones_memory() {
    use semantic_llm_compressor::compression::policy::{BudgetMode, Method};
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let text = text();
    let base =
        Policy { calibration_tokens: 1024, calibration_window: 256, sensitivity_tokens: 1024, ..Default::default() };
    let gptq = Policy { method: Method::Gptq, bits: 4, group: 64, ..base.clone() };
    let checked = Policy {
        method: Method::Whitened,
        budget: Some(0.7),
        budget_mode: BudgetMode::Energy,
        allocation_check: true,
        ..base
    };
    let run = |s: &mut Session, p: &Policy| {
        s.compress_begin(p.clone(), Some(&text))?;
        while s.compress_step()?.is_some() {}
        s.compress_finish()
    };
    // the statistics (76 MiB, with the widest layer's decomposition 134 MiB) fit all at once, the probe's logits on
    // 1024 tokens (215 MB) beside them do not, and at the end there is no room to keep the statistics
    let small = || {
        let mut s = loaded();
        s.set_memory_limit(alloc::live_bytes() as f64 + 200e6);
        s
    };
    let expected = run(&mut loaded(), &gptq).unwrap().resident_bytes;
    let mut s = small();
    let e = run(&mut s, &checked).err().unwrap();
    assert_eq!(
        e.kind(),
        ErrorKind::CheckMemory,
        "the check's refusal is its own kind: the page runs the step without it"
    );
    assert!(e.to_string().contains("the allocation check's probe"), "{e}");
    // the refused compression's statistics taken (not collected again), then freed for want of room: the fresh
    // session's ~28.8 MiB (within what the kept statistics' own bookkeeping is estimated to, a few KB); freed before the
    // measurement, as until now, they made it 0
    let after = run(&mut s, &gptq).unwrap().resident_bytes;
    let diff = (after as f64 - expected as f64).abs();
    assert!(diff < 64e3, "resident {after} B after a refused compression, {expected} B in a fresh session");
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
