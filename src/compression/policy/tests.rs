//! Plans and allocations on small synthetic matrices.

use super::*;

fn mat(name: &str, out: usize, inp: usize) -> MatrixInfo {
    MatrixInfo { name: name.into(), out, inp, stored_elem_bytes: 2, stored_dtype: "F16".into(), tied: false }
}

#[test]
fn skip_min_dim_rules_and_guard() {
    let mats = vec![
        mat("h.0.attn.attention.q_proj.weight", 256, 256),
        mat("h.0.mlp.c_fc.weight", 1024, 256),
        mat("h.0.mlp.c_proj.weight", 256, 1024),
        mat("small.weight", 16, 256),
        MatrixInfo { tied: true, ..mat("lm_head.weight", 50257, 256) },
    ];
    let p = Policy {
        rank: 32,
        rank_for: vec![RankRule::parse("c_fc=64").unwrap()],
        skip: vec!["c_proj".into()],
        min_dim_for_compression: 32,
        ..Default::default()
    };
    let plans = p.plan(&mats, &vec![None; 5]).unwrap();
    assert_eq!(plans[0], Plan::LowRank { rank: 32 });
    assert_eq!(plans[1], Plan::LowRank { rank: 64 });
    assert!(matches!(&plans[2], Plan::Dense { reason } if reason.contains("c_proj")));
    assert!(matches!(&plans[3], Plan::Dense { reason } if reason.contains("16")));
    assert!(matches!(&plans[4], Plan::Dense { reason } if reason.contains("tied")));
    // f32 factors at rank 128 of 256×256 f16: 4·128·513 B > 131072 B → dense, and the report says why
    let p = Policy { rank: 128, quant_bits: 32, ..Default::default() };
    let plans = p.plan(&mats[..1], &[None]).unwrap();
    assert!(matches!(&plans[0], Plan::Dense { reason } if reason.contains("break-even")), "{plans:?}");
    let p = Policy { rank: 128, quant_bits: 32, break_even_guard: false, ..Default::default() };
    assert_eq!(p.plan(&mats[..1], &[None]).unwrap()[0], Plan::LowRank { rank: 128 });
}

#[test]
fn energy_threshold_and_budgets() {
    let mats = vec![mat("a", 100, 100), mat("b", 100, 100)];
    // a: flat spectrum, b: one dominant value
    let sa: Vec<f64> = vec![1.0; 100];
    let sb: Vec<f64> = (0..100).map(|i| if i == 0 { 10.0 } else { 0.1 }).collect();
    let spectra = vec![Some(sa), Some(sb)];
    let p = Policy { energy: Some(0.5), ..Default::default() };
    assert_eq!(p.plan(&mats, &spectra).unwrap(), vec![Plan::LowRank { rank: 50 }, Plan::LowRank { rank: 1 }]);
    for mode in [BudgetMode::Energy, BudgetMode::Uniform, BudgetMode::Proportional] {
        let p = Policy { budget: Some(0.3), budget_mode: mode, ..Default::default() };
        let plans = p.plan(&mats, &spectra).unwrap();
        let params: usize = plans
            .iter()
            .map(|pl| match pl {
                Plan::LowRank { rank } => rank * 201,
                _ => 10_000,
            })
            .sum();
        assert!(params as f64 <= 0.3 * 20_000.0, "{mode:?}: {params}");
        assert!(params as f64 >= 0.25 * 20_000.0, "{mode:?}: {params} leaves budget unused");
        if mode == BudgetMode::Energy {
            // the flat matrix gets almost everything
            assert!(matches!(plans[0], Plan::LowRank { rank } if rank > 20), "{plans:?}");
        }
    }
    assert!(Policy { budget: Some(1.5), ..Default::default() }.validate().is_err());
    assert!(RankRule::parse("mlp").is_err());
}

fn ranks(plans: &[Plan]) -> Vec<usize> {
    plans.iter().map(|p| if let Plan::LowRank { rank } = p { *rank } else { panic!("{p:?} is not low-rank") }).collect()
}

/// The parameters these plans keep: r·(m + n + 1) for rank r, the matrix's own otherwise.
fn plan_params(mats: &[MatrixInfo], plans: &[Plan]) -> f64 {
    mats.iter()
        .zip(plans)
        .map(|(m, p)| match p {
            Plan::LowRank { rank } => rank * (m.out + m.inp + 1),
            _ => m.params(),
        })
        .sum::<usize>() as f64
}

