//! The engine's own invariants and methods: export and import, refusals, the streaming evaluation, activation-aware
//! SVD, the refit and the allocations (the reference table is in `compression.rs`).

use super::*;

/// Export → import gives bit-identical logits and keeps the INT8 (and INT4) factors as codes, for this model and
/// another GPT-Neo.
#[test]
fn export_then_import_gives_identical_logits() {
    for (dir, policy) in [
        (
            "models/neo-bard-8l",
            Policy { rank: 32, skip: MLP.iter().map(|s| s.to_string()).collect(), ..Default::default() },
        ),
        ("models/neo-bard-8l", origin(64, false)),
        (
            "models/neo-bard-8l",
            Policy { method: semantic_llm_compressor::compression::policy::Method::Int8, ..Default::default() },
        ),
        (
            "models/neo-bard-8l",
            Policy {
                method: semantic_llm_compressor::compression::policy::Method::Quant,
                bits: 3,
                group: 48,
                ..Default::default()
            },
        ),
        ("fixtures/tiny-gpt-neo-v512", Policy { rank: 8, quant_bits: 32, ..Default::default() }),
        // low-rank factors as group-wise INT4 codes (a rank below the group: one short group a row of U)
        ("models/neo-bard-8l", Policy { rank: 40, quant_bits: 4, group: 64, ..Default::default() }),
        (
            "fixtures/tiny-gpt-neo-v512",
            Policy {
                rank: 12,
                rank_for: vec![semantic_llm_compressor::compression::policy::RankRule::parse("c_fc=20").unwrap()],
                ..Default::default()
            },
        ),
    ] {
        let config = std::fs::read_to_string(shared(dir).join("config.json")).unwrap();
        let weights = std::fs::read(shared(dir).join("model.safetensors")).unwrap();
        common::check_export_roundtrip(&config, &weights, policy);
    }
}

#[test]
fn bad_policies_and_files_are_sentences() {
    let b = bard();
    let e = compress_checkpoint(&b.cfg, &b.ckpt, Policy { quant_bits: 5, ..Default::default() }, None, &mut |_| {})
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("quant_bits"), "{e}");
    let e = semantic_llm_compressor::model::bundle::ModelBundle::open_dir(&shared("corpus")).err().unwrap().to_string();
    assert!(e.contains("model.safetensors"), "{e}");
}

/// The streaming evaluation (the original read one block at a time) gives the figures of the ordinary one.
#[test]
fn streaming_evaluation_matches_the_ordinary_one() {
    use semantic_llm_compressor::evaluation::streaming::StreamingEvaluator;
    use semantic_llm_compressor::model::weights::{CheckpointWeights, Precision};
    let b = bard();
    let c = compress(&b, Policy { rank: 32, skip: MLP.iter().map(|s| s.to_string()).collect(), ..Default::default() });
    let ids = eval_dev_ids(&b);
    let original = b.load_model(false).unwrap();
    let mut ev = Evaluator::new(&ids, 1024, 256).unwrap();
    while ev.step(&original, Some(&c.model)).unwrap() {}
    let want = ev.report();
    for keep_half in [false, true] {
        let precision = if keep_half { Precision::AsStored } else { Precision::F32 };
        let w = CheckpointWeights { ckpt: &b.ckpt, precision };
        let mut st = StreamingEvaluator::new(&ids, 1024, 256).unwrap();
        let mut steps = 0;
        while st.step(&b.cfg, &w, Some(&c.model)).unwrap() {
            steps += 1;
        }
        assert_eq!(steps, st.total_steps(&b.cfg));
        let got = st.report();
        let tol = if keep_half { 1e-5 } else { 1e-9 };
        for (name, a, e) in [
            ("ppl_original", got.ppl_original, want.ppl_original),
            ("ppl_compressed", got.ppl_compressed.unwrap(), want.ppl_compressed.unwrap()),
            ("cosine", got.cosine.unwrap(), want.cosine.unwrap()),
            ("kl", got.kl.unwrap(), want.kl.unwrap()),
            ("mse", got.mse.unwrap(), want.mse.unwrap()),
        ] {
            assert!((a - e).abs() <= tol * e.abs().max(1.0), "keep_half {keep_half}: {name} {a} vs {e}");
        }
        assert_eq!(got.top1, want.top1);
    }
}

