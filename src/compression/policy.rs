//! Compression policy: which weight matrices are factored, at which rank, and how the factors are stored.
//!
//! The knobs carry the origin pipeline's names (`rank`, `quant_bits`, `min_dim_for_compression`, skip patterns)
//! and go past them: per-pattern ranks, an energy threshold, a global size budget, and a break-even guard.

use crate::compression::svd::{rank_for_energy, SvdMethod};
use crate::model::storage::QuantScheme;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// What happens to the chosen matrices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(not(target_arch = "wasm32"), derive(clap::ValueEnum))]
pub enum Method {
    /// Truncated SVD, factors stored per `quant_bits` / `quant`.
    #[default]
    Svd,
    /// No SVD: the dense weight itself in INT8.
    Int8,
    /// Activation-aware ("whitened") SVD: truncation weighted by the inputs each layer sees on calibration text.
    Whitened,
    /// Activation-aware SVD with the sequential refit: block by block, each matrix's factors are solved in closed
    /// form to reproduce the original layer's outputs from the inputs the already-compressed blocks give it.
    Refit,
}

impl Method {
    /// Whether the method factors matrices by an SVD (plain or whitened).
    pub fn is_svd(&self) -> bool {
        matches!(self, Method::Svd | Method::Whitened | Method::Refit)
    }

    /// Whether the method reads calibration text (activation-aware factors).
    pub fn is_activation_aware(&self) -> bool {
        matches!(self, Method::Whitened | Method::Refit)
    }
}

/// How a size budget spreads ranks over the matrices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(not(target_arch = "wasm32"), derive(clap::ValueEnum))]
pub enum BudgetMode {
    /// Triplets taken in order of normalised energy σ_j² / Σσ² across all matrices.
    #[default]
    Energy,
    /// One rank for every matrix.
    Uniform,
    /// The same fraction of each matrix's parameters.
    Proportional,
    /// Components taken in order of model loss saved per unit of budget: each component's exact cost in output
    /// error on the calibration activations (the whitened spectrum), weighted by how much that matrix's output
    /// error moves the model's loss (its measured sensitivity).
    Loss,
}

impl BudgetMode {
    /// How the page and the reports name it.
    pub fn name(&self) -> &'static str {
        match self {
            BudgetMode::Energy => "energy",
            BudgetMode::Uniform => "one rank for all",
            BudgetMode::Proportional => "same fraction each",
            BudgetMode::Loss => "loss",
        }
    }
}

/// What a budget counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(not(target_arch = "wasm32"), derive(clap::ValueEnum))]
pub enum BudgetUnit {
    #[default]
    Params,
    Bytes,
}

/// A rank for the matrices whose name contains `pattern`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RankRule {
    pub pattern: String,
    pub rank: usize,
}

