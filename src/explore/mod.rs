//! The explore wing: many compressions of one model, each measured — a sweep of methods × budgets (quality against
//! stored bytes per point), the smallest model meeting a quality target, and the per-matrix sensitivity table.
//!
//! Every point is compressed from the same checkpoint with calibration read from the first `calibration_tokens` of
//! the text, and measured on an evaluation split that the caller states (held-out tokens for tables; the calibration
//! text itself for a target search, as its definition says).
//!
//! May import: [`crate::compression`], [`crate::evaluation`], [`crate::model`], [`crate::error`].

use crate::compression::driver::compress_checkpoint;
use crate::compression::pipeline::{considered_matrices, reader, totals, Compressed, Compressor, StepInfo};
use crate::compression::policy::{BudgetMode, Method, Policy, RankRule};
use crate::compression::sensitivity::{Damage, Probe};
use crate::evaluation::metrics::{EvalReport, Evaluator};
use crate::model::checkpoint::Checkpoint;
use crate::model::config::GptNeoConfig;
use crate::model::gpt_neo::GptNeo;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// Where quality is measured: `tokens` tokens after the first `skip`, in windows of `window`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Split {
    pub skip: usize,
    pub tokens: usize,
    pub window: usize,
}

/// A named way to compress: a method and a budget allocation (`"refit-loss"`, `"whitened-proportional"`, `"int8"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipe {
    pub method: Method,
    pub mode: BudgetMode,
}

impl Recipe {
    /// `METHOD-MODE` (e.g. `whitened-loss`), or `int8` (dense INT8, no budget).
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || {
            Error::Policy(format!(
                "\"{s}\" is not METHOD-MODE (methods svd, whitened, refit; modes energy, uniform, proportional, loss) \
                 or int8"
            ))
        };
        if s.trim() == "int8" {
            return Ok(Self { method: Method::Int8, mode: BudgetMode::Proportional });
        }
        let (m, b) = s.trim().split_once('-').ok_or_else(bad)?;
        let method = match m {
            "svd" => Method::Svd,
            "whitened" => Method::Whitened,
            "refit" => Method::Refit,
            _ => return Err(bad()),
        };
        let mode = match b {
            "energy" => BudgetMode::Energy,
            "uniform" => BudgetMode::Uniform,
            "proportional" => BudgetMode::Proportional,
            "loss" => BudgetMode::Loss,
            _ => return Err(bad()),
        };
        Ok(Self { method, mode })
    }

    pub fn label(&self) -> String {
        if self.method == Method::Int8 {
            return "int8".into();
        }
        let j = |v: serde_json::Result<serde_json::Value>| v.ok().and_then(|v| v.as_str().map(String::from));
        format!(
            "{}-{}",
            j(serde_json::to_value(self.method)).unwrap_or_default(),
            j(serde_json::to_value(self.mode)).unwrap_or_default()
        )
    }

    /// `base` with this recipe at `budget` (INT8 takes no budget).
    pub fn policy(&self, base: &Policy, budget: f64) -> Policy {
        let mut p = Policy { method: self.method, budget_mode: self.mode, ..base.clone() };
        p.budget = (self.method != Method::Int8).then_some(budget);
        p
    }
}

/// One compression of a sweep or a search, measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Point {
    pub recipe: String,
    /// The budget asked for (fraction of linear parameters or bytes, as the policy counts); none for INT8.
    pub budget: Option<f64>,
    /// Linear parameters kept, as a fraction of those considered.
    pub params_kept: f64,
    /// Bytes of the compressed layers as stored, and of the whole model as held (what an export stores, but for
    /// the file's header).
    pub layer_bytes: usize,
    pub model_bytes: usize,
    pub ppl_original: f64,
    pub ppl: f64,
    pub ppl_ratio: f64,
    pub cosine: f64,
    pub top1: f64,
    pub kl: f64,
    /// Seconds the compression took (calibration, probes, factoring, refit).
    pub seconds: f64,
    pub convention: String,
}