/// Activation-aware SVD, calibrated on the first 4096 tokens of eval-dev.txt and evaluated on the 8192 after them,
/// keeps the model far better than plain SVD at the same rank and size (the reference measured rank 32: perplexity
/// ~1.2e4 → ~400 on its held-out text).
#[test]
fn activation_aware_svd_beats_plain_svd_on_held_out_text() {
    let b = bard();
    let original = b.load_model(false).unwrap();
    let ids = eval_dev_ids(&b);
    let policy = |method| Policy { rank: 32, method, calibration_tokens: 4096, ..Default::default() };
    let plain = compress(&b, policy(semantic_llm_compressor::compression::policy::Method::Svd));
    let aware = compress_checkpoint(
        &b.cfg,
        &b.ckpt,
        policy(semantic_llm_compressor::compression::policy::Method::Whitened),
        Some((&original, &ids)),
        &mut |_| {},
    )
    .unwrap();
    // same ranks, same bytes
    assert_eq!(
        plain.reports.iter().map(|r| r.bytes_after).sum::<usize>(),
        aware.reports.iter().map(|r| r.bytes_after).sum::<usize>()
    );
    // worse in plain Frobenius terms, better on the activations it was calibrated on
    for (p, a) in plain.reports.iter().zip(&aware.reports).filter(|(p, _)| p.rank.is_some()) {
        assert!(a.err_svd.unwrap() >= p.err_svd.unwrap() - 1e-9, "{}", p.name);
        assert!(a.err_activations.unwrap() < a.err_svd.unwrap(), "{}", p.name);
    }
    let mut ev = Evaluator::after(&ids, 4096, 8192, 512, 0, 1).unwrap();
    while ev.step_many(&original, &[&plain.model, &aware.model]).unwrap() {}
    let r = ev.reports();
    let (pp, pa) = (r[0].ppl_compressed.unwrap(), r[1].ppl_compressed.unwrap());
    eprintln!("rank 32, tokens 4096..12288: plain ppl {pp:.1} cosine {:.4}; activation-aware ppl {pa:.1} cosine {:.4}; original {:.2}", r[0].cosine.unwrap(), r[1].cosine.unwrap(), r[0].ppl_original);
    assert!(pa * 20.0 < pp, "activation-aware perplexity {pa} vs plain {pp}");
    assert!(r[1].cosine.unwrap() > r[0].cosine.unwrap() + 0.2);
    assert!(r[0].convention.starts_with("tokens 4096..12288"), "{}", r[0].convention);
    assert!((r[0].ppl_original - 52.87).abs() < 0.005, "original perplexity {}", r[0].ppl_original);
    // QUALITY.md's two rank-32 rows of its activation-aware table: (ppl, cosine, flattened cosine, top-1, KL)
    for (rep, (name, want)) in r.iter().zip([
        ("plain SVD", [62777.92, 0.4676, 0.2841, 0.044, 7.507]),
        ("activation-aware", [166.72, 0.8843, 0.9335, 0.365, 1.429]),
    ]) {
        let got = [
            rep.ppl_compressed.unwrap(),
            rep.cosine.unwrap(),
            rep.cosine_global.unwrap(),
            rep.top1.unwrap(),
            rep.kl.unwrap(),
        ];
        let tol = [0.01 * want[0], 0.001, 0.001, 0.002, 0.002 * want[4] + 0.001];
        for (k, ((g, w), t)) in ["ppl", "cosine", "cosine_flat", "top1", "kl"].iter().zip(got.iter().zip(want).zip(tol))
        {
            assert!((g - w).abs() <= t, "{name}, rank 32: {k} {g} vs QUALITY.md {w}");
        }
    }
}

/// Group-wise codes on held-out text (QUALITY.md's frontier section, tokens 4096..12288, calibration on the first
/// 4096): GPTQ's INT4 and INT3 in groups of 64 meet the size targets (4.25 bits ≤ ×1.008, 3.25 bits ≤ ×1.03),
/// GPTQ beats round-to-nearest at the same codes, the files store exactly the bits per parameter their layout says,
/// and the figures are QUALITY.md's.
#[test]
fn group_wise_codes_by_gptq_meet_their_size_targets_on_held_out_text() {
    use semantic_llm_compressor::compression::policy::Method;
    let b = bard();
    let original = b.load_model(false).unwrap();
    let ids = eval_dev_ids(&b);
    let policy = |method, bits| Policy { method, bits, group: 64, calibration_tokens: 4096, ..Default::default() };
    let run = |p: Policy| compress_checkpoint(&b.cfg, &b.ckpt, p, Some((&original, &ids)), &mut |_| {}).unwrap();
    let models = [run(policy(Method::Quant, 4)), run(policy(Method::Gptq, 4)), run(policy(Method::Gptq, 3))];
    for (c, bits) in models.iter().zip([4.25, 4.25, 3.25]) {
        let t = semantic_llm_compressor::compression::matrix::totals(&c.reports);
        assert_eq!(t.layers_compressed, 48);
        assert_eq!(t.bits_per_param, bits, "{:?}", c.policy.method);
    }
    let mut ev = Evaluator::after(&ids, 4096, 8192, 512, 0, 1).unwrap();
    while ev.step_many(&original, &[&models[0].model, &models[1].model, &models[2].model]).unwrap() {}
    let ratio: Vec<f64> = ev.reports().iter().map(|r| r.ppl_compressed.unwrap() / r.ppl_original).collect();
    eprintln!(
        "tokens 4096..12288: INT4 g64 round-to-nearest ×{:.4}, GPTQ ×{:.4}; INT3 g64 GPTQ ×{:.4}",
        ratio[0], ratio[1], ratio[2]
    );
    assert!(ratio[1] <= 1.008 && ratio[2] <= 1.03, "{ratio:?}");
    assert!(ratio[1] < ratio[0], "GPTQ {} vs round-to-nearest {}", ratio[1], ratio[0]);
    for (got, want) in ratio.iter().zip([1.0068, 1.0015, 1.0082]) {
        assert!((got - want).abs() <= 5e-4, "×{got:.4} against QUALITY.md's ×{want}");
    }
}