impl RankRule {
    /// `PATTERN=RANK`
    pub fn parse(s: &str) -> Result<Self> {
        let (p, r) =
            s.rsplit_once('=').ok_or_else(|| Error::Policy(format!("rank rule \"{s}\" is not PATTERN=RANK")))?;
        let rank =
            r.trim().parse().map_err(|_| Error::Policy(format!("rank rule \"{s}\": \"{r}\" is not a number")))?;
        Ok(Self { pattern: p.trim().to_string(), rank })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    pub method: Method,
    /// The rank for every matrix no rule names.
    pub rank: usize,
    /// Per-pattern ranks; the first rule whose pattern the name contains wins.
    pub rank_for: Vec<RankRule>,
    /// Matrices whose name contains one of these stay dense.
    pub skip: Vec<String>,
    /// Matrices whose smaller side is below this stay dense.
    pub min_dim_for_compression: usize,
    /// 8: INT8 factors; 32: f32 factors (SVD only).
    pub quant_bits: u8,
    pub quant: QuantScheme,
    /// Smallest rank keeping this fraction of ‖W‖F² (overrides `rank` and `rank_for`).
    pub energy: Option<f64>,
    /// Keep this fraction of the considered matrices' parameters (or bytes); overrides the ranks above.
    pub budget: Option<f64>,
    pub budget_unit: BudgetUnit,
    pub budget_mode: BudgetMode,
    pub svd: SvdMethod,
    pub seed: u64,
    /// Keep a matrix dense when its factors would not be smaller than it (in bytes, as stored).
    pub break_even_guard: bool,
    /// Activation-aware factors with a budget spread other than the same fraction of each matrix: also factor the
    /// same fraction each, measure both on the first `sensitivity_tokens` calibration tokens (KL of the final logits
    /// against the original's) and keep the closer one's ranks ([`Policy::checks_allocation`]). `false`: the mode's
    /// ranks as they are, however they do.
    pub allocation_check: bool,
    /// Whitened method: calibration tokens (the first of the calibration text) and their window.
    pub calibration_tokens: usize,
    pub calibration_window: usize,
    /// Whitened method: λ = damp · mean diagonal of the input Gram matrix, added before the Cholesky factorisation.
    pub damp: f64,
    /// Refit method: the closed-form fit is pulled toward the original weights with ρ = refit_ridge · mean diagonal
    /// of the compressed path's input Gram matrix (`argmin ‖X̂ W*ᵀ − Y‖² / rows + ρ ‖W* − W‖²`); 0 is the plain
    /// least squares.
    pub refit_ridge: f64,
    /// Refit method: the calibration windows the refit fits on start every `refit_stride` tokens, overlapping, so
    /// that each calibration token is seen in several contexts (still only the first `calibration_tokens`); `None`:
    /// side by side, as the calibration's. Time and the refit's memory grow by `calibration_window / refit_stride`.
    pub refit_stride: Option<usize>,
    /// Refit method with the loss allocation: before each group of matrices is truncated, the budget left after the
    /// matrices already stored is spent again, with that group's spectra those of its refitted targets `W*` (whitened
    /// by the compressed path's inputs) instead of the original weights'. `false`: the ranks planned before the refit.
    pub refit_replan: bool,
    /// Refit method: after each block's refit, this many Adam steps on all its factors at once, minimising the
    /// squared error of the block's output against the original block's on the refit's windows
    /// ([`crate::compression::refine`]); 0: none.
    pub refine_steps: usize,
    /// Refinement: each factor's step size, relative to its root-mean-square entry.
    pub refine_lr: f64,
    /// Loss allocation: calibration tokens (the first ones) on which each matrix's sensitivity is measured.
    pub sensitivity_tokens: usize,
    /// Loss allocation: each matrix is probed alone at the rank keeping this fraction of its parameters (by default
    /// the budget's fraction).
    pub probe: Option<f64>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            method: Method::Svd,
            rank: 128,
            rank_for: Vec::new(),
            skip: Vec::new(),
            min_dim_for_compression: 0,
            quant_bits: 8,
            quant: QuantScheme::PerRow,
            energy: None,
            budget: None,
            budget_unit: BudgetUnit::Params,
            budget_mode: BudgetMode::Energy,
            svd: SvdMethod::Auto,
            seed: 0,
            break_even_guard: true,
            allocation_check: true,
            calibration_tokens: 2048,
            calibration_window: 512,
            damp: 0.01,
            refit_ridge: 0.3,
            refit_stride: None,
            refit_replan: true,
            refine_steps: 0,
            refine_lr: 1e-3,
            sensitivity_tokens: 1024,
            probe: None,
        }
    }
}

/// A weight matrix the policy looks at.
#[derive(Clone, Debug, Serialize)]
pub struct MatrixInfo {
    pub name: String,
    pub out: usize,
    pub inp: usize,
    /// Bytes per element as stored in the source checkpoint.
    pub stored_elem_bytes: usize,
    /// The dtype it is stored in ("F16", "BF16", "F32").
    pub stored_dtype: String,
    /// The head shares the token embedding: factoring it could only add bytes.
    pub tied: bool,
}

impl MatrixInfo {
    pub fn params(&self) -> usize {
        self.out * self.inp
    }
    pub fn dense_bytes(&self) -> usize {
        self.params() * self.stored_elem_bytes
    }
}

/// What to do with one matrix.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Plan {
    Dense { reason: String },
    Int8,
    LowRank { rank: usize },
}