/// Compress with `policy` and measure the result on `split` of `ids`.
pub fn measure(
    cfg: &GptNeoConfig,
    ckpt: &Checkpoint,
    original: &GptNeo,
    ids: &[u32],
    policy: Policy,
    split: Split,
    progress: &mut dyn FnMut(&StepInfo),
) -> Result<(Compressed, Point)> {
    let recipe = Recipe { method: policy.method, mode: policy.budget_mode }.label();
    let budget = policy.budget;
    let t0 = crate::clock::now();
    let c = compress_checkpoint(cfg, ckpt, policy, Some((original, ids)), progress)?;
    let seconds = crate::clock::now() - t0;
    let r = evaluate(original, &c.model, ids, split)?;
    let t = totals(&c.reports);
    let ppl = r.ppl_compressed.unwrap_or(f64::NAN);
    let point = Point {
        recipe,
        budget,
        params_kept: t.params_after as f64 / t.params_considered.max(1) as f64,
        layer_bytes: t.bytes_after,
        model_bytes: c.model.weight_bytes(),
        ppl_original: r.ppl_original,
        ppl,
        ppl_ratio: ppl / r.ppl_original,
        cosine: r.cosine.unwrap_or(f64::NAN),
        top1: r.top1.unwrap_or(f64::NAN),
        kl: r.kl.unwrap_or(f64::NAN),
        seconds,
        convention: r.convention.clone(),
    };
    Ok((c, point))
}

fn evaluate(original: &GptNeo, compressed: &GptNeo, ids: &[u32], s: Split) -> Result<EvalReport> {
    let mut ev = Evaluator::after(ids, s.skip, s.tokens, s.window, 0, 1)?;
    while ev.step(original, Some(compressed))? {}
    Ok(ev.report())
}

/// Every recipe at every budget (INT8 once), measured on `split`; `progress(point index, step)` as they run.
#[allow(clippy::too_many_arguments)]
pub fn sweep(
    cfg: &GptNeoConfig,
    ckpt: &Checkpoint,
    original: &GptNeo,
    ids: &[u32],
    base: &Policy,
    recipes: &[Recipe],
    budgets: &[f64],
    split: Split,
    on_point: &mut dyn FnMut(&Point),
) -> Result<Vec<Point>> {
    let mut points = Vec::new();
    for recipe in recipes {
        let budgets: &[f64] = if recipe.method == Method::Int8 { &budgets[..budgets.len().min(1)] } else { budgets };
        for &b in budgets {
            let (_, p) = measure(cfg, ckpt, original, ids, recipe.policy(base, b), split, &mut |_| {})?;
            on_point(&p);
            points.push(p);
        }
    }
    Ok(points)
}

/// What a target search asks for, on the calibration text.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub enum Target {
    /// Logits cosine (per position, mean) at least this.
    Cosine(f64),
    /// Perplexity at most this multiple of the original's.
    PplRatio(f64),
}

impl Target {
    fn met(&self, p: &Point) -> bool {
        match *self {
            Target::Cosine(t) => p.cosine >= t,
            Target::PplRatio(r) => p.ppl_ratio <= r,
        }
    }
}

