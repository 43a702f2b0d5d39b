//! The compression pipeline: plan every weight matrix by the [`Policy`], factor the chosen ones by truncated SVD,
//! store the factors (INT8 or f32), and measure the reconstruction error of what is actually stored.
//!
//! [`Compressor`] works one matrix per [`Compressor::step`], reading each weight from the checkpoint by its byte
//! range, so a page can show progress, stop between matrices, and never hold the dense model twice.

use crate::clock::now;
use crate::compression::policy::{MatrixInfo, Plan, Policy};
use crate::compression::quant::{per_row, per_tensor};
use crate::compression::sensitivity::{Damage, Probe};
use crate::compression::svd::{self, rel_fro_error, Svd};
use crate::model::checkpoint::{embedding_name, Checkpoint};
use crate::model::config::GptNeoConfig;
use crate::model::gpt_neo::{Block, GptNeo};
use crate::model::linear::LinearWeight;
use crate::model::storage::{Factor, QuantScheme};
use crate::model::weights::{CheckpointWeights, Overlay};
use crate::{Error, Result};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;

/// What was done to a weight matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decision {
    /// Truncated SVD factors.
    LowRank,
    /// The dense weight in INT8.
    Int8,
    /// Kept as stored (`reason` says why).
    Dense,
}

/// What happened to one weight matrix.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct LayerReport {
    pub name: String,
    /// [out, in]
    pub shape: [usize; 2],
    pub decision: Decision,
    /// The head tied to the token embedding: its bytes belong to the embedding, not to the layers' totals.
    pub tied: bool,
    pub rank: Option<usize>,
    /// How it is stored: "rank 32, int8 per-row", "int8 per-row", "dense f16".
    pub storage: String,
    /// Why it stayed dense.
    pub reason: Option<String>,
    /// ‖W − U S Vh‖F / ‖W‖F of the truncated SVD, before quantization.
    pub err_svd: Option<f64>,
    /// The same for what is stored (after INT8).
    pub err_stored: Option<f64>,
    /// Fraction of ‖W‖F² kept by the rank (from the spectrum).
    pub energy_kept: Option<f64>,
    /// Activation-aware SVD: the relative error on the calibration inputs, sqrt(tr(ΔW G ΔWᵀ) / tr(W G Wᵀ)), of
    /// what is stored. Refit: the relative error of the stored layer's outputs, on the inputs the compressed model
    /// gives it, against its target (the original layer's outputs on the original's inputs; for out_proj and c_proj
    /// plus the residual stream's drift, see [`crate::compression::refit`]).
    pub err_activations: Option<f64>,
    /// Loss allocation: what compressing this matrix alone at the probe rank did to the logits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<ProbeReport>,
    pub params_before: usize,
    pub params_after: usize,
    pub bytes_before: usize,
    pub bytes_after: usize,
    /// All singular values when they were computed (exact SVD or spectrum pass), for plots.
    pub singular_values: Option<Vec<f32>>,
    pub seconds: f64,
}

impl LayerReport {
    /// A matrix as stored, nothing done to it yet (what a compression step starts from and fills in).
    pub fn stored(m: &MatrixInfo, singular_values: Option<Vec<f32>>) -> Self {
        LayerReport {
            name: m.name.clone(),
            shape: [m.out, m.inp],
            decision: Decision::Dense,
            tied: m.tied,
            rank: None,
            storage: format!("dense {}", m.stored_dtype.to_lowercase()),
            reason: None,
            err_svd: None,
            err_stored: None,
            energy_kept: None,
            err_activations: None,
            probe: None,
            params_before: m.params(),
            params_after: m.params(),
            bytes_before: m.dense_bytes(),
            bytes_after: m.dense_bytes(),
            singular_values,
            seconds: 0.0,
        }
    }

