//! The explore wing: many compressions of one model, each measured — a sweep of methods × budgets (quality against
//! stored bytes per point), the smallest model meeting a quality target, and the per-matrix sensitivity table.
//!
//! Every point is compressed from the same checkpoint with calibration read from the first `calibration_tokens` of
//! the text, and measured on an evaluation split that the caller states (held-out tokens for tables; the calibration
//! text itself for a target search, as its definition says).
//!
//! May import: [`crate::compression`], [`crate::evaluation`], [`crate::model`], [`crate::error`].

use crate::compression::driver::compress_checkpoint;
use crate::compression::matrix::{totals, CompressionTotals, StepInfo};
use crate::compression::pipeline::{Compressed, Compressor};
use crate::compression::policy::{BudgetMode, BudgetUnit, Method, Policy, RankRule};
use crate::compression::sensitivity::{Damage, Probe};
use crate::compression::source::{considered_matrices, reader};
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

/// A named way to compress: a method and a budget allocation (`"refit-loss"`, `"whitened-proportional"`), or a
/// storage whose size the shapes fix (`"int8"`, group-wise codes `"quant4-g64"`, `"gptq3-g64"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipe {
    pub method: Method,
    pub mode: BudgetMode,
    /// Group-wise methods: the codes' width and the values of a row sharing a scale.
    pub bits: u8,
    pub group: usize,
}

impl Recipe {
    /// `METHOD-MODE` (e.g. `whitened-loss`), `int8` (dense INT8, no budget), `quantB-gG` / `gptqB-gG` (group-wise
    /// codes of B bits in groups of G, round-to-nearest or GPTQ; no budget), or `auto` / `auto-gG` (each matrix's
    /// storage chosen within the budget, codes in groups of G, 64 by default).
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || {
            Error::Policy(format!(
                "\"{s}\" is not METHOD-MODE (methods svd, whitened, refit; modes energy, uniform, proportional, loss), \
                 int8, quantB-gG / gptqB-gG (group-wise codes of B bits in groups of G, e.g. gptq4-g64), or auto / \
                 auto-gG"
            ))
        };
        let s = s.trim();
        let fixed = |method| Self { method, mode: BudgetMode::Proportional, bits: 8, group: 64 };
        if s == "int8" {
            return Ok(fixed(Method::Int8));
        }
        if let Some(rest) = s.strip_prefix("auto") {
            let group = match rest.strip_prefix("-g") {
                Some(g) => g.parse().map_err(|_| bad())?,
                None if rest.is_empty() => 64,
                None => return Err(bad()),
            };
            let r = Self { group, ..fixed(Method::Auto) };
            r.policy(&Policy { budget_unit: crate::compression::policy::BudgetUnit::Bits, ..Policy::default() }, 4.0)
                .validate()?;
            return Ok(r);
        }
        for (prefix, method) in [("quant", Method::Quant), ("gptq", Method::Gptq)] {
            if let Some(rest) = s.strip_prefix(prefix) {
                let (b, g) = rest.split_once("-g").ok_or_else(bad)?;
                let bits: u8 = b.parse().map_err(|_| bad())?;
                let group: usize = g.parse().map_err(|_| bad())?;
                let r = Self { bits, group, ..fixed(method) };
                // the same checks as a policy of this method (bits 2, 3, 4 or 8; a group of 8 to 4096)
                r.policy(&Policy::default(), 1.0).validate()?;
                return Ok(r);
            }
        }
        let (m, b) = s.split_once('-').ok_or_else(bad)?;
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
        Ok(Self { method, mode, bits: 8, group: 64 })
    }

    /// The recipe a policy follows.
    pub fn of(p: &Policy) -> Self {
        Self { method: p.method, mode: p.budget_mode, bits: p.bits, group: p.group }
    }

    /// Whether its size is a budget's (factorizations), not fixed by the shapes (INT8, group-wise codes).
    pub fn takes_budget(&self) -> bool {
        self.method.is_svd() || self.method == Method::Auto
    }

    pub fn label(&self) -> String {
        match self.method {
            Method::Int8 => return "int8".into(),
            Method::Quant => return format!("quant{}-g{}", self.bits, self.group),
            Method::Gptq => return format!("gptq{}-g{}", self.bits, self.group),
            Method::Auto => return format!("auto-g{}", self.group),
            Method::Svd | Method::Whitened | Method::Refit => {}
        }
        let j = |v: serde_json::Result<serde_json::Value>| v.ok().and_then(|v| v.as_str().map(String::from));
        format!(
            "{}-{}",
            j(serde_json::to_value(self.method)).unwrap_or_default(),
            j(serde_json::to_value(self.mode)).unwrap_or_default()
        )
    }

    /// `base` with this recipe at `budget` (a size the shapes fix takes no budget; the block-level refinement is the
    /// refit's).
    pub fn policy(&self, base: &Policy, budget: f64) -> Policy {
        let mut p = Policy { method: self.method, budget_mode: self.mode, ..base.clone() };
        p.budget = self.takes_budget().then_some(budget);
        if !self.takes_budget() {
            p.energy = None;
        }
        if self.method.is_grouped() {
            (p.bits, p.group) = (self.bits, self.group);
        }
        if self.method == Method::Auto {
            // its size is the budget alone
            (p.group, p.energy) = (self.group, None);
        }
        if self.method != Method::Refit {
            p.refine_steps = 0;
        }
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
    /// Bits the compressed layers store per linear parameter of the original's (codes, scales, zero points,
    /// factors): the axis every method shares.
    pub bits_per_param: f64,
    /// Bytes of the compressed layers as stored, and of the whole model as held (what an export stores, but for
    /// the file's header).
    pub layer_bytes: u64,
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
    /// What the allocation check found, when it ran ([`Policy::checks_allocation`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation_check: Option<crate::compression::pipeline::AllocationCheck>,
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
    let budget = policy.budget;
    let t0 = crate::clock::now();
    let c = compress_checkpoint(cfg, ckpt, policy, Some((original, ids)), progress)?;
    let seconds = crate::clock::now() - t0;
    let r = evaluate(original, &c.model, ids, split)?;
    let mut point =
        Point::new(&policy_label(&c.policy), budget, &totals(&c.reports), c.model.weight_bytes(), &r, seconds);
    point.allocation_check = c.allocation_check.clone();
    Ok((c, point))
}