/// The smallest budget (to `tolerance`) whose compression meets `target` on the first `calibration_tokens` of
/// `ids` (the calibration text), found by bisection between `lo` and 1; every compression tried is on the path, in
/// order. The compression returned is the smallest that met the target (the budget 1 when none below did).
#[allow(clippy::too_many_arguments)]
pub fn search_target(
    cfg: &GptNeoConfig,
    ckpt: &Checkpoint,
    original: &GptNeo,
    ids: &[u32],
    base: &Policy,
    target: Target,
    tolerance: f64,
    on_point: &mut dyn FnMut(&Point),
) -> Result<(Compressed, Vec<Point>)> {
    if base.method == Method::Int8 {
        return Err(Error::Policy("a quality target searches a budget: choose an SVD method, not int8".into()));
    }
    match target {
        Target::Cosine(t) if !(t > 0.0 && t <= 1.0) => {
            return Err(Error::Policy(format!("target cosine {t} must be in (0, 1]")))
        }
        Target::PplRatio(r) if !(r >= 1.0 && r.is_finite()) => {
            return Err(Error::Policy(format!("target perplexity ratio {r} must be a number ≥ 1")))
        }
        _ => {}
    }
    let split = Split { skip: 0, tokens: base.calibration_tokens, window: base.calibration_window };
    let mut path = Vec::new();
    let mut run = |b: f64, path: &mut Vec<Point>| -> Result<(Compressed, bool)> {
        let (c, p) = measure(cfg, ckpt, original, ids, Policy { budget: Some(b), ..base.clone() }, split, &mut |_| {})?;
        let ok = target.met(&p);
        on_point(&p);
        path.push(p);
        Ok((c, ok))
    };
    let (mut lo, mut hi) = (0.02f64, 1.0f64);
    let (mut best, ok) = run(hi, &mut path)?;
    if !ok {
        return Ok((best, path)); // not even every matrix at its largest budget meets it: the path says so
    }
    while hi - lo > tolerance.max(1e-3) {
        let mid = 0.5 * (lo + hi);
        let (c, ok) = run(mid, &mut path)?;
        if ok {
            hi = mid;
            best = c;
        } else {
            lo = mid;
        }
    }
    Ok((best, path))
}

/// One matrix compressed alone at the chosen setting: what it did to the logits on the calibration text.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SensitivityRow {
    pub name: String,
    pub shape: [usize; 2],
    pub rank: usize,
    /// Relative Frobenius error of what is stored, and (activation-aware) on the calibration activations.
    pub err_stored: f64,
    pub err_activations: Option<f64>,
    pub damage: Damage,
}

/// Every block matrix compressed alone with `policy`'s method, rank (`rank`/`rank_for`, or the `probe` fraction of
/// its parameters when one is set) and storage, measured on the first `sensitivity_tokens` of `ids`.
pub fn sensitivity(
    cfg: &GptNeoConfig,
    ckpt: &Checkpoint,
    original: &GptNeo,
    ids: &[u32],
    policy: &Policy,
    on_row: &mut dyn FnMut(&SensitivityRow),
) -> Result<Vec<SensitivityRow>> {
    if !matches!(policy.method, Method::Svd | Method::Whitened) {
        return Err(Error::Policy("sensitivity compresses by SVD: choose method svd or whitened".into()));
    }
    let mats = considered_matrices(cfg, ckpt)?;
    // every matrix at its own rank (the probe fraction of its parameters, when one is set), factored as a
    // compression would factor it, never kept dense by the break-even guard
    let rank_for = match policy.probe {
        Some(f) => mats
            .iter()
            .map(|m| RankRule { pattern: m.name.clone(), rank: Policy::rank_for_fraction(m.out, m.inp, f) })
            .collect(),
        None => policy.rank_for.clone(),
    };
    let single = Policy { rank_for, energy: None, budget: None, break_even_guard: false, ..policy.clone() };
    let mut c = Compressor::new(single, mats)?;
    if c.needs_calibration() {
        let mut cal =
            crate::compression::calib::Calibrator::new(ids, policy.calibration_tokens, policy.calibration_window)?;
        while cal.step(original)? {}
        c.set_calibration(cal.finish());
    }
    let probe =
        Probe::new(original, ids, policy.sensitivity_tokens.min(policy.calibration_tokens), policy.calibration_window)?;
    let read = reader(ckpt);
    let mut rows = Vec::new();
    for i in 0..c.mats.len() {
        let name = c.mats[i].name.clone();
        if probe.block_of(&name).is_none() {
            continue;
        }
        let f = c.job(i)?.run(&read)?;
        let Some(stored) = f.weight else { continue }; // skipped by the policy
        let r = f.report;
        let row = SensitivityRow {
            name: r.name,
            shape: r.shape,
            rank: r.rank.unwrap_or(0),
            err_stored: r.err_stored.unwrap_or(f64::NAN),
            err_activations: r.err_activations,
            damage: probe.damage(&name, stored).map_err(|e| Error::tensor(&name, e.to_string()))?,
        };
        on_row(&row);
        rows.push(row);
    }
    Ok(rows)
}