impl Policy {
    pub fn validate(&self) -> Result<()> {
        if !matches!(self.quant_bits, 8 | 32) {
            return Err(Error::Policy(format!(
                "quant_bits is {}; 8 (INT8 factors) and 32 (f32 factors) are supported",
                self.quant_bits
            )));
        }
        if self.method == Method::Int8 && self.quant_bits != 8 {
            return Err(Error::Policy("method int8 needs quant_bits 8".into()));
        }
        if let Some(e) = self.energy {
            if !(e > 0.0 && e <= 1.0) {
                return Err(Error::Policy(format!("energy {e} must be in (0, 1]")));
            }
        }
        if let Some(b) = self.budget {
            if !(b > 0.0 && b <= 1.0) {
                return Err(Error::Policy(format!("budget {b} must be in (0, 1]")));
            }
        }
        if self.budget_mode == BudgetMode::Loss && self.budget.is_some() && !self.method.is_activation_aware() {
            return Err(Error::Policy(
                "budget mode loss weighs activation errors: use method whitened or refit (calibration text)".into(),
            ));
        }
        if let Some(p) = self.probe {
            if !(p > 0.0 && p <= 1.0) {
                return Err(Error::Policy(format!("probe {p} must be in (0, 1]")));
            }
        }
        if self.refine_steps > 0 && self.method != Method::Refit {
            return Err(Error::Policy(
                "the block-level refinement (refine steps) runs in the refit: method refit".into(),
            ));
        }
        if self.method.is_activation_aware() {
            if self.calibration_tokens < 2 || self.calibration_window < 2 {
                return Err(Error::Policy(
                    "activation-aware SVD needs at least 2 calibration tokens and a window of 2".into(),
                ));
            }
            if !(self.damp.is_finite() && self.damp >= 0.0) {
                return Err(Error::Policy(format!("damp {} must be a number ≥ 0", self.damp)));
            }
            if !(self.refit_ridge.is_finite() && self.refit_ridge >= 0.0) {
                return Err(Error::Policy(format!("refit ridge {} must be a number ≥ 0", self.refit_ridge)));
            }
            if !(self.refine_lr.is_finite() && self.refine_lr > 0.0) {
                return Err(Error::Policy(format!("refinement step size {} must be a number > 0", self.refine_lr)));
            }
            if self.refit_stride == Some(0) {
                return Err(Error::Policy("refit stride must be at least 1 token".into()));
            }
        }
        if self.rank == 0 && self.energy.is_none() && self.budget.is_none() && self.method.is_svd() {
            return Err(Error::Policy("rank must be at least 1".into()));
        }
        if let Some(r) = self.rank_for.iter().find(|r| r.pattern.is_empty() || r.rank == 0) {
            return Err(Error::Policy(format!(
                "rank rule \"{}={}\" needs a pattern and a rank ≥ 1",
                r.pattern, r.rank
            )));
        }
        Ok(())
    }

    /// INT8 scheme of the factors, or `None` for f32 factors.
    pub fn factor_quant(&self) -> Option<QuantScheme> {
        (self.quant_bits == 8).then_some(self.quant)
    }

    /// Whether the spectra of all matrices are needed before ranks can be chosen.
    pub fn needs_spectra(&self) -> bool {
        self.method.is_svd() && (self.energy.is_some() || self.budget.is_some())
    }

    /// Whether ranks are chosen by loss: the spectra are the whitened ones and each matrix's sensitivity is measured.
    pub fn needs_sensitivity(&self) -> bool {
        self.method.is_activation_aware() && self.budget.is_some() && self.budget_mode == BudgetMode::Loss
    }

    /// Whether the budget's ranks are checked against the same fraction of each matrix ([`Policy::allocation_check`]):
    /// activation-aware factors under a budget spread by energy or one rank (and, for method whitened, by loss; the
    /// refit replans its loss allocation on the refitted spectra instead). Normalised energy is not the loss, and one
    /// rank for all gives the wide matrices the smallest share: at tight budgets either can starve the matrices the
    /// model needs most (neo-bard-8l at 10%, activation-aware: ×29.8 and ×12.3 against ×8.07).
    pub fn checks_allocation(&self) -> bool {
        let modes = match self.method {
            Method::Whitened => self.budget_mode != BudgetMode::Proportional,
            Method::Refit => matches!(self.budget_mode, BudgetMode::Energy | BudgetMode::Uniform),
            Method::Svd | Method::Int8 => false,
        };
        self.allocation_check && self.budget.is_some() && modes
    }