/// Below 1.1 bits (QUALITY.md's frontier, issue 32's smallest size): the refit with the loss allocation at 25% of the
/// parameters, its factors stored as INT4 codes in groups of 64, stores at most 1.1 bits per linear parameter and keeps
/// perplexity within ×1.6 of the original's on held-out text (tokens 4096..12288; calibration on the first 4096); the
/// same setting with INT8 factors at no fewer bits (12.5% of the parameters, 1.10 bits) loses more.
#[test]
fn int4_factors_reach_below_1_1_bits_within_1_6_on_held_out_text() {
    use semantic_llm_compressor::compression::matrix::totals;
    use semantic_llm_compressor::compression::policy::{BudgetMode, Method};
    let b = bard();
    let original = b.load_model(false).unwrap();
    let ids = eval_dev_ids(&b);
    let policy = |budget, quant_bits| Policy {
        method: Method::Refit,
        budget: Some(budget),
        budget_mode: BudgetMode::Loss,
        quant_bits,
        group: 64,
        calibration_tokens: 4096,
        ..Default::default()
    };
    let run = |p: Policy| compress_checkpoint(&b.cfg, &b.ckpt, p, Some((&original, &ids)), &mut |_| {}).unwrap();
    let (int4, int8) = (run(policy(0.25, 4)), run(policy(0.125, 8)));
    let bits = [totals(&int4.reports).bits_per_param, totals(&int8.reports).bits_per_param];
    assert!(bits[0] <= 1.1 && bits[1] >= bits[0], "bits per linear parameter {bits:?}");
    let mut ev = Evaluator::after(&ids, 4096, 8192, 512, 0, 1).unwrap();
    while ev.step_many(&original, &[&int4.model, &int8.model]).unwrap() {}
    let ratio: Vec<f64> = ev.reports().iter().map(|r| r.ppl_compressed.unwrap() / r.ppl_original).collect();
    eprintln!(
        "tokens 4096..12288: INT4 factors {:.3} bits ×{:.4}; INT8 factors {:.3} bits ×{:.4}",
        bits[0], ratio[0], bits[1], ratio[1]
    );
    assert!(ratio[0] <= 1.6, "INT4 factors at {} bits: ×{}", bits[0], ratio[0]);
    assert!(ratio[0] < ratio[1], "INT4 factors ×{} against INT8 factors ×{} at no fewer bits", ratio[0], ratio[1]);
    assert!((ratio[0] - 1.3484).abs() <= 5e-3, "×{:.4} against QUALITY.md's ×1.3484", ratio[0]);
}

/// Method auto at 2.1 bits per linear parameter (QUALITY.md's frontier; calibration on tokens 0..4096, measured on
/// 4096..12288): every matrix's storage chosen by its measured damage per byte mixes GPTQ codes with activation-aware
/// factors, stores at most 2.1 bits, and loses less than the uniform setting at that size (GPTQ INT2 in groups of 256,
/// 2.06 bits) and than the issue's ×1.12.
#[test]
fn auto_mixes_codes_and_factors_and_beats_one_setting_for_all_at_2_1_bits() {
    use semantic_llm_compressor::compression::matrix::totals;
    use semantic_llm_compressor::compression::policy::{BudgetUnit, Method};
    let b = bard();
    let original = b.load_model(false).unwrap();
    let ids = eval_dev_ids(&b);
    let run = |p: Policy| compress_checkpoint(&b.cfg, &b.ckpt, p, Some((&original, &ids)), &mut |_| {}).unwrap();
    let auto = run(Policy {
        method: Method::Auto,
        budget: Some(2.1),
        budget_unit: BudgetUnit::Bits,
        group: 64,
        calibration_tokens: 4096,
        ..Default::default()
    });
    let gptq2 =
        run(Policy { method: Method::Gptq, bits: 2, group: 256, calibration_tokens: 4096, ..Default::default() });
    let bits = [totals(&auto.reports).bits_per_param, totals(&gptq2.reports).bits_per_param];
    assert!(bits[0] <= 2.1 && bits[1] <= bits[0], "bits per linear parameter {bits:?}");
    let kinds = |word: &str| auto.reports.iter().filter(|r| r.storage.contains(word)).count();
    assert!(
        kinds("groups of 64") > 0 && kinds("rank ") > 0,
        "{:?}",
        auto.reports.iter().map(|r| &r.storage).collect::<Vec<_>>()
    );
    let mut ev = Evaluator::after(&ids, 4096, 8192, 512, 0, 1).unwrap();
    while ev.step_many(&original, &[&auto.model, &gptq2.model]).unwrap() {}
    let ratio: Vec<f64> = ev.reports().iter().map(|r| r.ppl_compressed.unwrap() / r.ppl_original).collect();
    eprintln!(
        "tokens 4096..12288: auto {:.3} bits ×{:.4}; GPTQ INT2 g256 {:.3} bits ×{:.4}",
        bits[0], ratio[0], bits[1], ratio[1]
    );
    assert!(ratio[0] <= 1.12 && ratio[0] < ratio[1], "auto ×{} against GPTQ INT2 g256 ×{}", ratio[0], ratio[1]);
    assert!((ratio[0] - 1.0866).abs() <= 5e-3, "×{:.4} against QUALITY.md's ×1.0866", ratio[0]);
}

