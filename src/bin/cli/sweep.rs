//! `slc sensitivity` and `slc sweep`: many compressions of one model, each measured.

use super::compress::allocation_check_line;
use super::io::model_and_text;
use super::progress::Progress;
use semantic_llm_compressor::compression::policy::{BudgetUnit, Method, Policy};
use semantic_llm_compressor::explore;
use semantic_llm_compressor::model::storage::QuantScheme;
use semantic_llm_compressor::Result;
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Args)]
pub(super) struct SensitivityArgs {
    #[arg(long)]
    model: PathBuf,
    /// The calibration text (its first --calibration-tokens tokens).
    #[arg(long)]
    text: PathBuf,
    /// svd or whitened.
    #[arg(long, value_enum, default_value_t = Method::Whitened)]
    method: Method,
    #[arg(long, default_value_t = 32)]
    rank: usize,
    /// Probe each matrix at the rank keeping this fraction of its parameters instead of --rank.
    #[arg(long)]
    probe: Option<f64>,
    #[arg(long = "quant-bits", default_value_t = 8)]
    quant_bits: u8,
    #[arg(long, value_enum, default_value_t = QuantScheme::PerRow)]
    quant: QuantScheme,
    #[arg(long = "calibration-tokens", default_value_t = 4096)]
    calibration_tokens: usize,
    #[arg(long = "calibration-window", default_value_t = 512)]
    calibration_window: usize,
    /// Calibration tokens (the first) the damage is measured on.
    #[arg(long = "sensitivity-tokens", default_value_t = 1024)]
    sensitivity_tokens: usize,
    #[arg(long, default_value_t = 0.01)]
    damp: f64,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub(super) struct SweepArgs {
    #[arg(long)]
    model: PathBuf,
    /// Calibration (the first --calibration-tokens tokens) and evaluation (the --eval-tokens after them) text.
    #[arg(long)]
    text: PathBuf,
    /// METHOD-MODE recipes (methods svd, whitened, refit; modes energy, uniform, proportional, loss), int8, or
    /// group-wise codes quantB-gG (round-to-nearest) and gptqB-gG (GPTQ) of B bits in groups of G; those three are
    /// measured once, at the size their shapes fix; auto or auto-gG (each matrix's storage chosen within each budget,
    /// which must then be in bits or bytes: --budget-unit).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "svd-energy,whitened-energy,whitened-proportional,whitened-loss,refit-proportional,refit-loss,int8,\
                         quant4-g64,quant3-g64,quant2-g32,gptq4-g64,gptq3-g64,gptq2-g64"
    )]
    recipes: Vec<String>,
    /// Fractions of the linear parameters (or bytes, --budget-unit bytes) kept, or bits per linear parameter
    /// (--budget-unit bits).
    #[arg(long, value_delimiter = ',', default_value = "0.1,0.2,0.35,0.5")]
    budgets: Vec<f64>,
    #[arg(long = "budget-unit", value_enum, default_value_t = BudgetUnit::Params)]
    budget_unit: BudgetUnit,
    /// The factorizations' factors: 8 INT8 per row, 4 group-wise INT4 (a scale per --factor-group values of a row),
    /// 32 f32 (see slc compress --quant-bits).
    #[arg(long = "quant-bits", default_value_t = 8)]
    quant_bits: u8,
    #[arg(long = "factor-group", default_value_t = 64)]
    factor_group: usize,
    #[arg(long = "calibration-tokens", default_value_t = 4096)]
    calibration_tokens: usize,
    #[arg(long = "eval-tokens", default_value_t = 8192)]
    eval_tokens: usize,
    #[arg(long, default_value_t = 512)]
    window: usize,
    #[arg(long = "sensitivity-tokens", default_value_t = 1024)]
    sensitivity_tokens: usize,
    /// Refit recipes: fit on calibration windows starting every STRIDE tokens (see slc compress --refit-stride).
    #[arg(long = "refit-stride")]
    refit_stride: Option<usize>,
    /// Refit recipes with the loss allocation: keep the ranks planned before the refit (see slc compress).
    #[arg(long = "no-refit-replan")]
    no_refit_replan: bool,
    /// Refit recipes: the block-level refinement's steps (see slc compress --refine-steps).
    #[arg(long = "refine-steps", default_value_t = 0)]
    refine_steps: usize,
    /// Whitened recipes: keep each mode's own ranks (see slc compress --no-allocation-check).
    #[arg(long = "no-allocation-check")]
    no_allocation_check: bool,
    #[arg(long)]
    json: bool,
}

