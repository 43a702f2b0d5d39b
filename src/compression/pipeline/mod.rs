//! The compression pipeline: plan every weight matrix by the [`Policy`], factor the chosen ones by truncated SVD,
//! store the factors (INT8 or f32), and measure the reconstruction error of what is actually stored.
//!
//! [`Compressor`] works one matrix per [`Compressor::step`], reading each weight from the checkpoint by its byte
//! range, so a page can show progress, stop between matrices, and never hold the dense model twice. Beside it:
//! `share` (matrices handed to helpers, earlier results reused) and `check` (the allocation check).

use crate::compression::gptq::{code_error, gptq_widths};
use crate::compression::matrix::{factors, FactorJob, Factored, LayerReport, ProbeReport, StepInfo};
use crate::compression::policy::auto::Measured;
use crate::compression::policy::{MatrixInfo, Method, Plan, Policy};
use crate::compression::refit::{Refit, RefitTarget, MATRICES_PER_BLOCK};
use crate::compression::sensitivity::{Damage, Probe};
use crate::compression::source::build_compressed;
use crate::compression::svd;
use crate::model::checkpoint::Checkpoint;
use crate::model::config::GptNeoConfig;
use crate::model::gpt_neo::GptNeo;
use crate::model::linear::LinearWeight;
use crate::{Error, Result};
use std::collections::HashMap;

mod check;
mod share;

pub use check::AllocationCheck;

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
    grams: crate::compression::calib::Grams,
    /// The loss allocation's single-matrix probe, and what it measured per matrix.
    probe: Option<Probe>,
    probes: Vec<Option<ProbeReport>>,
    /// Method auto: the error of each matrix's GPTQ codes at every width (bits, error), measured with its probe.
    codes: Vec<Vec<(u8, f64)>>,
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