/// The whitening claim, measured directly: for every compressed layer, the activation error of the whitened factors
/// (as stored, per-row INT8) is below that of plain SVD at the same rank (also as stored), both measured with the same
/// Gram matrix of calibration inputs; and that Gram matrix is the XᵀX of the layer's inputs computed here
/// independently from the model's hidden states, with the activation error equal to ‖ΔW Xᵀ‖F / ‖W Xᵀ‖F on those rows.
#[test]
fn whitened_factors_beat_plain_svd_on_the_same_activations() {
    use semantic_llm_compressor::compression::calib::Calibrator;
    let b = bard();
    let original = b.load_model(false).unwrap();
    let ids = eval_dev_ids(&b);
    let (tokens, window, rank) = (1024, 512, 32);
    let mut cal = Calibrator::new(&ids, tokens, window).unwrap();
    while cal.step(&original).unwrap() {}
    let grams = cal.finish();
    let policy = Policy {
        rank,
        method: Method::Whitened,
        calibration_tokens: tokens,
        calibration_window: window,
        ..Default::default()
    };
    let aware = compress_checkpoint(&b.cfg, &b.ckpt, policy, Some((&original, &ids)), &mut |_| {}).unwrap();
    let read = reader(&b.ckpt);
    let mut compared = 0;
    for rep in aware.reports.iter().filter(|r| r.rank.is_some()) {
        let g = grams.get(&rep.name).unwrap_or_else(|| panic!("no Gram matrix for {}", rep.name)).mean();
        let [out, inp] = rep.shape;
        let w = read(&rep.name).unwrap();
        let mut s = svd::exact(&w, out, inp).unwrap().truncate(rank);
        s.canonicalize_signs();
        let plain: Vec<f64> =
            factors(&s, semantic_llm_compressor::compression::policy::FactorStorage::Int8(QuantScheme::PerRow))
                .to_dense_f32()
                .unwrap()
                .iter()
                .map(|&x| x as f64)
                .collect();
        let ep = svd::rel_activation_error(&w, &plain, out, inp, &g);
        let ea = rep.err_activations.unwrap();
        assert!(ea < ep, "{}: whitened activation error {ea} is not below plain SVD's {ep}", rep.name);
        compared += 1;
    }
    assert_eq!(compared, 48, "every block matrix compared");

    // The Gram matrix of a q_proj is Σ xxᵀ over ln_1 of the block's input, for every calibration token.
    let cfg = &b.cfg;
    let h = cfg.hidden_size;
    for layer in [0usize, 5] {
        let name = format!("transformer.h.{layer}.attn.attention.q_proj.weight");
        let gamma = read(&format!("transformer.h.{layer}.ln_1.weight")).unwrap();
        let beta = read(&format!("transformer.h.{layer}.ln_1.bias")).unwrap();
        let mut xs: Vec<Vec<f64>> = Vec::new();
        for win in ids[..tokens].chunks(window) {
            let t = candle_core::Tensor::from_slice(win, (1, win.len()), &candle_core::Device::Cpu).unwrap();
            let (_, hidden) = original.forward_with_hidden(&t).unwrap();
            let rows: Vec<Vec<f32>> = hidden[layer].squeeze(0).unwrap().to_vec2().unwrap();
            for r in rows {
                let mean = r.iter().map(|&v| v as f64).sum::<f64>() / h as f64;
                let var = r.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / h as f64;
                let inv = 1.0 / (var + cfg.layer_norm_epsilon).sqrt();
                xs.push((0..h).map(|j| (r[j] as f64 - mean) * inv * gamma[j] as f64 + beta[j] as f64).collect());
            }
        }
        let gram = &grams[&name];
        assert_eq!(gram.count, tokens, "{name}: rows recorded");
        let mut want = vec![0f64; h * h];
        for x in &xs {
            for i in 0..h {
                for j in 0..h {
                    want[i * h + j] += x[i] * x[j];
                }
            }
        }
        let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
        let d = gram.g.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f64, f64::max);
        assert!(d <= 1e-4 * scale, "{name}: Gram differs from XᵀX by {d} (largest entry {scale})");
        // the activation error from the Gram equals the one measured on the rows themselves
        let w = read(&name).unwrap();
        let mut s = svd::exact(&w, h, h).unwrap().truncate(rank);
        s.canonicalize_signs();
        let wr = s.reconstruct();
        let (mut num, mut den) = (0f64, 0f64);
        for x in &xs {
            for i in 0..h {
                let (mut y, mut yr) = (0f64, 0f64);
                for j in 0..h {
                    y += w[i * h + j] as f64 * x[j];
                    yr += wr[i * h + j] * x[j];
                }
                num += (y - yr).powi(2);
                den += y * y;
            }
        }
        let direct = (num / den).sqrt();
        let via_gram = svd::rel_activation_error(&w, &wr, h, h, &gram.mean());
        assert!((direct - via_gram).abs() <= 1e-4 * direct, "{name}: {direct} measured vs {via_gram} from the Gram");
    }
}