/// Matrices of different shapes and spectra, as a model has.
fn zoo() -> (Vec<MatrixInfo>, Vec<Option<Vec<f64>>>) {
    let mats = vec![mat("q", 100, 100), mat("fc", 400, 100), mat("proj", 100, 400), mat("k", 100, 100)];
    let spectra = mats
        .iter()
        .enumerate()
        .map(|(k, m)| Some((0..m.out.min(m.inp)).map(|i| (-(i as f64) / (5.0 + 10.0 * k as f64)).exp()).collect()))
        .collect();
    (mats, spectra)
}

#[test]
fn uniform_budget_is_one_rank_the_largest_that_fits() {
    let (mats, spectra) = zoo();
    let p = Policy { budget: Some(0.3), budget_mode: BudgetMode::Uniform, ..Default::default() };
    let r = ranks(&p.plan(&mats, &spectra).unwrap());
    assert!(r.iter().all(|&x| x == r[0]), "one rank for all: {r:?}");
    let cost = |r: usize| mats.iter().map(|m| r * (m.out + m.inp + 1)).sum::<usize>() as f64;
    let dense = mats.iter().map(|m| m.params()).sum::<usize>() as f64;
    assert!(cost(r[0]) <= 0.3 * dense && cost(r[0] + 1) > 0.3 * dense, "rank {} is the largest that fits", r[0]);
}

#[test]
fn proportional_budget_is_one_fraction_of_each_matrix() {
    let (mats, spectra) = zoo();
    let p = Policy { budget: Some(0.3), budget_mode: BudgetMode::Proportional, ..Default::default() };
    let r = ranks(&p.plan(&mats, &spectra).unwrap());
    for (m, &r) in mats.iter().zip(&r) {
        let (cost, dense) = (|r: usize| (r * (m.out + m.inp + 1)) as f64, m.params() as f64);
        assert!(cost(r) <= 0.3 * dense && cost(r + 1) > 0.3 * dense, "{}: rank {r} is not 30% of its params", m.name);
    }
    assert_ne!(r[0], r[1], "different shapes get different ranks");
}

/// Bytes `plans` store under `p`: low-rank factors as `p` stores them, anything else as the checkpoint does.
fn stored_bytes(p: &Policy, mats: &[MatrixInfo], plans: &[Plan]) -> usize {
    mats.iter()
        .zip(plans)
        .map(|(m, pl)| match pl {
            Plan::LowRank { rank } => p.low_rank_bytes(m.out, m.inp, *rank),
            &Plan::Grouped { bits, group } => Policy::grouped_bytes(m.out, m.inp, bits, group),
            Plan::Int8 => p.int8_bytes(m.out, m.inp),
            Plan::Dense { .. } => m.dense_bytes(),
        })
        .sum()
}

#[test]
fn byte_budgets_count_stored_bytes() {
    let (mats, spectra) = zoo();
    let dense: usize = mats.iter().map(|m| m.dense_bytes()).sum();
    for mode in [BudgetMode::Energy, BudgetMode::Uniform, BudgetMode::Proportional] {
        for quant_bits in [8, 4, 32] {
            let p = Policy {
                budget: Some(0.3),
                budget_unit: BudgetUnit::Bytes,
                budget_mode: mode,
                quant_bits,
                break_even_guard: false,
                ..Default::default()
            };
            let plans = p.plan(&mats, &spectra).unwrap();
            let bytes = stored_bytes(&p, &mats, &plans);
            assert!(bytes as f64 <= 0.3 * dense as f64, "{mode:?}, {quant_bits} bits: {bytes} of {dense} B");
            assert!(bytes as f64 >= 0.2 * dense as f64, "{mode:?}, {quant_bits} bits: {bytes} B leaves budget unused");
        }
    }
    // INT8 factors cost a quarter of f32 factors per parameter: a byte budget buys more rank with them
    let with = |quant_bits| {
        let p = Policy {
            budget: Some(0.3),
            budget_unit: BudgetUnit::Bytes,
            budget_mode: BudgetMode::Uniform,
            quant_bits,
            ..Default::default()
        };
        ranks(&p.plan(&mats, &spectra).unwrap())[0]
    };
    assert!(with(8) > 3 * with(32), "INT8 rank {} vs f32 rank {}", with(8), with(32));
    // and INT4 factors in groups of 64 (4.25 bits a value) nearly twice INT8's
    assert!(with(4) * 10 > 17 * with(8), "INT4 rank {} vs INT8 rank {}", with(4), with(8));
}

