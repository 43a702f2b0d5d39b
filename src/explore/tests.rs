use super::*;

#[test]
fn recipes_parse_label_and_set_their_policy() {
    for s in ["svd-energy", "whitened-loss", "refit-proportional", "int8", "quant4-g64", "gptq3-g128", "gptq2-g32"] {
        assert_eq!(Recipe::parse(s).unwrap().label(), s);
    }
    let base = Policy { budget: Some(0.5), energy: Some(0.9), ..Default::default() };
    let g = Recipe::parse("gptq3-g128").unwrap();
    assert!(!g.takes_budget());
    let p = g.policy(&base, 0.3);
    assert_eq!((p.method, p.bits, p.group, p.budget, p.energy), (Method::Gptq, 3, 128, None, None));
    p.validate().unwrap();
    assert_eq!(policy_label(&p), "gptq3-g128");
    // method auto takes the sweep's budget (in bits or bytes) and its group
    assert_eq!(Recipe::parse("auto").unwrap().label(), "auto-g64");
    let a = Recipe::parse("auto-g128").unwrap();
    assert!(a.takes_budget());
    let bits = Policy { budget_unit: crate::compression::policy::BudgetUnit::Bits, ..base.clone() };
    let p = a.policy(&bits, 2.5);
    assert_eq!((p.method, p.group, p.budget, p.energy), (Method::Auto, 128, Some(2.5), None));
    p.validate().unwrap();
    let w = Recipe::parse("whitened-loss").unwrap();
    assert!(w.takes_budget());
    assert_eq!(w.policy(&base, 0.3).budget, Some(0.3));
    // what a policy could not hold is refused with the recipe's words
    for bad in ["quant5-g64", "gptq4-g2", "quant4", "quant4-gx", "int4", "svd-bits", "auto-g2", "autox"] {
        let e = Recipe::parse(bad).unwrap_err().to_string();
        assert!(e.contains("bits") || e.contains("group") || e.contains(bad), "{bad}: {e}");
    }
}

fn point(recipe: &str, bits: f64, ppl: f64) -> Point {
    let r = EvalReport {
        skip_tokens: 0,
        tokens: 64,
        window: 64,
        windows: 1,
        predictions: 63,
        ppl_original: 10.0,
        ppl_compressed: Some(ppl),
        cosine: Some(1.0),
        cosine_global: Some(1.0),
        mse: Some(0.0),
        top1: Some(1.0),
        kl: Some(0.0),
        convention: String::new(),
    };
    let t = CompressionTotals {
        params_considered: 1000,
        bytes_after: (bits * 125.0) as u64,
        bits_per_param: bits,
        ..Default::default()
    };
    Point::new(recipe, None, &t, 0, &r, 0.0)
}

#[test]
fn the_frontier_is_the_points_nothing_beats_on_both_axes() {
    let points = [
        point("int8", 8.0, 10.01),
        point("quant4-g64", 4.25, 10.05),
        point("gptq4-g64", 4.25, 10.02),
        point("svd-energy", 4.0, 11.0),
        point("gptq2-g64", 2.25, 12.0),
        point("whitened-loss", 1.6, 15.0),
        point("svd-energy", 1.6, 15.0),
    ];
    let by = dominated_by(&points);
    // equal on both axes is not beaten: neither is smaller or better
    assert_eq!(by, vec![None, Some(2), None, None, None, None, None]);
}