/// A split evaluation merged from its parts gives exactly (bit for bit) the figures of one evaluation, for any
/// number of parts, and a part merged twice or a missing part is noticed.
#[test]
fn merged_parts_equal_one_evaluation_exactly() {
    let b = bard();
    let c = compress(&b, Policy { rank: 32, ..Default::default() });
    let original = b.load_model(false).unwrap();
    let ids = eval_dev_ids(&b);
    let (tokens, window) = (2000, 256);
    let mut one = Evaluator::new(&ids, tokens, window).unwrap();
    while one.step(&original, Some(&c.model)).unwrap() {}
    let want = one.report();
    let bits = |r: &semantic_llm_compressor::evaluation::metrics::EvalReport| {
        [
            r.ppl_original,
            r.ppl_compressed.unwrap(),
            r.cosine.unwrap(),
            r.cosine_global.unwrap(),
            r.mse.unwrap(),
            r.top1.unwrap(),
            r.kl.unwrap(),
        ]
        .map(f64::to_bits)
    };
    for parts in [2, 3, 5] {
        let mut evs: Vec<Evaluator> =
            (0..parts).map(|p| Evaluator::new_part(&ids, tokens, window, p, parts).unwrap()).collect();
        for ev in evs.iter_mut() {
            while ev.step(&original, Some(&c.model)).unwrap() {}
        }
        let partials: Vec<_> = evs[1..].iter().map(|e| e.partial()).collect();
        let mut short = Evaluator::new_part(&ids, tokens, window, 0, parts).unwrap();
        while short.step(&original, Some(&c.model)).unwrap() {}
        let first = &mut evs[0];
        for p in &partials {
            first.merge(p).unwrap();
        }
        let got = first.report();
        assert_eq!(got.predictions, want.predictions, "{parts} parts: predictions");
        assert_eq!(bits(&got), bits(&want), "{parts} parts: merged figures differ from one evaluation");
        assert!(first.merge(&partials[0]).is_err(), "a part merged twice must be refused");
        // one helper's sums missing: the figures are not those of the whole evaluation
        for p in &partials[1..] {
            short.merge(p).unwrap();
        }
        assert!(short.report().predictions < want.predictions, "{parts} parts: a missing part went unnoticed");
    }
}

