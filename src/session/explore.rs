//! The explorer's questions of the session's original: a matrix's spectrum, what a policy will store, each matrix's
//! sensitivity, sweeps of methods × budgets, the smallest budget meeting a quality target.

use super::{Evaluation, Session};
use crate::compression::matrix::totals;
use crate::compression::policy::Policy;
use crate::compression::source::{considered_matrices, reader};
use crate::compression::svd;
use crate::explore::{policy_label, Point, SensitivityRow, SensitivityRun, TargetSearch};
use crate::session::reports::*;
use crate::{Error, Result};

impl Session {
    /// Start searching the smallest budget whose compression with `base` meets `spec`'s target on the calibration
    /// text ([`TargetSearch`]). The page then compresses at each [`TargetState::next_budget`], evaluates on
    /// [`TargetState::split`] of the calibration text, and calls [`Session::target_record`], until no budget is left.
    pub fn target_begin(&mut self, base: &Policy, spec: &TargetSpec) -> Result<TargetState<'_>> {
        if !base.method.is_activation_aware() {
            return Err(Error::Policy(
                "a quality target is measured on the calibration text: choose an activation-aware method".into(),
            ));
        }
        let search = self.target.insert(TargetSearch::new(base, spec.target, spec.tolerance)?);
        Ok(TargetState::of(search, TargetSearch::split(base), None))
    }

    /// Record the compression just made at the search's budget, with the evaluation just run on its split.
    pub fn target_record(&mut self) -> Result<TargetState<'_>> {
        let c = self.compressed.as_ref().ok_or_else(|| Error::msg("there is no compressed model to record"))?;
        let policy = c.policy.as_ref().ok_or_else(|| Error::msg("the compressed model was not made here"))?;
        let report = match self.evaluator.as_ref().ok_or_else(|| Error::msg("no evaluation was run"))? {
            Evaluation::InMemory(ev) => ev.report(),
            Evaluation::Streamed(ev) => ev.report(),
        };
        let split = TargetSearch::split(policy);
        if report.skip_tokens != split.skip || report.window != split.window || report.tokens > split.tokens {
            return Err(Error::msg(format!(
                "the target is measured on the calibration tokens (the first {} in windows of {}), not on tokens {}..{}",
                split.tokens,
                split.window,
                report.skip_tokens,
                report.skip_tokens + report.tokens
            )));
        }
        let search = self.target.as_mut().ok_or_else(|| Error::msg("no target search was started"))?;
        if search.next_budget() != policy.budget {
            return Err(Error::msg(format!(
                "the compression at budget {:?} is not the one the target search asked for ({:?})",
                policy.budget,
                search.next_budget()
            )));
        }
        let point = Point::new(
            &policy_label(policy),
            policy.budget,
            &totals(&c.reports),
            c.model.weight_bytes(),
            &report,
            c.seconds,
        );
        let met = search.record(point)?;
        Ok(TargetState::of(search, split, Some(met)))
    }

    /// Each block matrix compressed alone with `policy` (its method, rank or probe fraction, storage), and what that
    /// did to the logits on the first `sensitivity_tokens` of `text` ([`crate::explore::sensitivity`]).
    pub fn sensitivity(&self, policy: &Policy, text: &str) -> Result<Vec<SensitivityRow>> {
        let (b, o) = self.bundle_and_original()?;
        let ids = b.tokenizer()?.encode(text)?;
        crate::explore::sensitivity(&b.cfg, &b.ckpt, o, &ids, policy, &mut |_| {})
    }

    /// [`Session::sensitivity`] a matrix at a time ([`Session::sensitivity_step`]), this session taking every
    /// `parts`-th block matrix from the `part`-th (other workers take the rest). Calibrates and runs the probe's
    /// windows first; returns how many matrices this part measures.
    pub fn sensitivity_begin(&mut self, policy: &Policy, text: &str, part: usize, parts: usize) -> Result<usize> {
        self.sensitivity = None;
        let (b, o) = self.bundle_and_original()?;
        let ids = b.tokenizer()?.encode(text)?;
        let run = SensitivityRun::new(&b.cfg, &b.ckpt, o, &ids, policy, part, parts)?;
        Ok(self.sensitivity.insert(run).total())
    }

    /// The next matrix of the sensitivity begun here, measured; `None` when the part is done.
    pub fn sensitivity_step(&mut self) -> Result<Option<SensitivityRow>> {
        let b = self.bundle.as_ref().ok_or_else(|| Error::msg("no original model is open"))?;
        let run = self.sensitivity.as_mut().ok_or_else(|| Error::msg("no sensitivity table was begun"))?;
        let row = run.step(&b.ckpt)?;
        if row.is_none() {
            self.sensitivity = None;
        }
        Ok(row)
    }

    /// What `policy` will store, matrix by matrix, before it runs ([`crate::compression::preview`]).
    pub fn preview(&self, policy: &Policy) -> Result<crate::compression::preview::Preview> {
        let b = self.bundle.as_ref().ok_or_else(|| Error::msg("no original model is open"))?;
        crate::compression::preview::preview(policy, &considered_matrices(&b.cfg, &b.ckpt)?, b.tensor_bytes())
    }

    /// Recipes × budgets, each compressed and measured ([`crate::explore::sweep`]); what a page's explorer draws.
    pub fn sweep(&self, spec: &SweepSpec) -> Result<Vec<crate::explore::Point>> {
        let (b, o) = self.bundle_and_original()?;
        let ids = b.tokenizer()?.encode(&spec.text)?;
        let recipes = spec.recipes.iter().map(|r| crate::explore::Recipe::parse(r)).collect::<Result<Vec<_>>>()?;
        let split = crate::explore::Split {
            skip: spec.base.calibration_tokens,
            tokens: spec.eval_tokens,
            window: spec.base.calibration_window,
        };
        crate::explore::sweep(&b.cfg, &b.ckpt, o, &ids, &spec.base, &recipes, &spec.budgets, split, &mut |_| {})
    }

    /// Singular values of one weight matrix of the original (for the spectrum plot).
    pub fn spectrum(&self, name: &str) -> Result<Vec<f32>> {
        if let Some(s) = self.plain_spectra.get(name) {
            return Ok(s.iter().map(|&x| x as f32).collect());
        }
        let b = self.bundle.as_ref().ok_or_else(|| Error::msg("no original model is open"))?;
        let m = considered_matrices(&b.cfg, &b.ckpt)?
            .into_iter()
            .find(|m| m.name == name)
            .ok_or_else(|| Error::tensor(name, "is not a weight matrix of this model"))?;
        let w = reader(&b.ckpt)(name)?;
        Ok(svd::singular_values(&w, m.out, m.inp)?.into_iter().map(|x| x as f32).collect())
    }
}
