//! The compression pipeline: plan every weight matrix by the [`Policy`], factor the chosen ones by truncated SVD,
//! store the factors (INT8 or f32), and measure the reconstruction error of what is actually stored.
//!
//! [`Compressor`] works one matrix per [`Compressor::step`], reading each weight from the checkpoint by its byte
//! range, so a page can show progress, stop between matrices, and never hold the dense model twice.

use crate::compression::matrix::{factors, FactorJob, Factored, LayerReport, ProbeReport, StepInfo};
use crate::compression::policy::{MatrixInfo, Plan, Policy};
use crate::compression::refit::{Refit, RefitTarget, MATRICES_PER_BLOCK};
use crate::compression::sensitivity::{Damage, Probe};
use crate::compression::source::build_compressed;
use crate::compression::svd;
use crate::model::checkpoint::Checkpoint;
use crate::model::config::GptNeoConfig;
use crate::model::gpt_neo::GptNeo;
use crate::model::linear::LinearWeight;
use crate::{Error, Result};
use serde::Serialize;
use std::collections::HashMap;

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
    refitted: bool,
    /// The allocation check ([`Policy::checks_allocation`]): the same fraction of each matrix, planned and factored
    /// beside the policy's own ranks, and what measuring both found.
    alt_plans: Vec<Plan>,
    /// Each matrix factored both ways during the check: (the mode's ranks, the same fraction each).
    checked: Vec<Option<(Factored, Factored)>>,
    check: Option<AllocationCheck>,
    /// Matrices an earlier compression factored, by [`FactorJob::reuse_key`]: a job with the same key takes its
    /// result instead of doing the work again.
    reuse: HashMap<String, Factored>,
    /// The weights' own singular values an earlier compression computed, by matrix name.
    known_spectra: HashMap<String, Vec<f64>>,
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
            reuse: HashMap::new(),
            known_spectra: HashMap::new(),
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
                let outside = self.mats.len().saturating_sub(MATRICES_PER_BLOCK * blocks);
                Refit::total_steps(&self.policy, blocks) + outside
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
        // spectra known already (the weights' own, from an earlier compression) or done elsewhere are not computed
        if !self.policy.needs_sensitivity() {
            for &i in &targets {
                if self.spectra[i].is_none() {
                    self.spectra[i] = self.known_spectra.remove(&self.mats[i].name);
                }
            }
        }
        let Some(i) = targets.iter().copied().find(|&i| self.spectra[i].is_none()) else {
            self.start_factoring()?;
            return Ok(None);
        };
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
        Ok(Some(StepInfo {
            phase: "spectrum",
            done: targets.iter().filter(|&&i| self.spectra[i].is_some()).count(),
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
                let f = self.run_job(i, read)?;
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

    /// Matrices an earlier compression factored ([`Compressor::reusable`]): a matrix planned the same way takes that
    /// result. Every matrix whose plan is made already (no spectrum pass) is taken at once; returns their indices.
    pub fn reuse(&mut self, factored: HashMap<String, Factored>) -> Result<Vec<usize>> {
        self.reuse = factored;
        let mut taken = Vec::new();
        if matches!(self.phase, Phase::Factor) && !self.check_pending() {
            for i in 0..self.mats.len() {
                if let Some(f) = self.reused(i)? {
                    self.accept(f)?;
                    taken.push(i);
                }
            }
        }
        Ok(taken)
    }

    /// Matrix `i`'s result from an earlier compression, when its job is the same.
    fn reused(&mut self, i: usize) -> Result<Option<Factored>> {
        // activation-aware factors depend on the calibration: never taken (and their jobs need its statistics)
        if self.reuse.is_empty()
            || self.policy.method.is_activation_aware()
            || self.done.get(i).is_some_and(Option::is_some)
        {
            return Ok(None);
        }
        // a copy of the factors, made now: the compressed model's memory is measured from the compressor's start (the
        // earlier ones stay as they are until it finishes, so that nothing from before it is freed in between)
        Ok(self.job(i)?.reuse_key().and_then(|k| self.reuse.get(&k)).map(|f| Factored {
            index: i,
            report: f.report.clone(),
            weight: f.weight.as_ref().map(|w| w.deep_copy()),
        }))
    }

    /// Matrix `i` factored as planned, or taken from an earlier compression.
    fn run_job(&mut self, i: usize, read: &dyn Fn(&str) -> Result<Vec<f32>>) -> Result<Factored> {
        match self.reused(i)? {
            Some(f) => Ok(f),
            None => self.job(i)?.run(read),
        }
    }

    /// The weights' own singular values, by matrix name, known from an earlier compression of the same original: the
    /// spectrum pass takes them instead of computing them.
    pub fn know_spectra(&mut self, spectra: HashMap<String, Vec<f64>>) {
        self.known_spectra = spectra;
    }

    /// The weights' own singular values this compression computed or took (none when its spectra are whitened).
    pub fn plain_spectra(&self) -> Vec<(String, Vec<f64>)> {
        if self.policy.needs_sensitivity() {
            return Vec::new();
        }
        self.mats.iter().zip(&self.spectra).filter_map(|(m, s)| Some((m.name.clone(), s.clone()?))).collect()
    }

    /// The work that other workers can do now, by matrix index: the spectrum pass's (the weights' own spectra), the
    /// allocation check's candidates, or the factoring (not the refit's blocks, which follow one another); its
    /// phase's name. `None` when what is left runs here (calibration, probes, the refit, the check's measurement).
    pub fn shareable(&self) -> Option<(&'static str, Vec<usize>)> {
        if self.needs_calibration() || self.needs_probe() {
            return None;
        }
        let todo = match self.phase {
            Phase::Spectra if !self.policy.needs_sensitivity() => {
                let known = |i: &usize| self.known_spectra.contains_key(&self.mats[*i].name);
                let t: Vec<usize> =
                    self.spectrum_targets().into_iter().filter(|&i| self.spectra[i].is_none() && !known(&i)).collect();
                ("spectrum", t)
            }
            Phase::Factor if self.check_pending() => {
                ("check", (0..self.mats.len()).filter(|&i| self.checked.get(i).is_some_and(Option::is_none)).collect())
            }
            Phase::Factor if self.policy.method != crate::compression::policy::Method::Refit => {
                ("factor", (0..self.mats.len()).filter(|&i| self.done[i].is_none()).collect())
            }
            _ => return None,
        };
        Some(todo).filter(|(_, t)| !t.is_empty())
    }

    /// Matrix `i`'s shareable work in the current phase ([`Compressor::shareable`]).
    pub fn work(&self, i: usize) -> Result<crate::compression::work::Work> {
        use crate::compression::work::Work;
        let m = self.mats.get(i).ok_or_else(|| self.no_matrix(i))?;
        Ok(match self.shareable().map(|(phase, _)| phase) {
            Some("spectrum") => Work::Spectrum { index: i, matrix: m.clone() },
            Some("check") => Work::Check(self.job(i)?, self.alt_plans[i].clone()),
            Some("factor") => Work::Factor(self.job(i)?),
            _ => return Err(Error::msg(format!("matrix {} has no work to share now", m.name))),
        })
    }

    /// Keep what another worker did ([`Compressor::work`]); the step it makes.
    pub fn accept_done(&mut self, done: crate::compression::work::Done) -> Result<StepInfo> {
        use crate::compression::work::Done;
        let n = self.mats.len();
        let (phase, index, name) = match done {
            Done::Spectrum { index, values } => {
                let m = self.mats.get(index).ok_or_else(|| self.no_matrix(index))?;
                if !matches!(self.phase, Phase::Spectra) || self.spectra[index].is_some() {
                    return Err(Error::tensor(&m.name, "had its spectrum computed twice"));
                }
                self.spectra[index] = Some(values);
                ("spectrum", index, m.name.clone())
            }
            Done::Checked(pair) => {
                let (a, b) = *pair;
                let i = a.index;
                let name = self.mats.get(i).ok_or_else(|| self.no_matrix(i))?.name.clone();
                match self.checked.get_mut(i) {
                    Some(slot @ None) => *slot = Some((a, b)),
                    _ => return Err(Error::tensor(&name, "was checked twice, or outside the allocation check")),
                }
                ("check", i, name)
            }
            Done::Factored(f) => {
                let (i, name) = (f.index, f.report.name.clone());
                self.accept(*f)?;
                ("factor", i, name)
            }
        };
        let done = match phase {
            "spectrum" => self.spectra.iter().filter(|s| s.is_some()).count(),
            "check" => self.checked.iter().filter(|c| c.is_some()).count(),
            _ => self.accepted(),
        };
        Ok(StepInfo { phase, done, total: n, name, index: Some(index) })
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
        Ok(FactorJob::new(i, m.clone(), plan.clone(), self.policy.clone(), self.spectra[i].clone(), gram))
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

    /// Replace an accepted matrix's stored weight by its block-level refinement ([`crate::compression::refine`]),
    /// `err_stored` its relative error against the original weight. Its error on the refit's target is not measured
    /// again (the refinement fits the block's output, not the layer's): the report says so.
    fn refined(&mut self, i: usize, weight: LinearWeight, err_stored: f64) -> Result<()> {
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
    /// What a later compression may take instead of doing the work again ([`Compressor::reuse`]).
    pub reusable: HashMap<String, Factored>,
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
        let mut reusable = HashMap::new();
        for (i, report) in reports.iter().enumerate().filter(|_| !self.policy.method.is_activation_aware()) {
            if let Some(key) = self.job(i)?.reuse_key() {
                let weight = self.weights.get(&report.name).cloned();
                reusable.insert(key, Factored { index: i, report: report.clone(), weight });
            }
        }
        // Everything allocated since the compressor started and still alive: the factors, the dense tensors the
        // compressed model holds as stored, and the (small) layer reports (not the earlier compression's factors,
        // allocated before it and freed now).
        let resident_bytes = crate::alloc::live_bytes().saturating_sub(self.live_at_start);
        drop(std::mem::take(&mut self.reuse));
        Ok(Compressed {
            model,
            weights: self.weights,
            reports,
            policy: self.policy,
            resident_bytes,
            allocation_check: self.check,
            reusable,
        })
    }
}

/// What the refit needs of the compression it works for: the plans, and the compressor to keep what it stores.
impl RefitTarget for Compressor {
    fn policy(&self) -> &Policy {
        &self.policy
    }
    fn matrices(&self) -> &[MatrixInfo] {
        &self.mats
    }
    fn plan(&self, i: usize) -> Option<&Plan> {
        Compressor::plan(self, i)
    }
    fn replan(&mut self, spectra: &[(usize, Vec<f64>)]) -> Result<()> {
        Compressor::replan(self, spectra)
    }
    fn accept(&mut self, f: Factored) -> Result<()> {
        Compressor::accept(self, f)
    }
    fn accepted(&self) -> usize {
        Compressor::accepted(self)
    }
    fn refined(&mut self, i: usize, weight: LinearWeight, err_stored: f64) -> Result<()> {
        Compressor::refined(self, i, weight, err_stored)
    }
    fn blocks_refitted(&mut self) {
        self.refitted = true;
    }
}