    /// The report of a layer of a compressed checkpoint loaded from its file: its storage as loaded, and the errors
    /// its metadata (`layers`, by weight name) recorded when it was compressed.
    pub fn loaded(l: &crate::model::linear::Linear, layers: Option<&serde_json::Value>) -> Self {
        let (out, inp) = l.weight.shape().unwrap_or((0, 0));
        let meta = layers.and_then(|v| v.get(&l.name));
        let f = |k: &str| meta.and_then(|m| m.get(k)).and_then(|x| x.as_f64());
        let dense = l.weight.is_dense();
        LayerReport {
            name: l.name.clone(),
            shape: [out, inp],
            decision: match &l.weight {
                w if w.is_dense() => Decision::Dense,
                LinearWeight::LowRank { .. } => Decision::LowRank,
                _ => Decision::Int8,
            },
            tied: false,
            rank: l.weight.rank(),
            storage: l.weight.describe(),
            reason: dense.then(|| "kept dense when it was compressed".to_string()),
            err_svd: f("err_svd"),
            err_stored: f("err_stored"),
            energy_kept: None,
            err_activations: f("err_activations"),
            probe: None,
            params_before: out * inp,
            params_after: l.weight.rank().map_or(out * inp, |r| r * (out + inp + 1)),
            bytes_before: 0,
            bytes_after: l.weight.bytes(),
            singular_values: None,
            seconds: 0.0,
        }
    }
}

/// A matrix's sensitivity probe ([`crate::compression::sensitivity`]).
#[derive(Clone, Copy, Debug, Serialize, serde::Deserialize)]
pub struct ProbeReport {
    /// The rank it was probed at (activation-aware factors, f32).
    pub rank: usize,
    pub damage: Damage,
    /// The whitened spectrum's tail beyond that rank: the squared output error per calibration input.
    pub error: f64,
    /// KL per unit of that error: the weight of its components in the loss allocation.
    pub sensitivity: f64,
}

/// The weight matrices the compressor considers, from config.json and the checkpoint's table alone (no weights are
/// read): every linear layer of every block (q, k, v, out_proj, c_fc, c_proj), then the head.
pub fn considered_matrices(cfg: &GptNeoConfig, ckpt: &Checkpoint) -> Result<Vec<MatrixInfo>> {
    let p = crate::model::weights::tensor_prefix(&CheckpointWeights {
        ckpt,
        precision: crate::model::weights::Precision::AsStored,
    })?;
    let h = cfg.hidden_size;
    let mut mats = Vec::new();
    let elem = |name: &str| {
        ckpt.info(name).map_or((4, "F32".to_string()), |i| (i.dtype.bitsize() / 8, format!("{:?}", i.dtype)))
    };
    for i in 0..cfg.num_layers {
        for slot in Block::linear_slots(cfg, &format!("{p}h.{i}")) {
            let (name, out, inp) = (format!("{}.weight", slot.prefix), slot.out, slot.inp);
            let (stored_elem_bytes, stored_dtype) = elem(&name);
            mats.push(MatrixInfo { name, out, inp, stored_elem_bytes, stored_dtype, tied: false });
        }
    }
    let tied = !ckpt.contains("lm_head.weight");
    let head_src = if tied { embedding_name(ckpt) } else { "lm_head.weight".to_string() };
    let (stored_elem_bytes, stored_dtype) = elem(&head_src);
    mats.push(MatrixInfo {
        name: "lm_head.weight".into(),
        out: cfg.vocab_size,
        inp: h,
        stored_elem_bytes,
        stored_dtype,
        tied,
    });
    Ok(mats)
}

enum Phase {
    Spectra,
    Factor,
    Done,
}

/// The compression of one model, advanced a matrix at a time.
pub struct Compressor {
    pub policy: Policy,
    pub mats: Vec<MatrixInfo>,
    spectra: Vec<Option<Vec<f64>>>,
    plans: Vec<Plan>,
    phase: Phase,
    next: usize,
    weights: HashMap<String, LinearWeight>,
    /// Each matrix's report once it is factored (here or elsewhere), by index.
    done: Vec<Option<LayerReport>>,
    live_at_start: usize,
    /// Input statistics per layer, for the activation-aware methods.
    grams: HashMap<String, crate::compression::calib::Gram>,
    /// The loss allocation's single-matrix probe, and what it measured per matrix.
    probe: Option<Probe>,
    probes: Vec<Option<ProbeReport>>,
    /// Method refit: the block matrices have been refitted (by [`crate::compression::refit`]).
    pub(crate) refitted: bool,
    /// The allocation check ([`Policy::checks_allocation`]): the same fraction of each matrix, planned and factored
    /// beside the policy's own ranks, and what measuring both found.
    alt_plans: Vec<Plan>,
    /// Each matrix factored both ways during the check: (the mode's ranks, the same fraction each).
    checked: Vec<Option<(Factored, Factored)>>,
    check: Option<AllocationCheck>,
}

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