    /// The same policy with its budget spread as the same fraction of each matrix (what the allocation check
    /// compares with).
    pub fn proportional(&self) -> Self {
        Self { budget_mode: BudgetMode::Proportional, ..self.clone() }
    }

    /// The fraction of its parameters each matrix keeps when its sensitivity is probed.
    pub fn probe_fraction(&self) -> f64 {
        self.probe.or(self.budget).unwrap_or(0.25)
    }

    /// The rank keeping `fraction` of an `m × n` matrix's parameters (at least 1).
    pub fn rank_for_fraction(m: usize, n: usize, fraction: f64) -> usize {
        ((fraction * (m * n) as f64 / (m + n + 1) as f64).floor() as usize).clamp(1, m.min(n))
    }

    /// The reason a matrix is not compressed at all, if any (skip patterns, minimum dimension, tied head).
    pub fn exclusion(&self, m: &MatrixInfo) -> Option<String> {
        if let Some(p) = self.skip.iter().find(|p| !p.is_empty() && m.name.contains(p.as_str())) {
            return Some(format!("skipped: name matches \"{p}\""));
        }
        let small = m.out.min(m.inp);
        if small < self.min_dim_for_compression {
            return Some(format!("smaller side {small} < min_dim_for_compression {}", self.min_dim_for_compression));
        }
        if m.tied {
            return Some("tied to the token embedding: factors would be stored besides it, adding bytes".into());
        }
        None
    }

    /// The rank asked for by `rank_for` or `rank` (before budget or energy).
    pub fn requested_rank(&self, name: &str) -> usize {
        self.rank_for.iter().find(|r| name.contains(r.pattern.as_str())).map_or(self.rank, |r| r.rank)
    }

    /// Bytes of rank-`r` factors of an `m × n` matrix under this policy.
    pub fn low_rank_bytes(&self, m: usize, n: usize, r: usize) -> usize {
        match self.factor_quant() {
            None => 4 * r * (m + n + 1),
            // U codes + a scale per row, S in f32, Vh codes + a scale per row
            Some(QuantScheme::PerRow) => m * r + 4 * m + 4 * r + r * n + 4 * r,
            // each of U, S, Vh: codes + one scale + one zero point
            Some(QuantScheme::PerTensor) => m * r + r + r * n + 3 * 8,
        }
    }

    /// Bytes of the dense matrix in INT8 (per-row).
    pub fn int8_bytes(&self, m: usize, n: usize) -> usize {
        m * n + 4 * m
    }

    /// Decide every matrix. `spectra[i]` (descending singular values) is required when [`Policy::needs_spectra`].
    pub fn plan(&self, mats: &[MatrixInfo], spectra: &[Option<Vec<f64>>]) -> Result<Vec<Plan>> {
        self.plan_weighted(mats, spectra, &[])
    }

    /// [`Policy::plan`] with each matrix's sensitivity (loss per unit of whitened squared error), which the loss
    /// allocation needs.
    pub fn plan_weighted(
        &self,
        mats: &[MatrixInfo],
        spectra: &[Option<Vec<f64>>],
        sensitivity: &[Option<f64>],
    ) -> Result<Vec<Plan>> {
        self.validate()?;
        let mut plans: Vec<Option<Plan>> =
            mats.iter().map(|m| self.exclusion(m).map(|reason| Plan::Dense { reason })).collect();
        if self.method == Method::Int8 {
            return Ok(plans.into_iter().map(|p| p.unwrap_or(Plan::Int8)).collect());
        }
        let spectrum = |i: usize| -> Result<&Vec<f64>> {
            spectra
                .get(i)
                .and_then(|s| s.as_ref())
                .ok_or_else(|| Error::msg(format!("no spectrum for {}", mats[i].name)))
        };
        let mut ranks: Vec<usize> = vec![0; mats.len()];
        let candidates: Vec<usize> = (0..mats.len()).filter(|&i| plans[i].is_none()).collect();
        if let Some(fraction) = self.budget {
            let alloc = self.allocate_budget(mats, &candidates, fraction, spectra, sensitivity)?;
            for (&i, r) in candidates.iter().zip(alloc) {
                match r {
                    Alloc::Rank(r) => ranks[i] = r,
                    Alloc::Dense => plans[i] = Some(Plan::Dense { reason: "budget allocation keeps it dense".into() }),
                    Alloc::Int8 => plans[i] = Some(Plan::Int8),
                }
            }
        } else {
            for &i in &candidates {
                ranks[i] = match self.energy {
                    Some(e) => rank_for_energy(spectrum(i)?, e).max(1),
                    None => self.requested_rank(&mats[i].name),
                };
            }
        }
        for &i in &candidates {
            if plans[i].is_some() {
                continue;
            }
            let m = &mats[i];
            let r = ranks[i].min(m.out.min(m.inp));
            let lr = self.low_rank_bytes(m.out, m.inp, r);
            plans[i] = Some(if self.guarded(m, r) {
                Plan::Dense {
                    reason: format!(
                        "break-even: rank {r} factors ({lr} B) would not be smaller than the dense weight ({} B)",
                        m.dense_bytes()
                    ),
                }
            } else {
                Plan::LowRank { rank: r }
            });
        }
        Ok(plans.into_iter().map(|p| p.unwrap_or(Plan::Dense { reason: "not planned".into() })).collect())
    }