/// Past activation-aware SVD alone, side by side at 20% of the linear parameters (calibrated on the first 4096 tokens
/// of eval-dev.txt, measured on the 4096 after them): the loss allocation (each matrix's sensitivity probed on 512
/// calibration tokens) and the sequential refit each beat the same fraction of each matrix with whitened factors.
#[test]
fn refit_and_loss_allocation_beat_activation_aware_svd_alone() {
    let b = bard();
    let original = b.load_model(false).unwrap();
    let ids = eval_dev_ids(&b);
    let base = Policy {
        method: Method::Whitened,
        budget: Some(0.2),
        budget_mode: BudgetMode::Proportional,
        calibration_tokens: 4096,
        sensitivity_tokens: 512,
        ..Default::default()
    };
    let run = |p: Policy| compress_checkpoint(&b.cfg, &b.ckpt, p, Some((&original, &ids)), &mut |_| {}).unwrap();
    let aware = run(base.clone());
    let loss = run(Policy { budget_mode: BudgetMode::Loss, ..base.clone() });
    let refit = run(Policy { method: Method::Refit, ..base.clone() });
    for c in [&aware, &loss, &refit] {
        let t = totals(&c.reports);
        assert!(t.params_after as f64 <= 0.2 * t.params_considered as f64, "{:?}: {t:?}", c.policy.budget_mode);
    }
    // the loss allocation probed every block matrix; the refit measured every layer's output error
    let probes: Vec<_> = loss.reports.iter().filter_map(|r| r.probe).collect();
    assert_eq!(probes.len(), 48);
    assert!(probes.iter().all(|p| p.damage.kl > 0.0 && p.sensitivity.is_finite() && p.damage.positions == 512));
    assert!(refit.reports.iter().filter(|r| r.rank.is_some()).all(|r| r.err_activations.is_some_and(|e| e < 1.0)));
    // the allocation check measured the loss allocation closer to the original than the same fraction each, and kept it
    let k = loss.allocation_check.clone().expect("the loss allocation is checked");
    assert!(k.kept_mode && k.mode_damage.kl < k.proportional_damage.kl, "{k:?}");
    assert!(refit.allocation_check.is_none(), "the refit is not checked");
    let mut ev = Evaluator::after(&ids, 4096, 4096, 512, 0, 1).unwrap();
    while ev.step_many(&original, &[&aware.model, &loss.model, &refit.model]).unwrap() {}
    let r = ev.reports();
    let ppl: Vec<f64> = r.iter().map(|x| x.ppl_compressed.unwrap() / x.ppl_original).collect();
    eprintln!("20% of linear params, ppl ratio: aware {:.3}, loss {:.3}, refit {:.3}", ppl[0], ppl[1], ppl[2]);
    assert!(ppl[1] < 0.95 * ppl[0], "loss allocation {} vs activation-aware {}", ppl[1], ppl[0]);
    assert!(ppl[2] < 0.9 * ppl[0], "refit {} vs activation-aware {}", ppl[2], ppl[0]);
}

/// The allocation check (`allocation_check`, on by default): with activation-aware factors at 10% of the linear
/// parameters, the energy allocation starves the first block's MLP and one rank for all the wide MLP matrices
/// (QUALITY.md: ×29.8 and ×12.3 against ×8.07 for the same fraction of each). With the check, each is measured
/// against the same fraction of each matrix on the first 512 calibration tokens and the closer kept, so that neither
/// is worse than the same fraction each on the 4096 held-out tokens after the calibration; without it, each is.
#[test]
fn the_allocation_check_keeps_every_budget_mode_from_doing_worse_than_the_same_fraction_each() {
    let b = bard();
    let original = b.load_model(false).unwrap();
    let ids = eval_dev_ids(&b);
    let base = Policy {
        method: Method::Whitened,
        budget: Some(0.1),
        budget_mode: BudgetMode::Proportional,
        calibration_tokens: 4096,
        sensitivity_tokens: 512,
        ..Default::default()
    };
    assert!(base.allocation_check, "on unless turned off");
    let run = |p: Policy| compress_checkpoint(&b.cfg, &b.ckpt, p, Some((&original, &ids)), &mut |_| {}).unwrap();
    let same = run(base.clone());
    assert!(same.allocation_check.is_none(), "the same fraction each is not checked against itself");
    let mut models = vec![same];
    for mode in [BudgetMode::Energy, BudgetMode::Uniform] {
        let checked = run(Policy { budget_mode: mode, ..base.clone() });
        let k = checked.allocation_check.clone().expect("the check ran");
        assert_eq!((k.mode, k.tokens), (mode, 512));
        assert!(k.mode_damage.kl > 0.0 && k.proportional_damage.kl > 0.0, "{k:?}");
        assert_eq!(k.kept_mode, k.mode_damage.kl <= k.proportional_damage.kl, "{k:?}");
        let t = totals(&checked.reports);
        assert!(t.params_after as f64 <= 0.1 * t.params_considered as f64, "{mode:?}: {t:?}");
        models.push(checked);
        models.push(run(Policy { budget_mode: mode, allocation_check: false, ..base.clone() }));
    }
    let mut ev = Evaluator::after(&ids, 4096, 4096, 512, 0, 1).unwrap();
    let refs: Vec<&_> = models.iter().map(|c| &c.model).collect();
    while ev.step_many(&original, &refs).unwrap() {}
    let ppl: Vec<f64> = ev.reports().iter().map(|x| x.ppl_compressed.unwrap() / x.ppl_original).collect();
    eprintln!(
        "10% of linear params, activation-aware, ppl ratio: same fraction each {:.3}; energy checked {:.3}, unchecked \
         {:.3}; one rank checked {:.3}, unchecked {:.3}",
        ppl[0], ppl[1], ppl[2], ppl[3], ppl[4]
    );
    for (checked, unchecked) in [(1, 2), (3, 4)] {
        assert!(ppl[checked] <= ppl[0] * (1.0 + 1e-9), "checked {} vs same fraction each {}", ppl[checked], ppl[0]);
        assert!(ppl[unchecked] > 1.2 * ppl[0], "unchecked {} vs same fraction each {}", ppl[unchecked], ppl[0]);
    }
}