/// Progress after a step.
#[derive(Clone, Debug, Serialize)]
pub struct StepInfo {
    /// "spectrum" or "factor"
    pub phase: &'static str,
    pub done: usize,
    pub total: usize,
    pub name: String,
    /// The matrix's index among the considered ones (spectrum and factor steps).
    pub index: Option<usize>,
}

impl Compressor {
    pub fn new(policy: Policy, mats: Vec<MatrixInfo>) -> Result<Self> {
        policy.validate()?;
        // what the linear algebra keeps per thread is reserved before `live_at_start`: it is not the model's
        crate::compression::svd::reserve_scratch();
        let n = mats.len();
        let mut c = Self {
            policy,
            mats,
            spectra: vec![None; n],
            plans: Vec::new(),
            phase: Phase::Spectra,
            next: 0,
            weights: HashMap::new(),
            done: vec![None; n],
            live_at_start: crate::alloc::live_bytes(),
            grams: HashMap::new(),
            probe: None,
            probes: vec![None; n],
            refitted: false,
            alt_plans: Vec::new(),
            checked: Vec::new(),
            check: None,
        };
        if !c.policy.needs_spectra() {
            c.start_factoring()?;
        }
        Ok(c)
    }

    /// Give the calibration statistics the whitened method needs (from [`crate::compression::calib::Calibrator`]).
    pub fn set_calibration(&mut self, grams: HashMap<String, crate::compression::calib::Gram>) {
        self.grams = grams;
    }

    /// Whether the policy needs calibration statistics that have not been given.
    pub fn needs_calibration(&self) -> bool {
        self.policy.method.is_activation_aware() && self.grams.is_empty()
    }

    /// Whether the loss allocation or the allocation check still needs its probe ([`Compressor::set_probe`]).
    pub fn needs_probe(&self) -> bool {
        (self.policy.needs_sensitivity() || self.policy.checks_allocation()) && self.probe.is_none()
    }

    /// Give the loss allocation (and the allocation check) its probe: the original model run over the first
    /// `sensitivity_tokens` calibration tokens.
    pub fn set_probe(&mut self, probe: Probe) {
        self.probe = Some(probe);
    }

    /// Matrix `i`'s plan, once the plans are made.
    pub fn plan(&self, i: usize) -> Option<&Plan> {
        self.plans.get(i)
    }

    /// Whether every matrix's plan is made (the spectrum pass, if any, is over).
    pub fn plans_made(&self) -> bool {
        matches!(self.phase, Phase::Factor | Phase::Done)
    }

    /// Method refit: whether the blocks have been refitted.
    pub fn refitted(&self) -> bool {
        self.refitted
    }