    /// The plans again, with some matrices' plans fixed (already stored): the budget left after them is spent on the
    /// others by [`Policy::plan_weighted`] with these spectra.
    pub fn replan(
        &self,
        mats: &[MatrixInfo],
        spectra: &[Option<Vec<f64>>],
        sensitivity: &[Option<f64>],
        fixed: &[Option<Plan>],
    ) -> Result<Vec<Plan>> {
        let Some(fraction) = self.budget else { return self.plan_weighted(mats, spectra, sensitivity) };
        let candidates: Vec<usize> = (0..mats.len()).filter(|&i| self.exclusion(&mats[i]).is_none()).collect();
        let total: f64 = candidates.iter().map(|&i| self.dense_cost(&mats[i])).sum();
        let mut left = fraction * total;
        let mut rest = Vec::new();
        for &i in &candidates {
            match fixed.get(i).and_then(|p| p.as_ref()) {
                Some(Plan::LowRank { rank }) => left -= self.cost(&mats[i], *rank),
                Some(Plan::Int8) => left -= self.int8_bytes(mats[i].out, mats[i].inp) as f64,
                Some(Plan::Dense { .. }) => left -= self.dense_cost(&mats[i]),
                None => rest.push(i),
            }
        }
        let rest_total: f64 = rest.iter().map(|&i| self.dense_cost(&mats[i])).sum();
        let mut out: Vec<Plan> = (0..mats.len())
            .map(|i| match fixed.get(i).and_then(|p| p.clone()) {
                Some(p) => p,
                None => Plan::Dense { reason: "not planned".into() },
            })
            .collect();
        if rest.is_empty() || rest_total <= 0.0 {
            return Ok(out);
        }
        let sub = Policy { budget: Some((left / rest_total).clamp(1e-9, 1.0)), ..self.clone() };
        let m: Vec<MatrixInfo> = rest.iter().map(|&i| mats[i].clone()).collect();
        let sp: Vec<Option<Vec<f64>>> = rest.iter().map(|&i| spectra.get(i).cloned().flatten()).collect();
        let se: Vec<Option<f64>> = rest.iter().map(|&i| sensitivity.get(i).copied().flatten()).collect();
        for (&i, p) in rest.iter().zip(sub.plan_weighted(&m, &sp, &se)?) {
            out[i] = p;
        }
        // excluded matrices keep their reasons
        for (i, m) in mats.iter().enumerate() {
            if let Some(reason) = self.exclusion(m) {
                out[i] = Plan::Dense { reason };
            }
        }
        Ok(out)
    }

    /// Cost of rank r of matrix m in the budget's unit, and of keeping it dense.
    fn cost(&self, m: &MatrixInfo, r: usize) -> f64 {
        match self.budget_unit {
            BudgetUnit::Params => (r * (m.out + m.inp + 1)) as f64,
            BudgetUnit::Bytes => self.low_rank_bytes(m.out, m.inp, r) as f64,
        }
    }
    /// [`Policy::cost`] of rank r, or the dense cost where the break-even guard keeps the matrix dense at that rank.
    fn guarded_cost(&self, m: &MatrixInfo, r: usize) -> f64 {
        if self.guarded(m, r) {
            self.dense_cost(m)
        } else {
            self.cost(m, r)
        }
    }
    /// Whether the break-even guard keeps m dense at rank r: its factors would not be smaller in bytes.
    fn guarded(&self, m: &MatrixInfo, r: usize) -> bool {
        self.break_even_guard && self.low_rank_bytes(m.out, m.inp, r) >= m.dense_bytes()
    }
    fn dense_cost(&self, m: &MatrixInfo) -> f64 {
        match self.budget_unit {
            BudgetUnit::Params => m.params() as f64,
            BudgetUnit::Bytes => m.dense_bytes() as f64,
        }
    }