pub(super) fn sensitivity(a: &SensitivityArgs) -> Result<()> {
    let (b, model, ids) = model_and_text(&a.model, &a.text)?;
    let policy = Policy {
        method: a.method,
        rank: a.rank,
        probe: a.probe,
        quant_bits: a.quant_bits,
        quant: a.quant,
        calibration_tokens: a.calibration_tokens,
        calibration_window: a.calibration_window,
        sensitivity_tokens: a.sensitivity_tokens,
        damp: a.damp,
        break_even_guard: false,
        ..Default::default()
    };
    let t0 = std::time::Instant::now();
    let bar = Progress::new("matrix", a.json);
    let rows = explore::sensitivity(&b.cfg, &b.ckpt, &model, &ids, &policy, &mut |r| {
        bar.tick(&format!("{} kl {:.4}", r.name, r.damage.kl))
    })?;
    bar.finish();
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"policy": policy, "rows": rows, "seconds": t0.elapsed().as_secs_f64()})
            )?
        );
        return Ok(());
    }
    let mut o = std::io::stdout().lock();
    writeln!(
        o,
        "{:<48} {:>10} {:>5} {:>9} {:>9} {:>9} {:>8} {:>7}",
        "matrix", "shape", "rank", "err", "err act", "KL", "cosine", "top-1"
    )?;
    for r in &rows {
        writeln!(
            o,
            "{:<48} {:>10} {:>5} {:>8.2}% {:>9} {:>9.5} {:>8.5} {:>7.4}",
            r.name,
            format!("{}x{}", r.shape[0], r.shape[1]),
            r.rank,
            100.0 * r.err_stored,
            r.err_activations.map_or("-".into(), |e| format!("{:.2}%", 100.0 * e)),
            r.damage.kl,
            r.damage.cosine,
            r.damage.top1
        )?;
    }
    writeln!(
        o,
        "each matrix compressed alone; KL(original || compressed) and cosine per position over the first {} tokens of the calibration text; {:.1} s",
        rows.first().map_or(0, |r| r.damage.positions),
        t0.elapsed().as_secs_f64()
    )?;
    Ok(())
}

pub(super) fn sweep(a: &SweepArgs) -> Result<()> {
    let (b, model, ids) = model_and_text(&a.model, &a.text)?;
    let recipes = a.recipes.iter().map(|r| explore::Recipe::parse(r)).collect::<Result<Vec<_>>>()?;
    let base = Policy {
        budget_unit: a.budget_unit,
        quant_bits: a.quant_bits,
        group: a.factor_group,
        calibration_tokens: a.calibration_tokens,
        calibration_window: a.window,
        sensitivity_tokens: a.sensitivity_tokens,
        refit_stride: a.refit_stride,
        refit_replan: !a.no_refit_replan,
        refine_steps: a.refine_steps,
        allocation_check: !a.no_allocation_check,
        ..Default::default()
    };
    let split = explore::Split { skip: a.calibration_tokens, tokens: a.eval_tokens, window: a.window };
    let mut first = true;
    let points = explore::sweep(&b.cfg, &b.ckpt, &model, &ids, &base, &recipes, &a.budgets, split, &mut |p| {
        if a.json {
            return;
        }
        if first {
            println!("{}", p.convention);
            println!(
                "{:<24} {:>6} {:>7} {:>6} {:>12} {:>9} {:>8} {:>7} {:>7} {:>6} {:>8}",
                "recipe", "budget", "params", "bits", "layer bytes", "ppl", "ratio", "cosine", "top-1", "KL", "seconds"
            );
            first = false;
        }
        println!(
            "{:<24} {:>6} {:>7.3} {:>6.3} {:>12} {:>9.2} {:>8.3} {:>7.4} {:>7.3} {:>6.3} {:>8.1}",
            p.recipe,
            p.budget.map_or("-".into(), |b| format!("{b}")),
            p.params_kept,
            p.bits_per_param,
            p.layer_bytes,
            p.ppl,
            p.ppl_ratio,
            p.cosine,
            p.top1,
            p.kl,
            p.seconds
        );
        if let Some(k) = &p.allocation_check {
            println!("    {}", allocation_check_line(k));
        }
    })?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&points)?);
        return Ok(());
    }
    // the frontier on one axis of bits per linear parameter: every point, and what beats it if anything does
    println!("frontier (bits per linear parameter against perplexity; a point is beaten when another stores no more bits at no higher perplexity):");
    let beaten = explore::dominated_by(&points);
    let mut order: Vec<usize> = (0..points.len()).collect();
    order.sort_by(|&i, &j| points[i].bits_per_param.total_cmp(&points[j].bits_per_param));
    for i in order {
        let p = &points[i];
        let at = p.budget.map_or(String::new(), |b| format!(" at {b}"));
        let by = beaten[i].map_or("on the frontier".to_string(), |j| {
            let q = &points[j];
            format!(
                "beaten by {}{} ({:.3} bits, ×{:.4})",
                q.recipe,
                q.budget.map_or(String::new(), |b| format!(" at {b}")),
                q.bits_per_param,
                q.ppl_ratio
            )
        });
        println!("  {:>6.3} bits  ×{:<8.4} {}{}: {}", p.bits_per_param, p.ppl_ratio, p.recipe, at, by);
    }
    Ok(())
}