/// A budget in bits per parameter stores at most that many bits per linear parameter, whatever the factors' storage
/// and the spread, and spends most of it; a bits budget is a byte budget of bits / 8 per parameter.
#[test]
fn bit_budgets_store_at_most_their_bits_per_parameter() {
    let (mats, spectra) = zoo();
    let params: usize = mats.iter().map(|m| m.params()).sum();
    for mode in [BudgetMode::Energy, BudgetMode::Uniform, BudgetMode::Proportional] {
        for quant_bits in [8, 4] {
            for bits in [1.0, 2.5] {
                let p = Policy {
                    budget: Some(bits),
                    budget_unit: BudgetUnit::Bits,
                    budget_mode: mode,
                    quant_bits,
                    break_even_guard: false,
                    ..Default::default()
                };
                let plans = p.plan(&mats, &spectra).unwrap();
                let bytes = stored_bytes(&p, &mats, &plans);
                let got = 8.0 * bytes as f64 / params as f64;
                assert!(got <= bits && got >= 0.7 * bits, "{mode:?}, {quant_bits}-bit factors: {got} bits for {bits}");
                let as_bytes = Policy {
                    budget: Some(
                        bits / 8.0 * params as f64 / mats.iter().map(|m| m.dense_bytes()).sum::<usize>() as f64,
                    ),
                    budget_unit: BudgetUnit::Bytes,
                    ..p.clone()
                };
                assert_eq!(
                    plans,
                    as_bytes.plan(&mats, &spectra).unwrap(),
                    "{mode:?}: the same plans as its byte budget"
                );
            }
        }
    }
    let over = Policy { budget: Some(33.0), budget_unit: BudgetUnit::Bits, ..Default::default() };
    assert!(over.validate().unwrap_err().to_string().contains("bits per parameter"));
}

#[test]
fn loss_allocation_spends_the_budget_where_the_loss_is() {
    let (mats, spectra) = zoo();
    let base =
        Policy { method: Method::Whitened, budget: Some(0.3), budget_mode: BudgetMode::Loss, ..Default::default() };
    assert!(base.plan(&mats, &spectra).unwrap_err().to_string().contains("sensitivity"));
    let params = |plans: &[Plan]| plan_params(&mats, plans);
    let dense: f64 = mats.iter().map(|m| m.params() as f64).sum();
    let even = ranks(&base.plan_weighted(&mats, &spectra, &[Some(1.0); 4]).unwrap());
    // "q" (index 0) a thousand times as sensitive: it takes rank from the others
    let skewed = base.plan_weighted(&mats, &spectra, &[Some(1000.0), Some(1.0), Some(1.0), Some(1.0)]).unwrap();
    assert!(params(&skewed) <= 0.3 * dense && params(&skewed) >= 0.25 * dense, "{skewed:?}");
    let skewed = ranks(&skewed);
    assert!(skewed[0] > even[0] && skewed[3] < even[3], "even {even:?}, skewed {skewed:?}");
    // equal weights on equal costs take the components with the largest σ² first: the slower decay gets more
    assert!(even[3] > even[0], "{even:?}");
    // a byte budget may keep a matrix dense in INT8 where that is cheaper than its next rank
    let bytes = Policy { budget_unit: BudgetUnit::Bytes, budget: Some(0.45), ..base.clone() };
    let plans = bytes.plan_weighted(&mats, &spectra, &[Some(1e9), Some(1.0), Some(1.0), Some(1.0)]).unwrap();
    assert_eq!(plans[0], Plan::Int8, "{plans:?}");
    // not with plain SVD factors: the loss is measured on activations
    assert!(Policy { method: Method::Svd, ..base }.validate().is_err());
}

