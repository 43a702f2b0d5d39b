//! The allocation check ([`crate::compression::policy::Policy::checks_allocation`]): the budget mode's ranks against
//! the same fraction of each matrix, measured before any matrix is stored.

use super::*;
use serde::Serialize;

/// What the allocation check found ([`Policy::checks_allocation`]): the budget's ranks as its mode spreads them and
/// the same fraction of each matrix, both stored as they would be, measured on the calibration text's first tokens.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct AllocationCheck {
    /// The budget mode the policy asked for ("energy", "uniform", "loss").
    pub mode: crate::compression::policy::BudgetMode,
    /// Its ranks, all matrices at once: KL of the final logits against the original's (nats per position), cosine.
    pub mode_damage: Damage,
    /// The same fraction of each matrix, the same way.
    pub proportional_damage: Damage,
    /// Whether the mode's own ranks were kept (otherwise the same fraction of each matrix is stored).
    pub kept_mode: bool,
    /// Calibration tokens measured on (the first ones).
    pub tokens: usize,
}

impl Compressor {
    /// Whether the allocation check is still to run.
    pub fn check_pending(&self) -> bool {
        self.policy.checks_allocation() && self.check.is_none()
    }

    /// One step of the allocation check ([`Policy::checks_allocation`]), once the plans are made and before any
    /// matrix is stored: a matrix's activation-aware factors at the mode's rank and at the same fraction each; once
    /// every matrix has both, both sets are measured on the probe and the plans of the one closer to the original's
    /// logits are kept (the mode's on a tie). Method whitened stores the factors it kept; the refit fits its own to
    /// those ranks. `None` when there is nothing (left) to check.
    pub fn check_step(&mut self, read: &dyn Fn(&str) -> Result<Vec<f32>>) -> Result<Option<StepInfo>> {
        if !self.check_pending() || !matches!(self.phase, Phase::Factor) {
            return Ok(None);
        }
        let n = self.mats.len();
        if let Some(i) = self.checked.iter().position(Option::is_none) {
            // both candidates from one read and, activation-aware, one whitened decomposition
            let (mine, same) = match &self.alt_plans[i] {
                p if *p == self.plans[i] => {
                    let mine = self.job(i)?.run(read)?;
                    (mine.clone(), mine)
                }
                p => {
                    let (mine, same) = self.job(i)?.run_with(read, Some(p.clone()))?;
                    (mine, same.ok_or_else(|| Error::msg("the allocation check's other candidate is missing"))?)
                }
            };
            self.checked[i] = Some((mine, same));
            let done = self.checked.iter().filter(|c| c.is_some()).count();
            let name = format!("{} (both allocations)", self.mats[i].name);
            return Ok(Some(StepInfo { phase: "check", done, total: n + 1, name, index: Some(i) }));
        }
        let probe = self.probe.as_ref().ok_or_else(|| Error::msg("the allocation check's probe has not been set"))?;
        let pairs: Vec<(Factored, Factored)> = std::mem::take(&mut self.checked)
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| Error::msg("the allocation check measured before every matrix was factored both ways"))?;
        // what the probe can replace: the blocks' matrices (an untied head outside them is left as the original's)
        let stored = |f: &Factored| {
            f.weight.clone().filter(|_| probe.block_of(&f.report.name).is_some()).map(|w| (f.report.name.clone(), w))
        };
        let mode_damage = probe.damage_of(&pairs.iter().filter_map(|(a, _)| stored(a)).collect())?;
        let proportional_damage = probe.damage_of(&pairs.iter().filter_map(|(_, b)| stored(b)).collect())?;
        let kept_mode = mode_damage.kl <= proportional_damage.kl;
        let alt_plans = std::mem::take(&mut self.alt_plans);
        if !kept_mode {
            self.plans = alt_plans;
        }
        let check = AllocationCheck {
            mode: self.policy.budget_mode,
            mode_damage,
            proportional_damage,
            kept_mode,
            tokens: mode_damage.positions,
        };
        let name = format!(
            "allocation checked: {} KL {:.4}, same fraction each {:.4}: {} kept",
            check.mode.name(),
            mode_damage.kl,
            proportional_damage.kl,
            if kept_mode { check.mode.name() } else { "same fraction each" }
        );
        self.check = Some(check);
        if self.policy.method == crate::compression::policy::Method::Whitened {
            for (mine, same) in pairs {
                self.accept(if kept_mode { mine } else { same })?;
            }
        }
        Ok(Some(StepInfo { phase: "check", done: n + 1, total: n + 1, name, index: None }))
    }
}