    /// The index of the matrix named `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.mats.iter().position(|m| m.name == name)
    }

    /// Matrices that need a spectrum before ranks can be allocated (not skipped, not excluded).
    fn spectrum_targets(&self) -> Vec<usize> {
        (0..self.mats.len()).filter(|&i| self.policy.exclusion(&self.mats[i]).is_none()).collect()
    }

    /// Steps in all for a model of `blocks` blocks: a spectrum pass (when the policy needs one), one step per matrix
    /// (the refit: one per block and the refinement's steps, then one per matrix outside the blocks), and the
    /// allocation check's (method whitened: its steps store the matrices and one more measures; the refit: a step per
    /// matrix and one).
    pub fn total_steps(&self, blocks: usize) -> usize {
        let spectra = if self.policy.needs_spectra() { self.spectrum_targets().len() } else { 0 };
        let check = match (self.policy.checks_allocation(), self.policy.method) {
            (false, _) => 0,
            (true, crate::compression::policy::Method::Refit) => self.mats.len() + 1,
            (true, _) => 1,
        };
        let matrices = match self.policy.method {
            crate::compression::policy::Method::Refit => {
                let outside = self.mats.len().saturating_sub(crate::compression::refit::MATRICES_PER_BLOCK * blocks);
                crate::compression::refit::Refit::total_steps(&self.policy, blocks) + outside
            }
            _ => self.mats.len(),
        };
        spectra + matrices + check
    }

    /// Method refit with a loss allocation: spend the budget left after the matrices stored so far on the others,
    /// with these matrices' spectra replaced (the refitted targets' whitened spectra).
    pub fn replan(&mut self, spectra: &[(usize, Vec<f64>)]) -> Result<()> {
        let mut sp = self.spectra.clone();
        for (i, s) in spectra {
            if let Some(slot) = sp.get_mut(*i) {
                *slot = Some(s.clone());
            }
        }
        let fixed: Vec<Option<Plan>> =
            self.done.iter().zip(&self.plans).map(|(d, p)| d.as_ref().map(|_| p.clone())).collect();
        let sens = self.sensitivities();
        self.plans = self.policy.replan(&self.mats, &sp, &sens, &fixed)?;
        Ok(())
    }

    /// Each matrix's probed sensitivity (the loss allocation's weights).
    fn sensitivities(&self) -> Vec<Option<f64>> {
        let mut sensitivity: Vec<Option<f64>> = self.probes.iter().map(|p| p.map(|p| p.sensitivity)).collect();
        if self.policy.needs_sensitivity() {
            // a matrix outside the blocks (an untied head) is not probed: weigh it as the most sensitive one
            let most = sensitivity.iter().flatten().fold(0f64, |a, &b| a.max(b));
            for (i, s) in sensitivity.iter_mut().enumerate() {
                if s.is_none() && self.spectra[i].is_some() {
                    *s = Some(most);
                }
            }
        }
        sensitivity
    }

    fn start_factoring(&mut self) -> Result<()> {
        let sensitivity = self.sensitivities();
        self.plans = self.policy.plan_weighted(&self.mats, &self.spectra, &sensitivity)?;
        if self.policy.checks_allocation() {
            self.alt_plans = self.policy.proportional().plan(&self.mats, &self.spectra)?;
            self.checked = vec![None; self.mats.len()];
        }
        self.phase = Phase::Factor;
        self.next = 0;
        Ok(())
    }

    /// One matrix of the spectrum pass (with its probe in a loss allocation); `None`, with the plans made, when the
    /// pass is over.
    pub fn spectrum_step(&mut self, read: &dyn Fn(&str) -> Result<Vec<f32>>) -> Result<Option<StepInfo>> {
        let targets = self.spectrum_targets();
        if self.next >= targets.len() {
            self.start_factoring()?;
            return Ok(None);
        }
        let i = targets[self.next];
        let m = &self.mats[i];
        let w = read(&m.name)?;
        let s = if self.policy.needs_sensitivity() {
            let (s, probe) = self.probe_matrix(i, &w)?;
            self.probes[i] = probe;
            s
        } else {
            svd::singular_values(&w, m.out, m.inp).map_err(|e| Error::tensor(&m.name, e.to_string()))?
        };
        self.spectra[i] = Some(s);
        self.next += 1;
        Ok(Some(StepInfo {
            phase: "spectrum",
            done: self.next,
            total: targets.len(),
            name: m.name.clone(),
            index: Some(i),
        }))
    }

    /// Run the spectrum pass (and the loss allocation's probes) to its end and make the plans.
    pub fn analyse(
        &mut self,
        read: &dyn Fn(&str) -> Result<Vec<f32>>,
        progress: &mut dyn FnMut(&StepInfo),
    ) -> Result<()> {
        while matches!(self.phase, Phase::Spectra) {
            if let Some(info) = self.spectrum_step(read)? {
                progress(&info);
            }
        }
        Ok(())
    }

    /// Do one unit of work; `read(name)` returns a weight as f32, row-major. `None` when everything is done.
    pub fn step(&mut self, read: &dyn Fn(&str) -> Result<Vec<f32>>) -> Result<Option<StepInfo>> {
        match self.phase {
            Phase::Spectra => match self.spectrum_step(read)? {
                Some(info) => Ok(Some(info)),
                None => self.step(read),
            },
            Phase::Factor => {
                if let Some(info) = self.check_step(read)? {
                    return Ok(Some(info));
                }
                if self.policy.method == crate::compression::policy::Method::Refit && !self.refitted {
                    return Err(Error::Policy(
                        "method refit compresses block by block: run the refit before the remaining matrices".into(),
                    ));
                }
                while self.next < self.mats.len() && self.done[self.next].is_some() {
                    self.next += 1;
                }
                if self.next >= self.mats.len() {
                    self.phase = Phase::Done;
                    return Ok(None);
                }
                let i = self.next;
                let f = self.job(i)?.run(read)?;
                self.accept(f)?;
                Ok(Some(StepInfo {
                    phase: "factor",
                    done: self.accepted(),
                    total: self.mats.len(),
                    name: self.mats[i].name.clone(),
                    index: Some(i),
                }))
            }
            Phase::Done => Ok(None),
        }
    }

    /// The loss allocation's look at matrix `i` (weight `w`): its whitened spectrum, and, for a block's matrix, the
    /// damage of its activation-aware factors at the probe rank per unit of the output error they leave.
    fn probe_matrix(&self, i: usize, w: &[f32]) -> Result<(Vec<f64>, Option<ProbeReport>)> {
        let m = &self.mats[i];
        let tag = |e: Error| Error::tensor(&m.name, e.to_string());
        let gram = self.grams.get(&m.name).map(|g| g.mean()).ok_or_else(|| {
            Error::tensor(&m.name, "has no calibration statistics: calibrate before a loss allocation")
        })?;
        let probe = self.probe.as_ref().ok_or_else(|| Error::msg("the loss allocation's probe has not been set"))?;
        let rank = Policy::rank_for_fraction(m.out, m.inp, self.policy.probe_fraction());
        let (s, all) = svd::whitened_f64(&svd::to_mat(w, m.out, m.inp), &gram, rank, self.policy.damp).map_err(tag)?;
        if probe.block_of(&m.name).is_none() {
            // not in a block (an untied head): the allocation gives it the largest sensitivity measured
            return Ok((all, None));
        }
        let damage = probe.damage(&m.name, factors(&s, None)).map_err(tag)?;
        let error: f64 = all.iter().skip(rank).map(|x| x * x).sum();
        let sensitivity = if error > 0.0 { damage.kl / error } else { 0.0 };
        Ok((all, Some(ProbeReport { rank, damage, error, sensitivity })))
    }

    /// Whether the factoring can be shared among workers: every plan is made up front (no spectrum pass) and no
    /// calibration statistics are needed, so each worker needs only the files and the policy.
    pub fn can_split(&self) -> bool {
        !self.policy.needs_spectra() && !self.policy.method.is_activation_aware()
    }

    /// Matrix `i`'s work, to run here or elsewhere (once the plans are made).
    pub fn job(&self, i: usize) -> Result<FactorJob> {
        let plan = self.plans.get(i).cloned().ok_or_else(|| self.no_matrix(i))?;
        self.job_with(i, plan)
    }

    fn no_matrix(&self, i: usize) -> Error {
        Error::msg(format!("matrix {i} is not among the {} this compression considers", self.mats.len()))
    }

    /// Matrix `i` factored by `plan`.
    fn job_with(&self, i: usize, plan: Plan) -> Result<FactorJob> {
        if !matches!(self.phase, Phase::Factor | Phase::Done) {
            return Err(Error::msg("the compression's plans are not made yet"));
        }
        let m = self.mats.get(i).ok_or_else(|| self.no_matrix(i))?;
        let plan = &plan;
        let gram = match (plan, self.policy.method) {
            (Plan::LowRank { .. }, method) if method.is_activation_aware() => {
                Some(self.grams.get(&m.name).map(|g| g.mean()).ok_or_else(|| {
                    Error::tensor(&m.name, "has no calibration statistics: calibrate before an activation-aware SVD")
                })?)
            }
            _ => None,
        };
        Ok(FactorJob {
            index: i,
            matrix: m.clone(),
            plan: plan.clone(),
            policy: self.policy.clone(),
            spectrum: self.spectra[i].clone(),
            gram,
        })
    }

    /// Keep a matrix factored by [`FactorJob::run`], here or in another worker. Each matrix is accepted once.
    pub fn accept(&mut self, f: Factored) -> Result<()> {
        let m =
            self.mats.get(f.index).ok_or_else(|| Error::msg(format!("no matrix {} in this compression", f.index)))?;
        if m.name != f.report.name {
            return Err(Error::tensor(
                &f.report.name,
                format!("was factored as matrix {}, which is {}", f.index, m.name),
            ));
        }
        if self.done[f.index].is_some() {
            return Err(Error::tensor(&m.name, "was factored twice"));
        }
        if let Some(w) = f.weight {
            self.weights.insert(m.name.clone(), w);
        }
        let mut report = f.report;
        report.probe = self.probes[f.index];
        self.done[f.index] = Some(report);
        if self.done.iter().all(Option::is_some) && !self.check_pending() {
            self.phase = Phase::Done;
        }
        Ok(())
    }

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
            let mine = self.job(i)?.run(read)?;
            let same = match &self.alt_plans[i] {
                p if *p == self.plans[i] => mine.clone(),
                p => self.job_with(i, p.clone())?.run(read)?,
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

    /// Replace an accepted matrix's stored weight by its block-level refinement ([`crate::compression::refine`]),
    /// `err_stored` its relative error against the original weight. Its error on the refit's target is not measured
    /// again (the refinement fits the block's output, not the layer's): the report says so.
    pub(crate) fn refined(&mut self, i: usize, weight: LinearWeight, err_stored: f64) -> Result<()> {
        let m = self.mats.get(i).ok_or_else(|| Error::msg(format!("no matrix {i} in this compression")))?;
        let report =
            self.done[i].as_mut().ok_or_else(|| Error::tensor(&m.name, "was refined before it was refitted"))?;
        report.err_stored = Some(err_stored);
        report.err_activations = None;
        report.storage = weight.describe();
        report.bytes_after = weight.bytes();
        report.reason = Some("refined with its block: the error of its outputs alone is not measured".into());
        self.weights.insert(m.name.clone(), weight);
        Ok(())
    }

    /// Matrices factored so far.
    pub fn accepted(&self) -> usize {
        self.done.iter().filter(|d| d.is_some()).count()
    }

    /// Matrix `i`'s report, once accepted.
    pub fn report(&self, i: usize) -> Option<&LayerReport> {
        self.done.get(i).and_then(Option::as_ref)
    }

    /// The compressed weights by tensor name (matrices kept dense are absent).
    pub fn weights(&self) -> &HashMap<String, LinearWeight> {
        &self.weights
    }

    pub fn is_done(&self) -> bool {
        matches!(self.phase, Phase::Done)
    }

    /// Run every step.
    pub fn run(&mut self, read: &dyn Fn(&str) -> Result<Vec<f32>>) -> Result<()> {
        while self.step(read)?.is_some() {}
        Ok(())
    }
}