/// The refit with the loss allocation spends the budget again before each group of matrices, with the spectra of
/// their refitted targets (`refit_replan`, the default), against the ranks planned on the original weights before the
/// refit: at 10% of the linear parameters (calibrated on the first 4096 tokens of eval-dev.txt, sensitivities probed
/// on 512 of them, measured on the 4096 after them), where the plan made before the refit measured worse than the same
/// fraction of each matrix (QUALITY.md: ×4.105 against ×3.245 on 8192 held-out tokens; replanned ×3.172).
#[test]
fn the_refit_replans_its_loss_allocation_on_the_refitted_spectra() {
    let b = bard();
    let original = b.load_model(false).unwrap();
    let ids = eval_dev_ids(&b);
    let base = Policy {
        method: Method::Refit,
        budget: Some(0.1),
        budget_mode: BudgetMode::Loss,
        calibration_tokens: 4096,
        sensitivity_tokens: 512,
        ..Default::default()
    };
    assert!(base.refit_replan);
    let run = |p: Policy| compress_checkpoint(&b.cfg, &b.ckpt, p, Some((&original, &ids)), &mut |_| {}).unwrap();
    let replanned = run(base.clone());
    let planned = run(Policy { refit_replan: false, ..base });
    for c in [&replanned, &planned] {
        let t = totals(&c.reports);
        assert!(t.params_after as f64 <= 0.1 * t.params_considered as f64, "{t:?}");
        assert!(t.params_after as f64 >= 0.09 * t.params_considered as f64, "the budget is spent: {t:?}");
    }
    let ranks = |c: &Compressed| c.reports.iter().map(|r| r.rank).collect::<Vec<_>>();
    assert_ne!(ranks(&replanned), ranks(&planned), "the replanning moved no rank");
    let mut ev = Evaluator::after(&ids, 4096, 4096, 512, 0, 1).unwrap();
    while ev.step_many(&original, &[&replanned.model, &planned.model]).unwrap() {}
    let r = ev.reports();
    let ppl: Vec<f64> = r.iter().map(|x| x.ppl_compressed.unwrap() / x.ppl_original).collect();
    eprintln!(
        "10% of linear params, refit with the loss allocation, ppl ratio: replanned {:.3}, planned before {:.3}",
        ppl[0], ppl[1]
    );
    assert!(ppl[0] < 0.9 * ppl[1], "replanned {} vs planned before the refit {}", ppl[0], ppl[1]);
}

/// The refit's ridge toward the original weights (`refit_ridge`, default 0.3) against the plain least squares
/// (`refit_ridge` 0), and the ridge fitted on overlapping windows (`refit_stride` 128: each of the same calibration
/// tokens seen in four contexts) against side-by-side ones, at 50% of the linear parameters, same fraction of each,
/// calibrated on the first 4096 tokens of eval-dev.txt and measured on the 4096 after them: both keep the fit from
/// following the calibration windows, and the held-out perplexity's excess over the original's drops.
#[test]
fn the_refit_ridge_and_overlapping_windows_beat_plain_least_squares_on_held_out_text() {
    let b = bard();
    let original = b.load_model(false).unwrap();
    let ids = eval_dev_ids(&b);
    let base = Policy {
        method: Method::Refit,
        budget: Some(0.5),
        budget_mode: BudgetMode::Proportional,
        calibration_tokens: 4096,
        ..Default::default()
    };
    assert_eq!(base.refit_ridge, 0.3);
    let run = |p: Policy| compress_checkpoint(&b.cfg, &b.ckpt, p, Some((&original, &ids)), &mut |_| {}).unwrap();
    let ridge = run(base.clone());
    let plain = run(Policy { refit_ridge: 0.0, ..base.clone() });
    let strided = run(Policy { refit_stride: Some(128), ..base });
    // same ranks: only the fit differs
    let ranks = |c: &Compressed| c.reports.iter().map(|r| r.rank).collect::<Vec<_>>();
    assert_eq!(ranks(&ridge), ranks(&plain));
    assert_eq!(ranks(&ridge), ranks(&strided));
    let mut ev = Evaluator::after(&ids, 4096, 4096, 512, 0, 1).unwrap();
    while ev.step_many(&original, &[&ridge.model, &plain.model, &strided.model]).unwrap() {}
    let r = ev.reports();
    let excess: Vec<f64> = r.iter().map(|x| x.ppl_compressed.unwrap() / x.ppl_original - 1.0).collect();
    eprintln!(
        "50% of linear params, refit, ppl ratio − 1: ridge 0.3 {:.4}, plain least squares {:.4}, ridge on windows every 128 tokens {:.4}",
        excess[0], excess[1], excess[2]
    );
    assert!(excess[0] < 0.9 * excess[1], "ridge {} vs plain {}", excess[0], excess[1]);
    assert!(excess[2] < 0.97 * excess[0], "overlapping windows {} vs side by side {}", excess[2], excess[0]);
}