/// The recipe's label of a policy (`whitened-loss`, `int8`).
pub fn policy_label(p: &Policy) -> String {
    Recipe::of(p).label()
}

impl Point {
    /// A compression at `budget` (its layers' `totals`, the whole model's `model_bytes`) measured as `r`.
    pub fn new(
        recipe: &str,
        budget: Option<f64>,
        t: &CompressionTotals,
        model_bytes: usize,
        r: &EvalReport,
        seconds: f64,
    ) -> Self {
        let ppl = r.ppl_compressed.unwrap_or(f64::NAN);
        Point {
            recipe: recipe.to_string(),
            budget,
            params_kept: t.params_after as f64 / t.params_considered.max(1) as f64,
            bits_per_param: t.bits_per_param,
            layer_bytes: t.bytes_after,
            model_bytes,
            ppl_original: r.ppl_original,
            ppl,
            ppl_ratio: ppl / r.ppl_original,
            cosine: r.cosine.unwrap_or(f64::NAN),
            top1: r.top1.unwrap_or(f64::NAN),
            kl: r.kl.unwrap_or(f64::NAN),
            seconds,
            convention: r.convention.clone(),
            allocation_check: None,
        }
    }
}

fn evaluate(original: &GptNeo, compressed: &GptNeo, ids: &[u32], s: Split) -> Result<EvalReport> {
    let mut ev = Evaluator::after(ids, s.skip, s.tokens, s.window, 0, 1)?;
    while ev.step(original, Some(compressed))? {}
    Ok(ev.report())
}

