//! The policy's settings and what follows from them alone: which matrices are excluded and why, the rank asked for,
//! the bytes a storage takes, what a method needs (spectra, calibration, probes).

use crate::compression::svd::SvdMethod;
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
    /// No SVD: the dense weight as group-wise codes of `bits` bits, a scale per `group` values of a row,
    /// round-to-nearest.
    Quant,
    /// Group-wise codes as [`Method::Quant`] stores them, chosen by GPTQ's error compensation on calibration text.
    Gptq,
    /// Each matrix stored the way that costs the model least per byte within a byte budget: activation-aware
    /// factors at some rank, GPTQ codes of 2, 3, 4 or 8 bits in groups of `group`, or dense; the damage of each
    /// candidate estimated as the matrix's probed sensitivity times the error it leaves on the calibration inputs
    /// ([`crate::compression::policy::auto`]).
    Auto,
}

impl Method {
    /// Whether the method factors matrices by an SVD (plain or whitened).
    pub fn is_svd(&self) -> bool {
        matches!(self, Method::Svd | Method::Whitened | Method::Refit)
    }

    /// Whether the method reads calibration text (activation-aware factors).
    pub fn is_activation_aware(&self) -> bool {
        matches!(self, Method::Whitened | Method::Refit | Method::Gptq | Method::Auto)
    }