/// One matrix's work cut loose from its [`Compressor`] ([`Compressor::job`]), so that another thread or worker can do
/// it with its own reader of the same files.
#[derive(Clone, Debug)]
pub struct FactorJob {
    pub index: usize,
    matrix: MatrixInfo,
    plan: Plan,
    policy: Policy,
    spectrum: Option<Vec<f64>>,
    gram: Option<Vec<f64>>,
}

/// A matrix factored: its report and what is stored (none when it stays dense).
#[derive(Clone)]
pub struct Factored {
    pub index: usize,
    pub report: LayerReport,
    pub weight: Option<LinearWeight>,
}

impl FactorJob {
    /// Factor the matrix as planned and measure what is stored; `read(name)` returns it as f32, row-major.
    pub fn run(self, read: &dyn Fn(&str) -> Result<Vec<f32>>) -> Result<Factored> {
        let t0 = now();
        let FactorJob { index, matrix: m, plan, policy, spectrum, gram } = self;
        let mut weight = None;
        let (out, inp) = (m.out, m.inp);
        let spectrum = spectrum.as_ref().map(|s| s.iter().map(|&x| x as f32).collect());
        let mut rep = LayerReport::stored(&m, spectrum);
        let tag = |e: Error| Error::tensor(&m.name, e.to_string());
        match plan {
            Plan::Dense { reason } => {
                rep.reason = Some(reason);
                rep.err_stored = Some(0.0);
            }
            Plan::Int8 => {
                let w = read(&m.name)?;
                let lw = LinearWeight::Matrix(Arc::new(Factor::Int8(per_row(&w, out, inp))));
                rep.decision = Decision::Int8;
                rep.err_stored = Some(svd::stored_error(&w, &lw).map_err(tag)?);
                rep.storage = lw.describe();
                rep.bytes_after = lw.bytes();
                weight = Some(lw);
            }
            Plan::LowRank { rank } => {
                let w = read(&m.name)?;
                let seed = policy.seed ^ fnv(&m.name);
                // The exact path yields every singular value for free; keep them for the report.
                let mut s: Svd = match (&gram, policy.svd) {
                    (Some(g), _) => {
                        rep.singular_values =
                            Some(svd::singular_values(&w, out, inp).map_err(tag)?.iter().map(|&x| x as f32).collect());
                        svd::whitened(&w, out, inp, g, rank, policy.damp).map_err(tag)?
                    }
                    (None, method) => {
                        let (s, all) = svd::truncated_with_spectrum(&w, out, inp, rank, method, seed).map_err(tag)?;
                        if let Some(all) = all {
                            rep.singular_values = Some(all.iter().map(|&x| x as f32).collect());
                        }
                        s
                    }
                };
                s.canonicalize_signs();
                rep.err_svd =
                    Some(if gram.is_some() { rel_fro_error(&w, &s.reconstruct()) } else { s.projection_error(&w) });
                if let Some(sv) = &rep.singular_values {
                    let all: Vec<f64> = sv.iter().map(|&x| x as f64).collect();
                    let total: f64 = all.iter().map(|x| x * x).sum();
                    let kept: f64 = all.iter().take(rank).map(|x| x * x).sum();
                    rep.energy_kept = Some(if total > 0.0 { kept / total } else { 1.0 });
                }
                let lw = factors(&s, policy.factor_quant());
                rep.err_stored = Some(svd::stored_error(&w, &lw).map_err(tag)?);
                if let Some(g) = &gram {
                    let back: Vec<f64> = lw.to_dense_f32()?.iter().map(|&x| x as f64).collect();
                    rep.err_activations = Some(svd::rel_activation_error(&w, &back, out, inp, g));
                }
                rep.decision = Decision::LowRank;
                rep.rank = Some(s.rank());
                rep.storage = lw.describe();
                rep.params_after = s.rank() * (out + inp + 1);
                rep.bytes_after = lw.bytes();
                weight = Some(lw);
            }
        }
        rep.seconds = now() - t0;
        Ok(Factored { index, report: rep, weight })
    }
}