/// Every recipe at every budget (a size the shapes fix once), measured on `split`; `progress(point index, step)` as they run.
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
        let budgets: &[f64] = if recipe.takes_budget() { budgets } else { &budgets[..budgets.len().min(1)] };
        for &b in budgets {
            let (_, p) = measure(cfg, ckpt, original, ids, recipe.policy(base, b), split, &mut |_| {})?;
            on_point(&p);
            points.push(p);
        }
    }
    Ok(points)
}

/// For each point, one that beats it on both axes, if any: stores no more bits per linear parameter and has no
/// higher perplexity, one of the two strictly (the frontier is the points with none).
pub fn dominated_by(points: &[Point]) -> Vec<Option<usize>> {
    points
        .iter()
        .map(|p| {
            points.iter().position(|q| {
                q.bits_per_param <= p.bits_per_param
                    && q.ppl <= p.ppl
                    && (q.bits_per_param < p.bits_per_param || q.ppl < p.ppl)
            })
        })
        .collect()
}

/// What a target search asks for, on the calibration text.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
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

/// A target search as a sequence of budgets, so that whoever compresses and measures (this module's
/// [`search_target`], or the page a compression at a time) follows the same path: ask [`TargetSearch::next_budget`],
/// compress at it, measure on [`TargetSearch::split`], [`TargetSearch::record`] the point; when no budget is left,
/// [`TargetSearch::best`] is the smallest that met the target (the budget 1 when none below did, and the path says
/// whether even that met it). The budget is bisected between 2% and 100% until it is known to `tolerance`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TargetSearch {
    pub target: Target,
    pub tolerance: f64,
    lo: f64,
    hi: f64,
    /// The smallest budget recorded as meeting the target.
    best: Option<f64>,
    next: Option<f64>,
    pub path: Vec<Point>,
    /// Whether each point of the path met the target.
    pub met: Vec<bool>,
}

impl TargetSearch {
    /// A search for `target` with `base`'s method and allocation (the budget is what is searched).
    pub fn new(base: &Policy, target: Target, tolerance: f64) -> Result<Self> {
        if !base.method.is_svd() {
            return Err(Error::Policy("a quality target searches a budget: choose an SVD method, not int8".into()));
        }
        if base.budget_unit == BudgetUnit::Bits {
            return Err(Error::Policy(
                "a quality target searches a fraction of the parameters or bytes, not bits per parameter: budget unit \
                 params or bytes"
                    .into(),
            ));
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
        if !(tolerance > 0.0 && tolerance < 1.0) {
            return Err(Error::Policy(format!("target tolerance {tolerance} must be in (0, 1)")));
        }
        Ok(Self {
            target,
            tolerance,
            lo: 0.02,
            hi: 1.0,
            best: None,
            next: Some(1.0),
            path: Vec::new(),
            met: Vec::new(),
        })
    }

    /// Where every candidate is measured: the calibration tokens (the definition of the target).
    pub fn split(base: &Policy) -> Split {
        Split { skip: 0, tokens: base.calibration_tokens, window: base.calibration_window }
    }

    /// The budget to compress at next; `None` when the search is over.
    pub fn next_budget(&self) -> Option<f64> {
        self.next
    }

    /// Record the compression at [`TargetSearch::next_budget`], measured; true when it met the target.
    pub fn record(&mut self, p: Point) -> Result<bool> {
        let b = self.next.ok_or_else(|| Error::msg("the target search is over: nothing more to record"))?;
        let ok = self.target.met(&p);
        self.path.push(p);
        self.met.push(ok);
        if ok {
            self.hi = b;
            self.best = Some(b);
        } else {
            self.lo = b;
        }
        // the whole model missing the target ends the search: nothing smaller will meet it
        self.next =
            (self.best.is_some() && self.hi - self.lo > self.tolerance.max(1e-3)).then_some(0.5 * (self.lo + self.hi));
        Ok(ok)
    }

    /// The smallest budget that met the target, or 1 when none did.
    pub fn best(&self) -> f64 {
        self.best.unwrap_or(1.0)
    }
}

/// The smallest budget (to `tolerance`) whose compression meets `target` on the first `calibration_tokens` of
/// `ids` (the calibration text), by [`TargetSearch`]; every compression tried is on the path, in order. The
/// compression returned is the smallest that met the target (the budget 1 when none below did).
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
    let mut search = TargetSearch::new(base, target, tolerance)?;
    let split = TargetSearch::split(base);
    let mut best = None;
    while let Some(b) = search.next_budget() {
        let (c, p) = measure(cfg, ckpt, original, ids, Policy { budget: Some(b), ..base.clone() }, split, &mut |_| {})?;
        on_point(&p);
        if search.record(p)? || best.is_none() {
            best = Some(c);
        }
    }
    let best = best.ok_or_else(|| Error::msg("the target search compressed nothing"))?;
    Ok((best, search.path))
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
    let mut run = SensitivityRun::new(cfg, ckpt, original, ids, policy, 0, 1)?;
    let mut rows = Vec::new();
    while let Some(row) = run.step(ckpt)? {
        on_row(&row);
        rows.push(row);
    }
    Ok(rows)
}

