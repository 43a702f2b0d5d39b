//! What a policy will do, before it runs: every matrix's decision, rank and stored bytes where the policy fixes them
//! from the shapes alone (a rank, rank rules, a uniform or proportional budget, INT8 only), and a sentence saying what
//! is decided from the spectra when it runs otherwise (an energy threshold, an energy or loss allocation).
//!
//! The bytes are the ones [`crate::compression::pipeline`] stores (INT8 codes and scales, or f32 factors, or the
//! matrix as stored), so a preview of a fixed-rank policy equals the compression's layer reports (tests/session.rs).

use crate::compression::policy::{BudgetMode, BudgetUnit, MatrixInfo, Method, Plan, Policy};
use crate::Result;
use serde::Serialize;

/// One matrix as the policy will store it.
#[derive(Clone, Debug, Serialize)]
pub struct PlannedMatrix {
    pub name: String,
    /// [out, in]
    pub shape: [usize; 2],
    /// `low-rank`, `int8`, `dense`, or `from-spectrum` (its rank is chosen when the compression runs).
    pub decision: &'static str,
    pub rank: Option<usize>,
    /// Why it stays dense.
    pub reason: Option<String>,
    /// The head tied to the token embedding: its bytes are the embedding's, outside the linear layers' totals.
    pub tied: bool,
    pub bytes_before: usize,
    /// `None` while its rank is chosen when the compression runs.
    pub bytes_after: Option<usize>,
}

/// The whole model: the linear layers (what compression can touch) and the rest (embeddings, norms, biases, a tied
/// head), before and after.
#[derive(Clone, Debug, Serialize)]
pub struct Preview {
    pub matrices: Vec<PlannedMatrix>,
    pub layers_compressed: usize,
    /// Sums in u64: past 4 GiB (GPT-Neo-1.3B in f32) a 32-bit `usize` would wrap.
    pub linear_bytes_before: u64,
    /// `None` when some ranks are chosen when it runs ([`Preview::decided_when_run`] says how).
    pub linear_bytes_after: Option<u64>,
    pub linear_params_before: u64,
    pub linear_params_after: Option<u64>,
    /// Tensor bytes outside the linear layers, stored as they are.
    pub bytes_untouched: u64,
    pub total_bytes_before: u64,
    pub total_bytes_after: Option<u64>,
    /// What the compression decides from the spectra, as a sentence.
    pub decided_when_run: Option<String>,
}

/// Whether `policy` fixes every rank from the matrices' shapes (no spectrum needed).
fn ranks_from_shapes(policy: &Policy) -> bool {
    if policy.method == Method::Auto {
        return false;
    }
    policy.method == Method::Int8
        || policy.method.is_grouped()
        || match policy.budget {
            Some(_) => matches!(policy.budget_mode, BudgetMode::Uniform | BudgetMode::Proportional),
            None => policy.energy.is_none(),
        }
}

/// What `policy` does to `mats` of a checkpoint holding `tensor_bytes` bytes of tensors.
pub fn preview(given: &Policy, mats: &[MatrixInfo], tensor_bytes: u64) -> Result<Preview> {
    given.validate()?;
    let policy = &given.resolved(mats);
    let fixed = ranks_from_shapes(policy);
    let plans: Vec<Option<Plan>> = if fixed {
        policy.plan(mats, &[])?.into_iter().map(Some).collect()
    } else {
        // only the exclusions are known: the rest is chosen from the spectra
        mats.iter().map(|m| policy.exclusion(m).map(|reason| Plan::Dense { reason })).collect()
    };
    let mut matrices = Vec::with_capacity(mats.len());
    for (m, plan) in mats.iter().zip(plans) {
        let (decision, rank, reason, bytes_after, params_after) = match plan {
            Some(Plan::LowRank { rank }) => (
                "low-rank",
                Some(rank),
                None,
                Some(policy.low_rank_bytes(m.out, m.inp, rank)),
                Some(rank * (m.out + m.inp + 1)),
            ),
            Some(Plan::Int8) => ("int8", None, None, Some(policy.int8_bytes(m.out, m.inp)), Some(m.params())),
            Some(Plan::Grouped { bits, group }) => {
                ("quantized", None, None, Some(Policy::grouped_bytes(m.out, m.inp, bits, group)), Some(m.params()))
            }
            Some(Plan::Dense { reason }) => ("dense", None, Some(reason), Some(m.dense_bytes()), Some(m.params())),
            None => ("from-spectrum", None, None, None, None),
        };
        matrices.push((
            PlannedMatrix {
                name: m.name.clone(),
                shape: [m.out, m.inp],
                decision,
                rank,
                reason,
                tied: m.tied,
                bytes_before: m.dense_bytes(),
                bytes_after,
            },
            params_after,
        ));
    }
    let linear = || matrices.iter().filter(|(p, _)| !p.tied);
    let linear_bytes_before: u64 = linear().map(|(p, _)| p.bytes_before as u64).sum();
    let linear_bytes_after = linear().map(|(p, _)| p.bytes_after.map(|b| b as u64)).sum::<Option<u64>>();
    let linear_params_before: u64 = linear().map(|(p, _)| (p.shape[0] * p.shape[1]) as u64).sum();
    let linear_params_after = linear().map(|(_, a)| a.map(|a| a as u64)).sum::<Option<u64>>();
    let bytes_untouched = tensor_bytes.saturating_sub(linear_bytes_before);
    let layers_compressed = matrices.iter().filter(|(p, _)| p.decision != "dense").count();
    let decided_when_run = (!fixed).then(|| match (policy.budget, policy.energy) {
        (Some(_), _) => format!(
            "{} chosen when it runs, from {} ({}): {}",
            if policy.method == Method::Auto {
                "each matrix's storage (factors, codes of 2 to 8 bits, or dense) is"
            } else {
                "ranks are"
            },
            if policy.budget_mode == BudgetMode::Loss || policy.method == Method::Auto {
                "the measured loss per byte"
            } else {
                "the spectra's energy"
            },
            if policy.method.is_activation_aware() { "whitened on the calibration text" } else { "of the weights" },
            match (given.budget_unit, given.budget.unwrap_or(1.0)) {
                (BudgetUnit::Params, b) => format!("at most {:.1}% of the linear parameters are kept", 100.0 * b),
                (BudgetUnit::Bytes, b) => format!("at most {:.1}% of the linear layers' bytes are stored", 100.0 * b),
                (BudgetUnit::Bits, b) => format!("at most {b} bits per linear parameter are stored"),
            }
        ),
        (None, Some(e)) => {
            format!(
                "each rank is chosen when it runs, from its spectrum: the smallest keeping {:.1}% of the energy",
                100.0 * e
            )
        }
        (None, None) => "ranks are chosen when it runs".into(),
    });
    Ok(Preview {
        matrices: matrices.into_iter().map(|(p, _)| p).collect(),
        layers_compressed,
        linear_bytes_before,
        linear_bytes_after,
        linear_params_before,
        linear_params_after,
        bytes_untouched,
        total_bytes_before: tensor_bytes,
        total_bytes_after: linear_bytes_after.map(|a| bytes_untouched + a),
        decided_when_run,
    })
}
