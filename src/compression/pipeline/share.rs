//! Work shared: a matrix's job handed to a helper and its result taken back, and the results and spectra of an
//! earlier compression reused.

use super::*;

impl Compressor {
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
    pub(super) fn reused(&mut self, i: usize) -> Result<Option<Factored>> {
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
    pub(super) fn run_job(&mut self, i: usize, read: &dyn Fn(&str) -> Result<Vec<f32>>) -> Result<Factored> {
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
            // a matrix whose statistics are not held yet (a calibration a block at a time) waits for them
            Phase::Factor if self.check_pending() => {
                let t = (0..self.mats.len()).filter(|&i| self.checked.get(i).is_some_and(Option::is_none));
                ("check", t.filter(|&i| !self.waits(i)).collect())
            }
            Phase::Factor if self.policy.method != crate::compression::policy::Method::Refit => {
                let t = (0..self.mats.len()).filter(|&i| self.done[i].is_none());
                ("factor", t.filter(|&i| !self.waits(i)).collect())
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
}