/// [`sensitivity`] a matrix at a time, so that a page can show progress and cancel between matrices, and share the
/// matrices among workers: this run takes every `parts`-th block matrix from the `part`-th.
pub struct SensitivityRun {
    compressor: Compressor,
    probe: Probe,
    /// The indices (in the compressor's matrices) this run measures, and how many are done.
    todo: Vec<usize>,
    done: usize,
}

impl SensitivityRun {
    /// Calibrate (activation-aware) and run the probe's windows through `original`: the part before any matrix.
    pub fn new(
        cfg: &GptNeoConfig,
        ckpt: &Checkpoint,
        original: &GptNeo,
        ids: &[u32],
        policy: &Policy,
        part: usize,
        parts: usize,
    ) -> Result<Self> {
        if !matches!(policy.method, Method::Svd | Method::Whitened) {
            return Err(Error::Policy("sensitivity compresses by SVD: choose method svd or whitened".into()));
        }
        if parts == 0 || part >= parts {
            return Err(Error::msg(format!("sensitivity part {part} of {parts} does not exist")));
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
        let mut compressor = Compressor::new(single, mats)?;
        if compressor.needs_calibration() {
            let mut cal = compressor.calibrator(ids)?;
            while cal.step(original)? {}
            compressor.set_calibration(cal.finish());
        }
        let probe = Probe::new(
            original,
            ids,
            policy.sensitivity_tokens.min(policy.calibration_tokens),
            policy.calibration_window,
        )?;
        let todo = (0..compressor.mats.len())
            .filter(|&i| probe.block_of(&compressor.mats[i].name).is_some())
            .enumerate()
            .filter(|(k, _)| k % parts == part)
            .map(|(_, i)| i)
            .collect();
        Ok(Self { compressor, probe, todo, done: 0 })
    }

    /// How many matrices this run measures, and how many it has.
    pub fn total(&self) -> usize {
        self.todo.len()
    }
    pub fn done(&self) -> usize {
        self.done
    }

    /// The next matrix compressed alone and measured; `None` when every one is.
    pub fn step(&mut self, ckpt: &Checkpoint) -> Result<Option<SensitivityRow>> {
        let read = reader(ckpt);
        while let Some(&i) = self.todo.get(self.done) {
            self.done += 1;
            let name = self.compressor.mats[i].name.clone();
            let f = self.compressor.job(i)?.run(&read)?;
            let Some(stored) = f.weight else { continue }; // skipped by the policy
            let r = f.report;
            return Ok(Some(SensitivityRow {
                name: r.name,
                shape: r.shape,
                rank: r.rank.unwrap_or(0),
                err_stored: r.err_stored.unwrap_or(f64::NAN),
                err_activations: r.err_activations,
                damage: self.probe.damage(&name, stored).map_err(|e| Error::tensor(&name, e.to_string()))?,
            }));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests;