/// The block-level refinement (`refine_steps`): after each block's refit, Adam steps on all its factors at once
/// against the original block's outputs. At 50% of the linear parameters, same fraction of each (so the same ranks),
/// calibrated on the first 4096 tokens of eval-dev.txt and measured on the 4096 after them, 20 steps per block
/// leave less of the held-out perplexity's excess over the original's than the refit alone.
#[test]
fn the_block_level_refinement_beats_the_refit_alone_on_held_out_text() {
    let b = bard();
    let original = b.load_model(false).unwrap();
    let ids = eval_dev_ids(&b);
    let base = Policy {
        method: Method::Refit,
        budget: Some(0.5),
        budget_mode: BudgetMode::Proportional,
        calibration_tokens: 4096,
        ..Default::default()
    };
    assert_eq!(base.refine_steps, 0, "off unless asked for");
    let run = |p: Policy| compress_checkpoint(&b.cfg, &b.ckpt, p, Some((&original, &ids)), &mut |_| {}).unwrap();
    let refit = run(base.clone());
    let refined = run(Policy { refine_steps: 20, ..base });
    let ranks = |c: &Compressed| c.reports.iter().map(|r| r.rank).collect::<Vec<_>>();
    assert_eq!(ranks(&refit), ranks(&refined), "the refinement keeps the ranks");
    let bytes = |c: &Compressed| c.reports.iter().map(|r| r.bytes_after).sum::<usize>();
    assert_eq!(bytes(&refit), bytes(&refined), "and the bytes");
    let mut ev = Evaluator::after(&ids, 4096, 4096, 512, 0, 1).unwrap();
    while ev.step_many(&original, &[&refit.model, &refined.model]).unwrap() {}
    let r = ev.reports();
    let excess: Vec<f64> = r.iter().map(|x| x.ppl_compressed.unwrap() / x.ppl_original - 1.0).collect();
    eprintln!(
        "50% of linear params, same fraction each, ppl ratio − 1: refit {:.4}, refined (20 steps) {:.4}",
        excess[0], excess[1]
    );
    assert!(excess[1] < 0.95 * excess[0], "refined {} vs refit alone {}", excess[1], excess[0]);
}

/// `slc sensitivity`'s damage of one matrix compressed alone equals an ordinary compression that skips every other
/// matrix, evaluated by the evaluator on the same tokens (KL and cosine per position, top-1).
#[test]
fn sensitivity_equals_compressing_one_matrix_alone() {
    use semantic_llm_compressor::explore;
    let b = bard();
    let original = b.load_model(false).unwrap();
    let ids = eval_dev_ids(&b);
    let policy = Policy {
        method: Method::Whitened,
        rank: 16,
        calibration_tokens: 512,
        calibration_window: 256,
        sensitivity_tokens: 256,
        ..Default::default()
    };
    let rows = explore::sensitivity(&b.cfg, &b.ckpt, &original, &ids, &policy, &mut |_| {}).unwrap();
    assert_eq!(rows.len(), 48);
    assert!(rows.iter().all(|r| r.rank == 16 && r.damage.positions == 256 && r.damage.kl >= 0.0));
    let worst = rows.iter().max_by(|a, b| a.damage.kl.total_cmp(&b.damage.kl)).unwrap();
    let alone = Policy {
        skip: rows.iter().filter(|r| r.name != worst.name).map(|r| r.name.clone()).collect(),
        break_even_guard: false,
        ..policy.clone()
    };
    let c = compress_checkpoint(&b.cfg, &b.ckpt, alone, Some((&original, &ids)), &mut |_| {}).unwrap();
    assert_eq!(c.model.compressed_layers(), 1);
    let mut ev = Evaluator::new(&ids, 256, 256).unwrap();
    while ev.step(&original, Some(&c.model)).unwrap() {}
    let r = ev.report();
    eprintln!("{}: kl {} vs {}", worst.name, worst.damage.kl, r.kl.unwrap());
    assert!((r.kl.unwrap() - worst.damage.kl).abs() <= 1e-4 * worst.damage.kl.max(1e-3), "kl {r:?} vs {worst:?}");
    assert!((r.cosine.unwrap() - worst.damage.cosine).abs() < 1e-6);
    assert!((r.top1.unwrap() - worst.damage.top1).abs() < 1e-9);
}