    /// What each of `candidates` becomes so that their total cost is at most `fraction` of their dense cost.
    fn allocate_budget(
        &self,
        mats: &[MatrixInfo],
        candidates: &[usize],
        fraction: f64,
        spectra: &[Option<Vec<f64>>],
        sensitivity: &[Option<f64>],
    ) -> Result<Vec<Alloc>> {
        let total: f64 = candidates.iter().map(|&i| self.dense_cost(&mats[i])).sum();
        let budget = fraction * total;
        let kmax = |i: usize| mats[i].out.min(mats[i].inp);
        match self.budget_mode {
            BudgetMode::Uniform => {
                // the largest single rank whose total cost fits, a matrix the break-even guard keeps dense at that
                // rank counted as dense
                let fits = |r: usize| {
                    candidates.iter().map(|&i| self.guarded_cost(&mats[i], r.min(kmax(i)))).sum::<f64>() <= budget
                };
                let maxk = candidates.iter().map(|&i| kmax(i)).max().unwrap_or(0);
                let r = (1..=maxk).take_while(|&r| fits(r)).last().unwrap_or(1);
                Ok(candidates.iter().map(|&i| Alloc::Rank(r.min(kmax(i)))).collect())
            }
            BudgetMode::Proportional => Ok(candidates
                .iter()
                .map(|&i| {
                    let m = &mats[i];
                    Alloc::Rank(self.rank_within(m, fraction))
                })
                .collect()),
            BudgetMode::Energy | BudgetMode::Loss => {
                // The value of component j of candidate c: its normalised energy σ_j² / Σσ², or (loss) the model
                // loss it saves, sensitivity · σ_j² of the whitened spectrum, per unit of budget it costs.
                let loss = self.budget_mode == BudgetMode::Loss;
                let mut values: Vec<Vec<f64>> = Vec::with_capacity(candidates.len());
                for &i in candidates {
                    let s = spectra
                        .get(i)
                        .and_then(|s| s.as_ref())
                        .ok_or_else(|| Error::msg(format!("no spectrum for {}", mats[i].name)))?;
                    let weight = if loss {
                        sensitivity.get(i).copied().flatten().ok_or_else(|| {
                            Error::msg(format!(
                                "no sensitivity for {}: measure it before a loss allocation",
                                mats[i].name
                            ))
                        })?
                    } else {
                        let e: f64 = s.iter().map(|x| x * x).sum();
                        if e > 0.0 {
                            1.0 / e
                        } else {
                            0.0
                        }
                    };
                    let step = if loss { self.cost(&mats[i], 2) - self.cost(&mats[i], 1) } else { 1.0 };
                    values.push(s.iter().map(|x| weight * x * x / step.max(f64::MIN_POSITIVE)).collect());
                }
                let start = vec![1; candidates.len()];
                Ok(self.greedy(mats, candidates, budget, &values, &start))
            }
        }
    }
}

/// What a budget allocation makes of a matrix.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Alloc {
    Rank(usize),
    /// Kept as stored.
    Dense,
    /// The dense weight in INT8 (byte budgets with INT8 storage, where that is cheaper than the next rank).
    Int8,
}

impl Policy {
    /// The largest rank of `m` costing at most `fraction` of its dense cost (at least 1).
    fn rank_within(&self, m: &MatrixInfo, fraction: f64) -> usize {
        let target = fraction * self.dense_cost(m);
        (1..=m.out.min(m.inp)).take_while(|&r| self.cost(m, r) <= target).last().unwrap_or(1)
    }