impl Compressor {
    pub fn new(policy: Policy, mats: Vec<MatrixInfo>) -> Result<Self> {
        policy.validate()?;
        // a budget in bits per parameter is the byte budget it means for these matrices
        let policy = policy.resolved(&mats);
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
            codes: vec![Vec::new(); n],
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
    pub fn set_calibration(&mut self, grams: crate::compression::calib::Grams) {
        self.grams = grams;
    }

    /// The matrices whose calibration statistics the compression reads: those no exclusion keeps as they are.
    pub fn calibration_targets(&self) -> impl Iterator<Item = &MatrixInfo> {
        self.mats.iter().filter(|m| self.policy.exclusion(m).is_none())
    }

    /// A calibrator for this compression: its policy's calibration tokens of `ids`, keeping the statistics of
    /// [`Compressor::calibration_targets`] only.
    pub fn calibrator(&self, ids: &[u32]) -> Result<crate::compression::calib::Calibrator> {
        let p = &self.policy;
        Ok(crate::compression::calib::Calibrator::new(ids, p.calibration_tokens, p.calibration_window)?
            .only(self.calibration_targets().map(|m| m.name.clone())))
    }

    /// Whether the policy needs calibration statistics that have not been given.
    pub fn needs_calibration(&self) -> bool {
        self.policy.method.is_activation_aware() && self.grams.is_empty() && self.calibration_targets().next().is_some()
    }

    /// The first matrix whose calibration statistics the work left needs and this compression does not hold: a
    /// calibration a block at a time gives them ([`Compressor::set_calibration`]) when it is asked. `None` when the
    /// next work needs none it lacks.
    pub fn statistics_wanted(&self) -> Option<usize> {
        if !self.policy.method.is_activation_aware() {
            return None;
        }
        let n = self.mats.len();
        let next = match self.phase {
            Phase::Spectra if self.policy.needs_sensitivity() => {
                self.spectrum_targets().into_iter().find(|&i| self.spectra[i].is_none())
            }
            Phase::Factor if self.check_pending() => {
                (0..n).find(|&i| self.checked.get(i).is_some_and(Option::is_none) && self.reads(i))
            }
            Phase::Factor => (0..n).find(|&i| self.done[i].is_none() && self.reads(i)),
            _ => None,
        };
        next.filter(|&i| !self.grams.contains_key(&self.mats[i].name))
    }

    /// Whether matrix `i`'s work in this phase reads its calibration statistics (once the plans are made).
    fn reads(&self, i: usize) -> bool {
        let reads = |plans: &[Plan]| plans.get(i).is_some_and(|p| self.reads_statistics(p));
        reads(&self.plans) || (self.check_pending() && reads(&self.alt_plans))
    }

    /// Whether matrix `i`'s work in this phase waits for calibration statistics this compression does not hold.
    fn waits(&self, i: usize) -> bool {
        self.reads(i) && !self.grams.contains_key(&self.mats[i].name)
    }

    /// Whether a matrix stored by `plan` is computed from its calibration statistics (see [`Compressor::job`]).
    fn reads_statistics(&self, plan: &Plan) -> bool {
        match (plan, self.policy.method) {
            (Plan::LowRank { .. }, method) => method.is_activation_aware(),
            (Plan::Grouped { .. }, Method::Gptq | Method::Auto) => true,
            _ => false,
        }
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
        self.plans = if self.policy.method == Method::Auto {
            let measured: Vec<Option<Measured>> = self
                .spectra
                .iter()
                .zip(&self.codes)
                .map(|(s, c)| s.as_ref().map(|s| Measured { spectrum: s.clone(), codes: c.clone() }))
                .collect();
            self.policy.plan_auto(&self.mats, &measured, &sensitivity)?
        } else {
            self.policy.plan_weighted(&self.mats, &self.spectra, &sensitivity)?
        };
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
            let auto = self.policy.method == Method::Auto;
            let gram = self.mean_gram(m, if auto { "method auto" } else { "a loss allocation" })?;
            let (s, probe) = self.probe_matrix(i, &w, &gram)?;
            self.probes[i] = probe;
            if auto {
                self.codes[i] = self.code_errors(i, &w, &gram)?;
            }
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

    /// The mean Gram matrix of matrix `m`'s calibration inputs, which `what` needs.
    fn mean_gram(&self, m: &MatrixInfo, what: &str) -> Result<Vec<f64>> {
        self.grams
            .get(&m.name)
            .map(|g| g.mean())
            .ok_or_else(|| Error::tensor(&m.name, format!("has no calibration statistics: calibrate before {what}")))
    }

    /// The loss allocation's look at matrix `i` (weight `w`, its inputs' mean Gram matrix `gram`): its whitened
    /// spectrum, and, for a block's matrix, the damage of its activation-aware factors at the probe rank per unit of
    /// the output error they leave.
    fn probe_matrix(&self, i: usize, w: &[f32], gram: &[f64]) -> Result<(Vec<f64>, Option<ProbeReport>)> {
        let m = &self.mats[i];
        let tag = |e: Error| Error::tensor(&m.name, e.to_string());
        let probe = self.probe.as_ref().ok_or_else(|| Error::msg("the loss allocation's probe has not been set"))?;
        let rank = Policy::rank_for_fraction(m.out, m.inp, self.policy.probe_fraction());
        let (s, all) = svd::whitened_f64(&svd::to_mat(w, m.out, m.inp), gram, rank, self.policy.damp).map_err(tag)?;
        if probe.block_of(&m.name).is_none() {
            // not in a block (an untied head): the allocation gives it the largest sensitivity measured
            return Ok((all, None));
        }
        let damage = probe.damage(&m.name, factors(&s, crate::compression::policy::FactorStorage::F32)).map_err(tag)?;
        let error: f64 = all.iter().skip(rank).map(|x| x * x).sum();
        let sensitivity = if error > 0.0 { damage.kl / error } else { 0.0 };
        Ok((all, Some(ProbeReport { rank, damage, error, sensitivity })))
    }

    /// Method auto's look at matrix `i`'s group-wise codes (weight `w`, its inputs' mean Gram matrix `gram`): the
    /// error GPTQ's codes leave at every width, in the whitened spectrum's units.
    fn code_errors(&self, i: usize, w: &[f32], gram: &[f64]) -> Result<Vec<(u8, f64)>> {
        let m = &self.mats[i];
        let tag = |e: Error| Error::tensor(&m.name, e.to_string());
        let widths = crate::model::grouped::BITS;
        let codes = gptq_widths(w, m.out, m.inp, gram, &widths, self.policy.group, self.policy.damp).map_err(tag)?;
        Ok(widths.iter().zip(&codes).map(|(&bits, q)| (bits, code_error(w, q, gram, self.policy.damp))).collect())
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
        let gram = match plan {
            _ if !self.reads_statistics(plan) => None,
            Plan::LowRank { .. } => Some(self.mean_gram(m, "an activation-aware SVD")?),
            _ => Some(self.mean_gram(m, "GPTQ")?),
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
    /// The weights' own singular values it computed or took ([`Compressor::plain_spectra`]).
    pub plain_spectra: Vec<(String, Vec<f64>)>,
}

impl Compressor {
    /// Build the compressed model once every step is done.
    pub fn finish(mut self, cfg: &GptNeoConfig, ckpt: &Checkpoint) -> Result<Compressed> {
        if !self.is_done() {
            return Err(Error::msg("the compression has not finished"));
        }
        // the calibration statistics, the loss allocation's probe and the spectra an earlier compression lent are not
        // part of the model
        self.release_work();
        drop(std::mem::take(&mut self.known_spectra));
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
        // copied after the measurement, so that what the session keeps of them never counts
        let plain_spectra = self.plain_spectra();
        Ok(Compressed {
            model,
            weights: self.weights,
            reports,
            policy: self.policy,
            resident_bytes,
            allocation_check: self.check,
            reusable,
            plain_spectra,
        })
    }
}

impl Compressor {
    /// Free what only the work needed, once every step is done: the calibration statistics it holds and the probe
    /// (the original's logits and every block's input on the probe tokens).
    pub fn release_work(&mut self) {
        drop(std::mem::take(&mut self.grams));
        drop(self.probe.take());
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
