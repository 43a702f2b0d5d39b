//! Compressing the original one step at a time (calibration, probes, spectra, the allocation check, the refit a block
//! or a refinement step at a time, matrices here or in helper workers), and exporting what it made.

use super::{CompressedSlot, Session, Which};
use crate::compression::calib::{Calibrated, Calibrator};
use crate::compression::format::Export;
use crate::compression::matrix::{totals, StepInfo};
use crate::compression::pipeline::Compressor;
use crate::compression::policy::{Method, Policy};
use crate::compression::refit::Refit;
use crate::compression::sensitivity::Probe;
use crate::compression::source::{considered_matrices, reader};
use crate::compression::work::{decode_done, decode_work, encode_done, encode_work};
use crate::model::tokenizer::strided_windows;
use crate::session::memory::human;
use crate::session::reports::*;
use crate::{Error, Result};

impl Session {
    /// Start compressing the original with `policy`. The activation-aware method reads the first
    /// `calibration_tokens` tokens of `calibration_text` through the original model, which must be loaded.
    pub fn compress_begin(&mut self, policy: Policy, calibration_text: Option<&str>) -> Result<CompressBegin<'_>> {
        self.gpu_forget(false);
        let b = self
            .bundle
            .as_ref()
            .ok_or_else(|| Error::msg("no original model is open: load the demo model or drop a checkpoint first"))?;
        self.compressed = None;
        self.evaluator = None;
        self.generations.retain(|(w, _, _)| *w != Which::Compressed);
        // a compression that did not finish (refused, or stopped) is dropped before this one starts counting the heap
        self.compressor = None;
        self.calibrator = None;
        self.refit = None;
        self.compress_started = crate::clock::now();
        // the calibration text is read before the compressor starts counting the heap: what reading text leaves
        // warm (the tokenizer's cache of words) is the session's, not the compressed model's
        let ids = match (policy.method.is_activation_aware(), calibration_text) {
            (true, Some(text)) => Some(b.tokenizer()?.encode(text)?),
            _ => None,
        };
        let mats = considered_matrices(&b.cfg, &b.ckpt)?;
        // the last calibration's statistics, when this compression would collect the same; otherwise freed before
        // the compressor starts counting the heap
        let targets: Vec<String> = match policy.method.is_activation_aware() {
            true => mats.iter().filter(|m| policy.exclusion(m).is_none()).map(|m| m.name.clone()).collect(),
            false => Vec::new(),
        };
        let kept = match (self.calibrated.take(), &ids) {
            (Some(k), Some(ids)) if k.serves(ids, policy.calibration_tokens, policy.calibration_window, &targets) => {
                Some(k)
            }
            _ => None,
        };
        let mut c = Compressor::new(policy, mats)?;
        // the weights' own spectra an earlier compression of this original computed are not computed again
        c.know_spectra(self.plain_spectra.clone());
        // what the compression before factored the same way is taken, not done again (planned up front: taken now)
        let reused = c.reuse(std::mem::take(&mut self.factor_reuse))?;
        self.calibrator = None;
        self.calibrate_by_stage = false;
        self.calibration_ids = None;
        self.refit = None;
        let mut calibration_tokens = None;
        if let Some(mut k) = kept.filter(|_| c.needs_calibration()) {
            c.set_calibration(k.grams.clone());
            k.fresh = false;
            calibration_tokens = Some(k.read);
            // the probes read the same tokens
            self.calibration_ids = ids.clone();
            self.calibrated = Some(k);
        }
        if c.needs_calibration() {
            if self.original.is_none() {
                return Err(Error::Policy(
                    "activation-aware SVD runs the original model on calibration text, and it is not loaded here"
                        .into(),
                ));
            }
            let ids = ids.ok_or_else(|| Error::msg("activation-aware SVD needs a calibration text"))?;
            let bytes = Calibrator::bytes_for(c.calibration_targets().map(|m| (m.name.as_str(), m.inp)));
            // every layer's statistics at once when they fit (a later compression on the same text takes them), else
            // a block's at a time as the work reaches it (the refit collects states of its own beside them)
            // beside them, the widest matrix's decomposition: GPTQ's on 1.3B's c_proj (n = 8192) measured a peak of
            // seven n × n matrices of f64 and the weight in f64 (the mean statistics, its inverse Hessian's steps,
            // since freed one by one): kept as the bound for every calibrated method
            let work =
                c.calibration_targets().map(|m| 8.0 * (7 * m.inp * m.inp + m.out * m.inp) as f64).fold(0.0, f64::max);
            let what = "the calibration statistics (an n × n matrix of f64 for each calibrated layer's n inputs, and \
                        the widest layer's decomposition beside them)";
            let advice = "skip the widest layers (mlp.c_proj) or choose a method without calibration";
            self.calibrate_by_stage = !self.memory.fits(bytes + work, 0.9) && c.policy.method != Method::Refit;
            match (self.calibrate_by_stage, self.original.as_ref()) {
                (true, Some(o)) => {
                    let largest = largest_stage_bytes(o, c.calibration_targets());
                    let what = format!("{what} of one block, a block at a time (all at once: {})", human(bytes + work));
                    self.memory.check(&what, largest + work, 0.9, advice)?;
                }
                _ => self.memory.check(what, bytes + work, 0.9, advice)?,
            }
            self.calibrator = Some(c.calibrator(&ids)?);
            self.calibration_ids = Some(ids);
        }
        let cal_steps = match (self.calibrator.as_ref(), self.original.as_ref()) {
            // a loss allocation reads every block's statistics twice: for the spectra, then for the factors
            (Some(cal), Some(o)) if self.calibrate_by_stage => {
                cal.total_stages(o) * if c.policy.needs_sensitivity() { 2 } else { 1 }
            }
            (Some(cal), Some(o)) => cal.total_stages(o),
            _ => 0,
        };
        let cal = self.calibrator.as_ref();
        let total_steps = c.total_steps(b.cfg.num_layers) + cal_steps;
        let calibration_tokens = cal.map(|c| c.tokens()).or(calibration_tokens);
        let c = self.compressor.insert(c);
        let todo = (0..c.mats.len()).filter(|i| !reused.contains(i)).collect();
        Ok(CompressBegin { total_steps, matrices: &c.mats, calibration_tokens, can_split: c.can_split(), todo })
    }

    /// The work of the compression begun here that other workers can do now ([`Compressor::shareable`]): a phase's
    /// matrices, each handed out by [`Session::compress_work_out`]; `None` when what is left runs here.
    pub fn compress_shareable(&self) -> Option<Shareable> {
        let c = self.compressor.as_ref()?;
        c.shareable().map(|(phase, todo)| Shareable { phase, todo })
    }

    /// Matrix `index`'s shareable work as bytes, for a helper's [`Session::run_work`] (a helper needs only the same
    /// files open: the work carries its plan, policy, spectrum and calibration statistics).
    pub fn compress_work_out(&self, index: usize) -> Result<Vec<u8>> {
        let c = self.compressor.as_ref().ok_or_else(|| Error::msg("no compression was started"))?;
        encode_work(&c.work(index)?)
    }

    /// A helper's side: do the work [`Session::compress_work_out`] wrote, reading the weights from this session's
    /// open files; the result as bytes for the coordinator's [`Session::compress_accept`].
    pub fn run_work(&self, bytes: Vec<u8>) -> Result<Vec<u8>> {
        let b = self.bundle.as_ref().ok_or_else(|| Error::msg("no original model is open"))?;
        encode_done(&decode_work(bytes)?.run(&reader(&b.ckpt))?)
    }

    /// Keep what another worker did ([`Session::run_work`]).
    pub fn compress_accept(&mut self, bytes: Vec<u8>) -> Result<CompressStep<'_>> {
        let c = self.compressor.as_mut().ok_or_else(|| Error::msg("no compression was started"))?;
        let info = c.accept_done(decode_done(bytes)?)?;
        let layer = if info.phase == "factor" { info.index.and_then(|i| c.report(i)) } else { None };
        Ok(CompressStep { info, layer })
    }

    /// One step of the compression (a calibration stage, a spectrum or a matrix), or `None` when every step is done.
    pub fn compress_step(&mut self) -> Result<Option<CompressStep<'_>>> {
        let b = self.bundle.as_ref().ok_or_else(|| Error::msg("no original model is open"))?;
        let c = self.compressor.as_mut().ok_or_else(|| Error::msg("no compression was started"))?;
        if let Some(cal) = self.calibrator.as_mut().filter(|_| !self.calibrate_by_stage) {
            let o = self.original.as_ref().ok_or_else(|| Error::msg("the original model is not loaded"))?;
            if cal.step(o)? {
                let info = calibration_step(cal, o);
                return Ok(Some(CompressStep { info, layer: None }));
            }
            if let Some(cal) = self.calibrator.take() {
                let read = cal.tokens();
                let grams = cal.finish();
                let p = &c.policy;
                if let Some(ids) = self.calibration_ids.clone() {
                    let key = (ids, p.calibration_tokens, p.calibration_window);
                    self.calibrated = Some(Calibrated::new(key, read, grams.clone()));
                }
                c.set_calibration(grams);
            }
        }
        if let (true, Some(ids)) = (c.needs_probe(), self.calibration_ids.as_ref()) {
            let o = self.original.as_ref().ok_or_else(|| Error::msg("the original model is not loaded"))?;
            let p = &c.policy;
            let tokens = p.sensitivity_tokens.min(p.calibration_tokens).min(ids.len());
            // the original's logits and every block's input on those tokens, in f32
            let cfg = &b.cfg;
            let bytes = 4.0 * tokens as f64 * (cfg.vocab_size + (cfg.num_layers + 1) * cfg.hidden_size) as f64;
            let what =
                if p.needs_sensitivity() { "the loss allocation's probes" } else { "the allocation check's probe" };
            match p.needs_sensitivity() {
                true => self.memory.check(what, bytes, 0.9, "use fewer sensitivity tokens")?,
                false => self
                    .memory
                    .check(what, bytes, 0.9, "use fewer sensitivity tokens or turn the allocation check off")
                    .map_err(Error::for_allocation_check)?,
            }
            if p.checks_allocation() {
                // the mode's ranks and the same fraction of each matrix, both factored before either is kept: each
                // about the budget's share of the considered matrices, a byte per INT8 code, 4.25 bits per INT4 code
                // in groups of 64 or more, four bytes per f32 entry
                let params: usize = c.mats.iter().filter(|m| !m.tied).map(|m| m.params()).sum();
                let per = match p.quant_bits {
                    8 => 1.0,
                    4 => 0.55,
                    _ => 4.0,
                };
                let alt = 2.0 * p.budget.unwrap_or(1.0) * params as f64 * per;
                self.memory
                    .check("the allocation check's two sets of factors", alt, 0.9, "turn the allocation check off")
                    .map_err(Error::for_allocation_check)?;
            }
            c.set_probe(Probe::new(o, ids, tokens, p.calibration_window)?);
        }
        // a block at a time: the spectra (and the plans) first where they read no statistics, then the statistics of
        // the block the work has reached, the last block's freed first
        if self.calibrate_by_stage && !c.plans_made() && c.statistics_wanted().is_none() {
            if let Some(info) = c.spectrum_step(&reader(&b.ckpt))? {
                return Ok(Some(CompressStep { info, layer: None }));
            }
        }
        if let (true, Some(i)) = (self.calibrate_by_stage, c.statistics_wanted()) {
            let o = self.original.as_ref().ok_or_else(|| Error::msg("the original model is not loaded"))?;
            let name = &c.mats[i].name;
            let stage = o.stage_of(name).ok_or_else(|| Error::tensor(name, "is no linear layer of the original"))?;
            c.set_calibration(Default::default());
            let mut cal = match self.calibrator.take() {
                Some(cal) if cal.next_stage() <= stage => cal,
                // a second pass over the blocks (a loss allocation's factors) starts again from the embeddings
                _ => {
                    let ids = self.calibration_ids.as_ref().ok_or_else(|| Error::msg("no calibration text"))?;
                    c.calibrator(ids)?
                }
            };
            cal.collect_only(stage);
            cal.step(o)?;
            if cal.next_stage() == stage + 1 {
                c.set_calibration(cal.take());
            }
            let info = calibration_step(&cal, o);
            self.calibrator = Some(cal);
            return Ok(Some(CompressStep { info, layer: None }));
        }
        // the refit: once the plans are made, one block per step, then the matrices outside the blocks
        if c.policy.method == Method::Refit && !c.plans_made() {
            if let Some(info) = c.spectrum_step(&reader(&b.ckpt))? {
                return Ok(Some(CompressStep { info, layer: None }));
            }
        }
        if c.policy.method == Method::Refit && !c.refitted() && c.plans_made() {
            // the allocation check's factors, before the refit fits its own to the ranks kept
            if let Some(info) = c.check_step(&reader(&b.ckpt))? {
                return Ok(Some(CompressStep { info, layer: None }));
            }
        }
        if c.policy.method == Method::Refit && !c.refitted() {
            let o = self.original.as_ref().ok_or_else(|| Error::msg("the original model is not loaded"))?;
            if self.refit.is_none() {
                let ids =
                    self.calibration_ids.as_ref().ok_or_else(|| Error::msg("the refit needs calibration text"))?;
                // both paths' hidden states, and one block's inputs on both paths (q/k/v, out_proj, c_fc, c_proj)
                // (overlapping windows hold a token once per window it is in)
                let p = &c.policy;
                let windows = strided_windows(ids, p.calibration_tokens, p.calibration_window, p.refit_stride)?;
                let (cfg, rows) = (&b.cfg, windows.iter().map(Vec::len).sum::<usize>() as f64);
                let per_token = (2 * cfg.hidden_size + 2 * (5 * cfg.hidden_size + cfg.intermediate_size())) as f64;
                let mut bytes = 4.0 * rows * per_token;
                if p.refine_steps > 0 {
                    bytes += crate::compression::refine::graph_bytes(cfg, p.calibration_window);
                }
                let advice = if p.refit_stride.is_some() {
                    "use fewer calibration tokens or a larger refit stride"
                } else {
                    "use fewer calibration tokens"
                };
                self.memory.check("the refit's calibration states", bytes, 0.9, advice)?;
                self.refit = Some(Refit::on_windows(o, &windows)?);
            }
            let r = self.refit.as_mut().ok_or_else(|| Error::msg("the refit has not started"))?;
            let mut last = None;
            r.step(c, &mut |i| last = Some(i.clone()))?;
            if let Some(mut info) = last {
                if info.phase != "refine" {
                    info.name = format!("block {}/{} refitted ({})", r.done(), r.total_blocks(), info.name);
                }
                return Ok(Some(CompressStep { info, layer: None }));
            }
        }
        let Some(info) = c.step(&reader(&b.ckpt))? else { return Ok(None) };
        let layer = if info.phase == "factor" { info.index.and_then(|i| c.report(i)) } else { None };
        Ok(Some(CompressStep { info, layer }))
    }

    /// Build the compressed model once every step is done.
    pub fn compress_finish(&mut self) -> Result<Finished> {
        let b = self.bundle.as_ref().ok_or_else(|| Error::msg("no original model is open"))?;
        let c = self.compressor.as_mut().ok_or_else(|| Error::msg("no compression was started"))?;
        if !c.is_done() {
            return Err(Error::msg("the compression has not finished"));
        }
        // what only the compression needed (the refit's states, the calibration's, the probe) is not the model's
        // memory: freed before the model's dense tensors are planned for
        c.release_work();
        self.refit = None;
        self.calibrator = None;
        self.calibration_ids = None;
        // the compressed model holds its factors (already allocated) and the dense tensors as stored
        let dense = b.tensor_bytes()
            - c.mats.iter().filter(|m| c.weights().contains_key(&m.name)).map(|m| m.dense_bytes() as u64).sum::<u64>();
        self.memory.check("the compressed model's dense tensors", dense as f64, 0.9, "skip fewer layers")?;
        let c = self.compressor.take().ok_or_else(|| Error::msg("no compression was started"))?;
        // the calibration's statistics are kept for the next compression while what is free could hold them and the
        // original's tensors again (room for the evaluations and the compression that come between); those measured
        // by this one are not its model's memory
        // (decided once the model's memory is measured: statistics an earlier compression collected, freed before,
        // would be taken off it)
        let room = |k: &Calibrated| k.bytes() as f64 + b.tensor_bytes() as f64;
        let mut done = c.finish(&b.cfg, &b.ckpt)?;
        if let Some(k) = self.calibrated.as_mut().filter(|k| k.fresh) {
            done.resident_bytes = done.resident_bytes.saturating_sub(k.bytes());
            k.fresh = false;
        }
        if self.calibrated.as_ref().is_some_and(|k| !self.memory.fits(room(k), 1.0)) {
            self.calibrated = None;
        }
        self.plain_spectra.extend(std::mem::take(&mut done.plain_spectra));
        let export = Export::new(
            &b.ckpt,
            &b.config_json,
            b.tokenizer_json.as_deref(),
            &done.weights,
            &done.reports,
            &done.policy,
        )?;
        let t = totals(&done.reports);
        let out = Finished {
            layers_total: done.model.linears().len(),
            layers_compressed: done.model.compressed_layers(),
            bytes_untouched: b.tensor_bytes().saturating_sub(t.bytes_considered),
            totals: t,
            bytes_original: b.tensor_bytes(),
            tensor_bytes: export.data_bytes,
            file_bytes: export.file_bytes(),
            resident_bytes: done.resident_bytes,
            allocation_check: done.allocation_check.clone(),
        };
        self.factor_reuse = done.reusable;
        self.gpu_forget(false);
        self.compressed = Some(CompressedSlot {
            model: done.model,
            weights: Some(done.weights),
            reports: done.reports,
            policy: Some(done.policy),
            tensor_bytes: export.data_bytes,
            resident_bytes: done.resident_bytes,
            file_bundle: None,
            seconds: crate::clock::now() - self.compress_started,
        });
        Ok(out)
    }

    /// Write the compressed checkpoint, piece by piece, with config.json and tokenizer.json inside its metadata so
    /// the file alone loads back.
    pub fn export(&self, sink: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
        let b = self.bundle.as_ref().ok_or_else(|| Error::msg("no original model is open"))?;
        let c = self
            .compressed
            .as_ref()
            .ok_or_else(|| Error::msg("there is no compressed model to export: compress first"))?;
        let (Some(weights), Some(policy)) = (&c.weights, &c.policy) else {
            return Err(Error::msg("this compressed model was loaded from a file; it is already exported"));
        };
        let export = Export::new(&b.ckpt, &b.config_json, b.tokenizer_json.as_deref(), weights, &c.reports, policy)?;
        export.write(&b.ckpt, sink)
    }
}

/// The step a calibration has just made: the stage it ran, over how many windows.
fn calibration_step(cal: &Calibrator, o: &crate::model::gpt_neo::GptNeo) -> StepInfo {
    let (done, total, layers) = (cal.next_stage(), cal.total_stages(o), o.blocks().len());
    let stage = match done {
        d if d > layers => "the head's input".to_string(),
        d => format!("block {d}/{layers}"),
    };
    StepInfo {
        phase: "calibrate",
        done,
        total,
        name: format!("calibration, {stage} ({} windows)", cal.total_windows()),
        index: None,
    }
}

/// Bytes of the largest statistics one stage of a calibration of `targets` collects ([`Calibrator::bytes_for`]).
fn largest_stage_bytes<'a>(
    o: &crate::model::gpt_neo::GptNeo,
    targets: impl Iterator<Item = &'a crate::compression::policy::MatrixInfo>,
) -> f64 {
    let mut stages: std::collections::HashMap<usize, Vec<(&str, usize)>> = Default::default();
    for m in targets {
        stages.entry(o.stage_of(&m.name).unwrap_or(usize::MAX)).or_default().push((m.name.as_str(), m.inp));
    }
    stages.into_values().map(Calibrator::bytes_for).fold(0.0, f64::max)
}
