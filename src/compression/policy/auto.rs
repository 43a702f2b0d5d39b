//! Method auto: every matrix stored the way that costs the model least per byte within one byte budget.
//!
//! Each matrix has candidates — activation-aware factors at every rank, GPTQ codes of 2, 3, 4 or 8 bits in groups of
//! the policy's `group`, or the weight as stored — each with the bytes it takes and the error it leaves on the
//! calibration inputs, `tr(ΔW (G + λI) ΔWᵀ)` (for factors the whitened spectrum's tail, for codes measured on the
//! codes GPTQ chose). A candidate's damage is that error times the matrix's sensitivity (the KL its probe caused
//! per unit of error, as the loss allocation weighs ranks). The choice minimises the summed damage within the
//! budget: a multiple-choice knapsack, solved by its Lagrangian (every matrix takes the candidate minimising
//! `damage + μ · bytes`, μ found by bisection so that the total fits) and then filled greedily with what is left.

use crate::compression::policy::rules::{MatrixInfo, Plan, Policy};
use crate::{Error, Result};

/// One way to store a matrix, as the allocation weighs it.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub plan: Plan,
    pub bytes: f64,
    /// `tr(ΔW (G + λI) ΔWᵀ)` on the calibration inputs.
    pub error: f64,
}

/// What the allocation knows of one matrix: its whitened spectrum (descending) and the error of its GPTQ codes at
/// each width measured (bits, error).
#[derive(Clone, Debug, Default)]
pub struct Measured {
    pub spectrum: Vec<f64>,
    pub codes: Vec<(u8, f64)>,
}

impl Policy {
    /// Matrix `m`'s candidates: factors at every rank whose bytes are below the stored weight's, group-wise codes at
    /// every measured width, and the weight as stored (no error).
    pub fn auto_candidates(&self, m: &MatrixInfo, measured: &Measured) -> Vec<Candidate> {
        let dense = m.dense_bytes() as f64;
        let mut out = vec![Candidate { plan: Plan::Dense { reason: String::new() }, bytes: dense, error: 0.0 }];
        // the tail's energy after rank r, for every r, from the smallest singular value up
        let s = &measured.spectrum;
        let mut tail = vec![0f64; s.len() + 1];
        for j in (0..s.len()).rev() {
            tail[j] = tail[j + 1] + s[j] * s[j];
        }
        let ranks = m.out.min(m.inp).min(s.len());
        for (r, &error) in tail.iter().enumerate().take(ranks + 1).skip(1) {
            let bytes = self.low_rank_bytes(m.out, m.inp, r) as f64;
            if bytes >= dense {
                break;
            }
            out.push(Candidate { plan: Plan::LowRank { rank: r }, bytes, error });
        }
        for &(bits, error) in &measured.codes {
            let bytes = Policy::grouped_bytes(m.out, m.inp, bits, self.group) as f64;
            if bytes < dense {
                out.push(Candidate { plan: Plan::Grouped { bits, group: self.group }, bytes, error });
            }
        }
        out
    }