#[test]
fn the_break_even_guard_is_priced_inside_a_parameter_budget() {
    // f32 factors of an f16 checkpoint pass the guard's byte break-even (rank 50 of 100 × 100) long before a
    // parameter budget's own ceiling (rank 100): a matrix the allocation grows past it becomes dense, and must be
    // paid for as dense, or the matrices planned after it are starved
    let (mats, spectra) = zoo();
    let dense: f64 = mats.iter().map(|m| m.params() as f64).sum();
    let skewed = vec![Some(1000.0), Some(1.0), Some(1.0), Some(1.0)];
    for (mode, weights) in [(BudgetMode::Loss, skewed), (BudgetMode::Energy, vec![]), (BudgetMode::Uniform, vec![])] {
        let policy = Policy {
            method: Method::Whitened,
            quant_bits: 32,
            budget: Some(0.5),
            budget_mode: mode,
            ..Default::default()
        };
        let plans = policy.plan_weighted(&mats, &spectra, &weights).unwrap();
        let params = plan_params(&mats, &plans);
        assert!(params <= 0.5 * dense, "{mode:?}: {params} of {} params, plans {plans:?}", 0.5 * dense);
        let dense_plans = plans.iter().filter(|p| matches!(p, Plan::Dense { .. })).count();
        assert!(dense_plans > 0, "{mode:?}: a matrix grows past the break-even: {plans:?}");
        for (m, p) in mats.iter().zip(&plans) {
            if let Plan::LowRank { rank } = p {
                let bytes = policy.low_rank_bytes(m.out, m.inp, *rank);
                assert!(bytes < m.dense_bytes(), "{mode:?}: {} at rank {rank} is past the break-even", m.name);
            }
        }
    }
}

#[test]
fn replanning_keeps_what_is_stored_and_spends_what_is_left() {
    let (mats, spectra) = zoo();
    let base = Policy { method: Method::Refit, budget: Some(0.3), budget_mode: BudgetMode::Loss, ..Default::default() };
    let sens = [Some(1.0); 4];
    let before = ranks(&base.plan_weighted(&mats, &spectra, &sens).unwrap());
    let dense: f64 = mats.iter().map(|m| m.params() as f64).sum();
    let params = |r: &[usize]| mats.iter().zip(r).map(|(m, r)| (r * (m.out + m.inp + 1)) as f64).sum::<f64>();
    // "q" stored with fewer ranks than planned; "fc"'s refitted spectrum decays slower than its original one
    let mut fixed = vec![None; 4];
    fixed[0] = Some(Plan::LowRank { rank: before[0] / 2 });
    let mut refitted = spectra.clone();
    refitted[1] = Some((0..100).map(|i| (-(i as f64) / 40.0).exp()).collect());
    let after = ranks(&base.replan(&mats, &refitted, &sens, &fixed).unwrap());
    assert_eq!(after[0], before[0] / 2, "a stored matrix keeps its rank");
    assert!(after[1] > before[1], "fc's slower refitted decay takes more rank: {before:?} → {after:?}");
    assert!(params(&after) <= 0.3 * dense && params(&after) >= 0.27 * dense, "{after:?}");
    // nothing fixed and nothing replaced: the plan made before
    assert_eq!(ranks(&base.replan(&mats, &spectra, &sens, &[None, None, None, None]).unwrap()), before);
}

#[test]
fn int8_method_quantizes_what_is_not_excluded() {
    let mats = vec![mat("x.weight", 64, 64), mat("lm_head.weight", 64, 64)];
    let p = Policy { method: Method::Int8, skip: vec!["lm_head".into()], ..Default::default() };
    let plans = p.plan(&mats, &[None, None]).unwrap();
    assert_eq!(plans[0], Plan::Int8);
    assert!(matches!(plans[1], Plan::Dense { .. }));
}

