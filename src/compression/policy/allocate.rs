//! Every matrix's plan: exclusions, ranks asked for or chosen by energy, and a size budget spread over the matrices
//! (by energy, one rank for all, the same fraction each, or model loss), with the break-even guard; and the plans
//! made again with some matrices already stored (the refit's replanning).

use crate::compression::policy::rules::{BudgetMode, BudgetUnit, MatrixInfo, Method, Plan, Policy};
use crate::compression::svd::rank_for_energy;
use crate::{Error, Result};

impl Policy {
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
        if self.budget_unit == BudgetUnit::Bits {
            return self.resolved(mats).plan_weighted(mats, spectra, sensitivity);
        }
        let mut plans: Vec<Option<Plan>> =
            mats.iter().map(|m| self.exclusion(m).map(|reason| Plan::Dense { reason })).collect();
        if self.method == Method::Int8 {
            return Ok(plans.into_iter().map(|p| p.unwrap_or(Plan::Int8)).collect());
        }
        if self.method == Method::Auto {
            return Err(Error::Policy(
                "method auto plans from every candidate's measured error: the compression's analysis makes its plans"
                    .into(),
            ));
        }
        if self.method.is_grouped() {
            let grouped = Plan::Grouped { bits: self.bits, group: self.group };
            return Ok(plans.into_iter().map(|p| p.unwrap_or_else(|| grouped.clone())).collect());
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
        if self.budget_unit == BudgetUnit::Bits {
            return self.resolved(mats).replan(mats, spectra, sensitivity, fixed);
        }
        let Some(fraction) = self.budget else { return self.plan_weighted(mats, spectra, sensitivity) };
        let candidates: Vec<usize> = (0..mats.len()).filter(|&i| self.exclusion(&mats[i]).is_none()).collect();
        let total: f64 = candidates.iter().map(|&i| self.dense_cost(&mats[i])).sum();
        let mut left = fraction * total;
        let mut rest = Vec::new();
        for &i in &candidates {
            match fixed.get(i).and_then(|p| p.as_ref()) {
                Some(Plan::LowRank { rank }) => left -= self.cost(&mats[i], *rank),
                Some(Plan::Int8) => left -= self.int8_bytes(mats[i].out, mats[i].inp) as f64,
                Some(&Plan::Grouped { bits, group }) => {
                    left -= Policy::grouped_bytes(mats[i].out, mats[i].inp, bits, group) as f64
                }
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
            BudgetUnit::Bytes | BudgetUnit::Bits => self.low_rank_bytes(m.out, m.inp, r) as f64,
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
            BudgetUnit::Bytes | BudgetUnit::Bits => m.dense_bytes() as f64,
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
            self.budget_mode == BudgetMode::Loss && self.budget_unit != BudgetUnit::Params && self.quant_bits == 8;
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