    /// Method auto's plans for `mats` (a byte budget: the policy as [`Policy::resolved`] makes it): matrices an
    /// exclusion keeps dense say why; the others take the candidates of least summed damage that fit. `measured[i]`
    /// and `sensitivity[i]` are required for every matrix not excluded.
    pub fn plan_auto(
        &self,
        mats: &[MatrixInfo],
        measured: &[Option<Measured>],
        sensitivity: &[Option<f64>],
    ) -> Result<Vec<Plan>> {
        let policy = self.resolved(mats);
        let fraction = policy.budget.ok_or_else(|| Error::Policy("method auto needs a budget".into()))?;
        let mut plans: Vec<Option<Plan>> =
            mats.iter().map(|m| policy.exclusion(m).map(|reason| Plan::Dense { reason })).collect();
        let chosen: Vec<usize> = (0..mats.len()).filter(|&i| plans[i].is_none()).collect();
        let mut options: Vec<Vec<Candidate>> = Vec::with_capacity(chosen.len());
        let mut weight: Vec<f64> = Vec::with_capacity(chosen.len());
        for &i in &chosen {
            let m = &mats[i];
            let got = measured.get(i).and_then(Option::as_ref);
            let s = sensitivity.get(i).copied().flatten();
            let (Some(got), Some(s)) = (got, s) else {
                return Err(Error::tensor(&m.name, "has not been measured: method auto measures every matrix first"));
            };
            options.push(policy.auto_candidates(m, got));
            weight.push(s.max(0.0));
        }
        let budget = fraction * chosen.iter().map(|&i| mats[i].dense_bytes() as f64).sum::<f64>();
        let pick = choose(&options, &weight, budget).map_err(|least| {
            let params: f64 = chosen.iter().map(|&i| mats[i].params() as f64).sum();
            Error::Policy(format!(
                "a budget of {:.0} bytes ({:.3} bits per parameter) cannot hold these matrices: their smallest \
                 storage takes {least:.0} bytes ({:.3} bits per parameter)",
                budget,
                8.0 * budget / params.max(1.0),
                8.0 * least / params.max(1.0)
            ))
        })?;
        for ((&i, c), opts) in chosen.iter().zip(pick).zip(&options) {
            plans[i] = Some(match &opts[c].plan {
                Plan::Dense { .. } => Plan::Dense { reason: "method auto keeps it as stored".into() },
                p => p.clone(),
            });
        }
        Ok(plans.into_iter().map(|p| p.unwrap_or(Plan::Dense { reason: "not planned".into() })).collect())
    }
}

/// The index of each matrix's candidate: least `Σ weight · error` with `Σ bytes ≤ budget`; `Err(least bytes)`
/// when even every matrix's smallest candidate does not fit.
fn choose(options: &[Vec<Candidate>], weight: &[f64], budget: f64) -> std::result::Result<Vec<usize>, f64> {
    let damage = |k: usize, c: &Candidate| weight[k] * c.error;
    // every matrix's best candidate at price mu per byte (ties: the smaller)
    let at = |mu: f64| -> Vec<usize> {
        options
            .iter()
            .enumerate()
            .map(|(k, opts)| {
                let cost = |c: &Candidate| damage(k, c) + mu * c.bytes;
                (0..opts.len())
                    .min_by(|&a, &b| {
                        cost(&opts[a]).total_cmp(&cost(&opts[b])).then(opts[a].bytes.total_cmp(&opts[b].bytes))
                    })
                    .unwrap_or(0)
            })
            .collect()
    };
    let spent = |pick: &[usize]| -> f64 { pick.iter().zip(options).map(|(&c, o)| o[c].bytes).sum() };
    let least: Vec<usize> =
        options.iter().map(|o| (0..o.len()).min_by(|&a, &b| o[a].bytes.total_cmp(&o[b].bytes)).unwrap_or(0)).collect();
    if spent(&least) > budget {
        return Err(spent(&least));
    }
    // the least damage if it fits; else bisection on log μ between a price where everything fits and one where it
    // does not
    let free = at(0.0);
    let mut pick = if spent(&free) <= budget {
        free
    } else if spent(&at(60f64.exp())) > budget {
        least
    } else {
        let (mut lo, mut hi) = (-60f64, 60f64);
        for _ in 0..100 {
            let mid = 0.5 * (lo + hi);
            if spent(&at(mid.exp())) <= budget {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        at(hi.exp())
    };
    // what is left, spent on the changes that save the most damage per byte while they fit
    let mut left = budget - spent(&pick);
    loop {
        let mut best: Option<(f64, usize, usize)> = None;
        for (k, opts) in options.iter().enumerate() {
            let now = &opts[pick[k]];
            for (c, o) in opts.iter().enumerate() {
                let (saved, extra) = (damage(k, now) - damage(k, o), o.bytes - now.bytes);
                if saved <= 0.0 || extra > left {
                    continue;
                }
                let gain = if extra <= 0.0 { f64::INFINITY } else { saved / extra };
                if best.is_none_or(|(g, _, _)| gain > g) {
                    best = Some((gain, k, c));
                }
            }
        }
        let Some((_, k, c)) = best else { break };
        left -= options[k][c].bytes - options[k][pick[k]].bytes;
        pick[k] = c;
    }
    Ok(pick)
}