/// Method auto on three 64 × 64 matrices: "a" whose spectrum falls fast (a low rank is nearly exact), "b" flat (only
/// codes help), "c" flat and a hundred times as sensitive. Measured code errors: each bit fewer quadruples it.
fn auto_zoo() -> (Vec<MatrixInfo>, Vec<Option<auto::Measured>>, Vec<Option<f64>>) {
    let mats = vec![mat("a", 64, 64), mat("b", 64, 64), mat("c", 64, 64)];
    let flat: Vec<f64> = vec![1.0; 64];
    let fast: Vec<f64> = (0..64).map(|i| (-(i as f64) / 2.0).exp() * 8.0).collect();
    let codes = |e4: f64| vec![(2u8, 16.0 * e4), (3, 4.0 * e4), (4, e4), (8, e4 / 256.0)];
    let measured = vec![
        Some(auto::Measured { spectrum: fast, codes: codes(0.5) }),
        Some(auto::Measured { spectrum: flat.clone(), codes: codes(0.5) }),
        Some(auto::Measured { spectrum: flat, codes: codes(0.5) }),
    ];
    (mats, measured, vec![Some(1.0), Some(1.0), Some(100.0)])
}

#[test]
fn auto_chooses_each_matrix_storage_within_the_budget_near_the_least_damage() {
    let (mats, measured, sens) = auto_zoo();
    let params: usize = mats.iter().map(|m| m.params()).sum();
    for bits in [1.0, 2.5, 3.3, 4.25, 6.0] {
        let p = Policy {
            method: Method::Auto,
            budget: Some(bits),
            budget_unit: BudgetUnit::Bits,
            group: 32,
            ..Default::default()
        };
        p.validate().unwrap();
        let plans = p.plan_auto(&mats, &measured, &sens).unwrap();
        let stored = stored_bytes(&p, &mats, &plans);
        assert!(8.0 * stored as f64 <= bits * params as f64, "{bits} bits: {stored} B, {plans:?}");
        // the least damage within the budget, by trying every combination of every matrix's candidates
        let options: Vec<Vec<auto::Candidate>> =
            mats.iter().zip(&measured).map(|(m, got)| p.auto_candidates(m, got.as_ref().unwrap())).collect();
        let budget = bits / 8.0 * params as f64;
        let damage = |k: usize, c: &auto::Candidate| sens[k].unwrap() * c.error;
        let mut best = f64::INFINITY;
        for a in &options[0] {
            for b in &options[1] {
                for c in &options[2] {
                    if a.bytes + b.bytes + c.bytes <= budget {
                        best = best.min(damage(0, a) + damage(1, b) + damage(2, c));
                    }
                }
            }
        }
        let got: f64 = plans
            .iter()
            .enumerate()
            .map(|(k, plan)| {
                let c = options[k].iter().find(|c| match (&c.plan, plan) {
                    (Plan::Dense { .. }, Plan::Dense { .. }) => true,
                    (x, y) => x == y,
                });
                damage(k, c.expect("a plan among the candidates"))
            })
            .sum();
        assert!(got <= 1.05 * best + 1e-12, "{bits} bits: damage {got} against the least {best}: {plans:?}");
        if bits == 2.5 {
            // the fast spectrum is cheapest as factors, the sensitive matrix gets more bits than the other flat one
            assert!(matches!(plans[0], Plan::LowRank { .. }), "{plans:?}");
            let width = |p: &Plan| match p {
                Plan::Grouped { bits, .. } => *bits as f64,
                Plan::Dense { .. } => 16.0,
                _ => 0.0,
            };
            assert!(width(&plans[2]) > width(&plans[1]), "{plans:?}");
        }
    }
    // too small for even the smallest storage of each, said with the figures
    let tiny = Policy { method: Method::Auto, budget: Some(0.01), budget_unit: BudgetUnit::Bits, ..Default::default() };
    let e = tiny.plan_auto(&mats, &measured, &sens).unwrap_err().to_string();
    assert!(e.contains("0.010 bits per parameter") && e.contains("smallest storage"), "{e}");
    // a budget in parameters, no budget, or planning without the measurements are refused
    let params_budget = Policy { method: Method::Auto, budget: Some(0.3), ..Default::default() };
    assert!(params_budget.validate().unwrap_err().to_string().contains("bits per parameter or in bytes"));
    assert!(Policy { method: Method::Auto, ..Default::default() }.validate().is_err());
    let p = Policy { method: Method::Auto, budget: Some(3.0), budget_unit: BudgetUnit::Bits, ..Default::default() };
    assert!(p.plan(&mats, &[None, None, None]).is_err());
    let e = p.plan_auto(&mats, &[None, None, None], &sens).unwrap_err().to_string();
    assert!(e.contains("`a`") && e.contains("has not been measured"), "{e}");
}