    /// Whether the method stores the dense weights as group-wise codes.
    pub fn is_grouped(&self) -> bool {
        matches!(self, Method::Quant | Method::Gptq)
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
    /// A fraction of the linear parameters.
    #[default]
    Params,
    /// A fraction of the linear layers' bytes as stored in the checkpoint.
    Bytes,
    /// Bits per linear parameter as stored after compression (0 to 32): codes, scales and factors, as the summaries
    /// count them. Spent as a byte budget of `bits / 8` bytes per parameter of the matrices it spreads over
    /// ([`Policy::resolved`]).
    Bits,
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
    /// 8: INT8 factors (`quant`'s scheme); 4: group-wise INT4 factors, an f16 scale per `group` values of a row;
    /// 32: f32 factors (SVD only).
    pub quant_bits: u8,
    pub quant: QuantScheme,
    /// Methods quant and gptq: the codes' width (2, 3, 4 or 8 bits).
    pub bits: u8,
    /// Methods quant and gptq, and INT4 factors: values of a row sharing one scale (8 to 4096).
    pub group: usize,
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
            bits: 4,
            group: 64,
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

/// How a low-rank matrix's factors U and Vh are stored (S stays f32 but for the origin's per-tensor INT8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FactorStorage {
    F32,
    Int8(QuantScheme),
    /// Group-wise codes ([`crate::model::grouped`]) of `bits` bits, a scale per `group` values of a row.
    Grouped {
        bits: u8,
        group: usize,
    },
}

/// A weight matrix the policy looks at.
#[derive(Clone, Debug, Serialize, Deserialize)]
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
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Plan {
    Dense {
        reason: String,
    },
    Int8,
    LowRank {
        rank: usize,
    },
    /// Group-wise codes ([`crate::model::grouped`]).
    Grouped {
        bits: u8,
        group: usize,
    },
}

impl Policy {
    pub fn validate(&self) -> Result<()> {
        if !matches!(self.quant_bits, 4 | 8 | 32) {
            return Err(Error::Policy(format!(
                "quant_bits is {}; 8 (INT8 factors), 4 (group-wise INT4 factors) and 32 (f32 factors) are supported",
                self.quant_bits
            )));
        }
        if self.method.is_grouped() || self.method == Method::Auto || self.quant_bits == 4 {
            if !crate::model::grouped::BITS.contains(&self.bits) {
                return Err(Error::Policy(format!("bits is {}; group-wise codes have 2, 3, 4 or 8 bits", self.bits)));
            }
            let (lo, hi) = (crate::model::grouped::GROUPS.start(), crate::model::grouped::GROUPS.end());
            if !crate::model::grouped::GROUPS.contains(&self.group) {
                return Err(Error::Policy(format!(
                    "group is {}; a group holds {lo} to {hi} values of a row",
                    self.group
                )));
            }
            if self.method.is_grouped() && (self.budget.is_some() || self.energy.is_some()) {
                return Err(Error::Policy(format!(
                    "method {} stores every chosen matrix at {} bits: its size is set by bits and group, not by a \
                     budget or an energy",
                    if self.method == Method::Gptq { "gptq" } else { "quant" },
                    self.bits
                )));
            }
        }
        if self.method == Method::Auto {
            if self.budget.is_none() || self.energy.is_some() {
                return Err(Error::Policy(
                    "method auto chooses each matrix's storage within a size: give a budget in bits per parameter \
                     (--budget-bits) or bytes, not an energy or ranks"
                        .into(),
                ));
            }
            if self.budget_unit == BudgetUnit::Params {
                return Err(Error::Policy(
                    "method auto weighs codes against factors by the bytes they store: give its budget in bits per \
                     parameter or in bytes, not in parameters"
                        .into(),
                ));
            }
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
            if self.budget_unit == BudgetUnit::Bits {
                if !(b > 0.0 && b <= 32.0) {
                    return Err(Error::Policy(format!("budget {b} bits per parameter must be in (0, 32]")));
                }
            } else if !(b > 0.0 && b <= 1.0) {
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

    /// How low-rank factors are stored ([`Policy::quant_bits`]).
    pub fn factor_storage(&self) -> FactorStorage {
        match self.quant_bits {
            32 => FactorStorage::F32,
            4 => FactorStorage::Grouped { bits: 4, group: self.group },
            _ => FactorStorage::Int8(self.quant),
        }
    }

    /// Whether the spectra of all matrices are needed before ranks can be chosen.
    pub fn needs_spectra(&self) -> bool {
        (self.method.is_svd() || self.method == Method::Auto) && (self.energy.is_some() || self.budget.is_some())
    }

    /// Whether ranks are chosen by loss: the spectra are the whitened ones and each matrix's sensitivity is measured.
    pub fn needs_sensitivity(&self) -> bool {
        self.method.is_activation_aware()
            && self.budget.is_some()
            && (self.budget_mode == BudgetMode::Loss || self.method == Method::Auto)
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
            Method::Svd | Method::Int8 | Method::Quant | Method::Gptq | Method::Auto => false,
        };
        self.allocation_check && self.budget.is_some() && modes
    }

    /// The same policy with its budget spread as the same fraction of each matrix (what the allocation check
    /// compares with).
    pub fn proportional(&self) -> Self {
        Self { budget_mode: BudgetMode::Proportional, ..self.clone() }
    }

    /// The policy with a budget in bits per parameter ([`BudgetUnit::Bits`]) as the byte budget it means for `mats`:
    /// `bits / 8` bytes per parameter of the matrices it spreads over (those no exclusion keeps dense), as a fraction
    /// of their stored bytes (at most all of them). Other policies as they are.
    pub fn resolved(&self, mats: &[MatrixInfo]) -> Policy {
        let (BudgetUnit::Bits, Some(bits)) = (self.budget_unit, self.budget) else { return self.clone() };
        let spread = || mats.iter().filter(|m| self.exclusion(m).is_none());
        let params: f64 = spread().map(|m| m.params() as f64).sum();
        let bytes: f64 = spread().map(|m| m.dense_bytes() as f64).sum();
        let fraction = if bytes > 0.0 { (bits / 8.0 * params / bytes).min(1.0) } else { 1.0 };
        Policy { budget_unit: BudgetUnit::Bytes, budget: Some(fraction), ..self.clone() }
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
        match self.factor_storage() {
            FactorStorage::F32 => 4 * r * (m + n + 1),
            // U codes + a scale per row, S in f32, Vh codes + a scale per row
            FactorStorage::Int8(QuantScheme::PerRow) => m * r + 4 * m + 4 * r + r * n + 4 * r,
            // each of U, S, Vh: codes + one scale + one zero point
            FactorStorage::Int8(QuantScheme::PerTensor) => m * r + r + r * n + 3 * 8,
            // U and Vh as group-wise codes (their rows in groups), S in f32
            FactorStorage::Grouped { bits, group } => {
                Policy::grouped_bytes(m, r, bits, group) + 4 * r + Policy::grouped_bytes(r, n, bits, group)
            }
        }
    }

    /// Bytes of an `m × n` matrix as group-wise codes: the packed codes and an f16 scale a group.
    pub fn grouped_bytes(m: usize, n: usize, bits: u8, group: usize) -> usize {
        4 * crate::model::grouped::GMat::words(m, n, bits) + 2 * m * n.div_ceil(group)
    }

    /// Bytes of the dense matrix in INT8 (per-row).
    pub fn int8_bytes(&self, m: usize, n: usize) -> usize {
        m * n + 4 * m
    }
}