    /// Greedy allocation: every candidate starts at rank `start[c]`; then components are taken in order of `values[c][j]`
    /// (the value of growing candidate c from rank j to j + 1) while they fit in `budget`. A matrix whose next rank
    /// would cost as much as its ceiling (or that the break-even guard would keep dense) takes the ceiling instead:
    /// dense as stored, or, in a byte budget with INT8 storage and the loss allocation, the dense weight in INT8 when
    /// that is cheaper.
    fn greedy(
        &self,
        mats: &[MatrixInfo],
        candidates: &[usize],
        budget: f64,
        values: &[Vec<f64>],
        start: &[usize],
    ) -> Vec<Alloc> {
        let int8_ceiling =
            self.budget_mode == BudgetMode::Loss && self.budget_unit == BudgetUnit::Bytes && self.quant_bits == 8;
        let ceiling = |m: &MatrixInfo| -> (f64, Alloc) {
            let dense = self.dense_cost(m);
            let int8 = self.int8_bytes(m.out, m.inp) as f64;
            if int8_ceiling && int8 < dense {
                (int8, Alloc::Int8)
            } else {
                (dense, Alloc::Dense)
            }
        };
        let mut out: Vec<Alloc> = start.iter().map(|&r| Alloc::Rank(r)).collect();
        let mut spent: f64 = candidates.iter().zip(start).map(|(&i, &r)| self.cost(&mats[i], r)).sum();
        let mut order: Vec<(f64, usize, usize)> = Vec::new();
        for (c, v) in values.iter().enumerate() {
            for (j, &x) in v.iter().enumerate().skip(1) {
                order.push((x, c, j));
            }
        }
        order.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        for (_, c, j) in order {
            let m = &mats[candidates[c]];
            if out[c] != Alloc::Rank(j) {
                continue; // at its ceiling already, or an earlier component of this matrix did not fit
            }
            let (now, next) = (self.cost(m, j), self.cost(m, j + 1));
            let (top, top_alloc) = ceiling(m);
            // the break-even guard keeps dense what its factors would not make smaller in bytes; with factors wider
            // than the stored weight (f32 factors of an f16 checkpoint) that is reached before the budget's own
            // ceiling, and the matrix then costs its ceiling, not its rank
            let (delta, to) = if next >= top || self.guarded(m, j + 1) {
                (top - now, top_alloc)
            } else {
                (next - now, Alloc::Rank(j + 1))
            };
            if spent + delta <= budget {
                spent += delta;
                out[c] = to;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
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
        plans
            .iter()
            .map(|p| if let Plan::LowRank { rank } = p { *rank } else { panic!("{p:?} is not low-rank") })
            .collect()
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
            assert!(
                cost(r) <= 0.3 * dense && cost(r + 1) > 0.3 * dense,
                "{}: rank {r} is not 30% of its params",
                m.name
            );
        }
        assert_ne!(r[0], r[1], "different shapes get different ranks");
    }

    #[test]
    fn byte_budgets_count_stored_bytes() {
        let (mats, spectra) = zoo();
        let dense: usize = mats.iter().map(|m| m.dense_bytes()).sum();
        for mode in [BudgetMode::Energy, BudgetMode::Uniform, BudgetMode::Proportional] {
            for quant_bits in [8, 32] {
                let p = Policy {
                    budget: Some(0.3),
                    budget_unit: BudgetUnit::Bytes,
                    budget_mode: mode,
                    quant_bits,
                    break_even_guard: false,
                    ..Default::default()
                };
                let plans = p.plan(&mats, &spectra).unwrap();
                let bytes: usize = mats
                    .iter()
                    .zip(&plans)
                    .map(|(m, pl)| match pl {
                        Plan::LowRank { rank } => p.low_rank_bytes(m.out, m.inp, *rank),
                        _ => m.dense_bytes(),
                    })
                    .sum();
                assert!(bytes as f64 <= 0.3 * dense as f64, "{mode:?}, {quant_bits} bits: {bytes} of {dense} B");
                assert!(
                    bytes as f64 >= 0.2 * dense as f64,
                    "{mode:?}, {quant_bits} bits: {bytes} B leaves budget unused"
                );
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
        for (mode, weights) in [(BudgetMode::Loss, skewed), (BudgetMode::Energy, vec![]), (BudgetMode::Uniform, vec![])]
        {
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
        let base =
            Policy { method: Method::Refit, budget: Some(0.3), budget_mode: BudgetMode::Loss, ..Default::default() };
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
}