/// Factors of a truncated SVD in the policy's storage. Per-row INT8 keeps S in f32 (a per-row scale of Vh would
/// absorb it anyway); the origin's per-tensor scheme quantizes U, S and Vh each with one scale and zero point,
/// computed in f64 like the Python reference.
pub fn factors(s: &Svd, quant: Option<QuantScheme>) -> LinearWeight {
    let (m, n, r) = (s.m, s.n, s.rank());
    let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    let (u, sv, vh) = match quant {
        None => (
            Factor::F32 { rows: m, cols: r, data: f32s(&s.u) },
            Factor::F32 { rows: 1, cols: r, data: f32s(&s.s) },
            Factor::F32 { rows: r, cols: n, data: f32s(&s.vh) },
        ),
        Some(QuantScheme::PerRow) => (
            Factor::Int8(per_row(&f32s(&s.u), m, r)),
            Factor::F32 { rows: 1, cols: r, data: f32s(&s.s) },
            Factor::Int8(per_row(&f32s(&s.vh), r, n)),
        ),
        Some(QuantScheme::PerTensor) => (
            Factor::Int8(per_tensor(&s.u, m, r)),
            Factor::Int8(per_tensor(&s.s, 1, r)),
            Factor::Int8(per_tensor(&s.vh, r, n)),
        ),
    };
    LinearWeight::LowRank { u: Arc::new(u), s: Arc::new(sv), vh: Arc::new(vh) }
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

/// The compressed model: the checkpoint's dense tensors as stored, the compressed layers as factors.
pub fn build_compressed(
    cfg: &GptNeoConfig,
    ckpt: &Checkpoint,
    replaced: &HashMap<String, LinearWeight>,
) -> Result<GptNeo> {
    GptNeo::load(
        cfg,
        &Overlay { base: CheckpointWeights { ckpt, precision: crate::model::weights::Precision::AsStored }, replaced },
    )
}

/// Read a weight from the checkpoint as f32 (the tied head reads the token embedding).
pub fn reader(ckpt: &Checkpoint) -> impl Fn(&str) -> Result<Vec<f32>> + '_ {
    move |name: &str| {
        let actual =
            if name == "lm_head.weight" && !ckpt.contains(name) { embedding_name(ckpt) } else { name.to_string() };
        ckpt.read(&actual)?.to_f32_vec()
    }
}

/// A finished compression: the compressed model and what was done to each matrix.
pub struct Compressed {
    pub model: GptNeo,
    pub weights: HashMap<String, LinearWeight>,
    pub reports: Vec<LayerReport>,
    pub policy: Policy,
    /// Live heap bytes the compressed model added (measured by [`crate::alloc`] when it is the global allocator).
    pub resident_bytes: usize,
    /// What the allocation check found, when it ran ([`Policy::checks_allocation`]).
    pub allocation_check: Option<AllocationCheck>,
}

impl Compressor {
    /// Build the compressed model once every step is done.
    pub fn finish(mut self, cfg: &GptNeoConfig, ckpt: &Checkpoint) -> Result<Compressed> {
        if !self.is_done() {
            return Err(Error::msg("the compression has not finished"));
        }
        // the calibration statistics and the loss allocation's probe are not part of the model
        drop(std::mem::take(&mut self.grams));
        drop(self.probe.take());
        let reports = std::mem::take(&mut self.done)
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| Error::msg("the compression has not finished"))?;
        let model = build_compressed(cfg, ckpt, &self.weights)?;
        // Everything allocated since the compressor started and still alive: the factors, the dense tensors the
        // compressed model holds as stored, and the (small) layer reports.
        let resident_bytes = crate::alloc::live_bytes().saturating_sub(self.live_at_start);
        Ok(Compressed {
            model,
            weights: self.weights,
            reports,
            policy: self.policy,
            resident_bytes,
            allocation_check: self.check,
        })
    }
}

/// Totals over the layer reports (u64: a model's linear layers pass 4 GiB in f32 from GPT-Neo-1.3B on, which a
/// 32-bit `usize` in wasm would wrap).
#[derive(Clone, Debug, Serialize, Default)]
pub struct CompressionTotals {
    pub layers_total: usize,
    pub layers_compressed: usize,
    pub params_considered: u64,
    pub params_after: u64,
    pub bytes_considered: u64,
    pub bytes_after: u64,
}

pub fn totals(reports: &[LayerReport]) -> CompressionTotals {
    let mut t = CompressionTotals { layers_total: reports.len(), ..Default::default() };
    for r in reports {
        if r.decision != Decision::Dense {
            t.layers_compressed += 1;
        }
        // the tied head is counted as a layer but its bytes belong to the embedding
        if r.tied {
            continue;
        }
        t.params_considered += r.params_before as u64;
        t.params_after += r.params_after as u64;
        t.bytes_considered += r.bytes_before as u64;
        t.bytes_after += r.bytes_after as u64;
    }
    t
}
