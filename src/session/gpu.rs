//! The GPU in a session: the models put on it when a job first needs them, the evaluation's windows and the
//! generations' tokens run there, a submitted step at a time. Each step is a plain call that submits the work and
//! returns a [`Pending`] to await, and a second call that takes the bytes read back; nothing of the session is held
//! while the GPU works, so the page's worker awaits between the two.
//!
//! A GPU fault ends the job with the device's sentence; [`Session::gpu_detach`] drops the device, and the next job
//! runs on the CPU.

use super::{EvalBegin, EvalSpec, Evaluation, Session, Which};
use crate::evaluation::metrics::Evaluator;
use crate::gpu::metrics::{position_stats, Decoder, EvalRoom};
use crate::gpu::model::GpuModel;
use crate::gpu::tensor::Uploads;
use crate::gpu::{AdapterFacts, Gpu, Pending};
use crate::session::reports::{GenStep, Progress};
use crate::{Error, Result};

/// The device and what the session has put on it.
pub(super) struct GpuState {
    gpu: Gpu,
    uploads: Uploads,
    original: Option<GpuModel>,
    compressed: Option<GpuModel>,
    room: Option<EvalRoom>,
    decoders: Vec<(Which, Decoder)>,
}

impl GpuState {
    fn model(&self, which: Which) -> Result<&GpuModel> {
        match which {
            Which::Original => self.original.as_ref(),
            Which::Compressed => self.compressed.as_ref(),
        }
        .ok_or_else(|| Error::msg(format!("the {} model is not on the GPU yet", which.name())))
    }
}

impl Session {
    /// Run evaluations and generations on `gpu` from now on.
    pub fn gpu_attach(&mut self, gpu: Gpu) -> AdapterFacts {
        let facts = gpu.facts.clone();
        self.gpu = Some(GpuState {
            gpu,
            uploads: Uploads::default(),
            original: None,
            compressed: None,
            room: None,
            decoders: Vec::new(),
        });
        facts
    }

    /// The adapter in use, if any.
    pub fn gpu_facts(&self) -> Option<&AdapterFacts> {
        self.gpu.as_ref().map(|g| &g.gpu.facts)
    }

    /// Stop using the GPU (after a fault): what it held, for the page to say.
    pub fn gpu_detach(&mut self) -> Option<String> {
        let g = self.gpu.take()?;
        let mut held = Vec::new();
        if g.original.is_some() {
            held.push("the original model");
        }
        if g.compressed.is_some() {
            held.push("the compressed model");
        }
        if !g.decoders.is_empty() {
            held.push("the generations' caches");
        }
        Some(if held.is_empty() { "nothing yet".to_string() } else { held.join(", ") })
    }

    /// Forget the GPU's copy of the models (a new original) or of the compressed one.
    pub(super) fn gpu_forget(&mut self, original_too: bool) {
        if let Some(g) = self.gpu.as_mut() {
            g.compressed = None;
            g.room = None;
            g.decoders.clear();
            if original_too {
                g.original = None;
                g.uploads.clear();
            }
        }
    }

    /// Put on the GPU the models it does not hold yet, calling `progress(done, total, what)` after each block: the
    /// CPU's model when it is in memory (the same weights, so the same figures), else the original read from its
    /// file a tensor at a time.
    pub fn gpu_prepare(&mut self, progress: &mut dyn FnMut(usize, usize, &str)) -> Result<Pending> {
        let g = self.gpu.as_mut().ok_or_else(|| Error::Gpu("no GPU is in use".into()))?;
        let scope = g.gpu.scope("putting the models on the GPU");
        if g.original.is_none() {
            if let Some(b) = &self.bundle {
                let mut report = |d: usize, t: usize| progress(d, t, "original model to the GPU");
                g.original = Some(match &self.original {
                    Some(m) => GpuModel::from_cpu(&g.gpu, m, &mut g.uploads, &mut report)?,
                    None => GpuModel::from_checkpoint(&g.gpu, &b.cfg, &b.ckpt, &mut g.uploads, &mut report)?,
                });
            }
        }
        if g.compressed.is_none() {
            if let Some(c) = &self.compressed {
                let mut report = |d: usize, t: usize| progress(d, t, "compressed model to the GPU");
                g.compressed = Some(GpuModel::from_cpu(&g.gpu, &c.model, &mut g.uploads, &mut report)?);
            }
        }
        g.gpu.check("putting the models on the GPU")?;
        Ok(g.gpu.pending(scope, None))
    }

    /// Start evaluating on the GPU (one part: the GPU takes every window).
    pub fn gpu_eval_begin(&mut self, spec: &EvalSpec) -> Result<EvalBegin> {
        let b = self.bundle.as_ref().ok_or_else(|| Error::msg("the original model is needed: open it first"))?;
        let max = b.cfg.max_position_embeddings;
        if spec.window > max {
            return Err(Error::Policy(format!(
                "the window of {} tokens is longer than the model reads ({max})",
                spec.window
            )));
        }
        let ids = b.tokenizer()?.encode(&spec.text)?;
        let ev = Evaluator::after(&ids, spec.skip, spec.tokens, spec.window, 0, 1)?;
        let g = self.gpu.as_mut().ok_or_else(|| Error::Gpu("no GPU is in use".into()))?;
        let need = spec.window.min(ids.len().saturating_sub(spec.skip)).max(1);
        if g.room.as_ref().is_none_or(|r| r.window() < need) {
            g.room = None;
            let original = g.model(Which::Original)?;
            let room = EvalRoom::new(&g.gpu, original, g.compressed.as_ref(), need)?;
            g.room = Some(room);
        }
        let out = EvalBegin {
            steps: ev.total_windows(),
            all_steps: ev.all_windows(),
            unit: "window",
            text_tokens: ids.len(),
        };
        self.evaluator = Some(Evaluation::InMemory(ev));
        Ok(out)
    }

    /// Submit the next window of the evaluation begun on the GPU, or `None` when it is finished.
    pub fn gpu_eval_submit(&mut self) -> Result<Option<Pending>> {
        let Some(Evaluation::InMemory(ev)) = self.evaluator.as_ref() else {
            return Err(Error::msg("no evaluation was started on the GPU"));
        };
        let Some((_, ids)) = ev.next_window() else { return Ok(None) };
        let g = self.gpu.as_ref().ok_or_else(|| Error::Gpu("no GPU is in use".into()))?;
        let room = g.room.as_ref().ok_or_else(|| Error::msg("no evaluation was started on the GPU"))?;
        let scope = g.gpu.scope("evaluating a window");
        let readback = room.submit(&g.gpu, g.model(Which::Original)?, g.compressed.as_ref(), ids)?;
        Ok(Some(g.gpu.pending(scope, Some(readback))))
    }

    /// Take a window's figures read back.
    pub fn gpu_eval_accept(&mut self, bytes: &[u8]) -> Result<Progress> {
        let compare = self.gpu.as_ref().is_some_and(|g| g.compressed.is_some());
        let vocab = self.bundle.as_ref().map_or(0, |b| b.cfg.vocab_size);
        let Some(Evaluation::InMemory(ev)) = self.evaluator.as_mut() else {
            return Err(Error::msg("no evaluation was started on the GPU"));
        };
        ev.accept_window(&position_stats(bytes), compare, vocab)?;
        Ok(Progress { done: ev.done(), total: ev.total_windows() })
    }

    /// Submit the next step of the generation `which` (begun by [`Session::generate_start`]) on the GPU, or `None`
    /// when it is finished.
    pub fn gpu_generate_submit(&mut self, which: Which) -> Result<Option<Pending>> {
        let gen = self
            .generations
            .iter_mut()
            .find(|(w, _, _)| *w == which)
            .map(|(_, g, _)| g)
            .ok_or_else(|| Error::msg(format!("no generation with the {} model was started", which.name())))?;
        let cap = gen.positions() + gen.pending().map_or(0, |p| p.len()) + gen.remaining();
        let Some(ids) = gen.pending() else { return Ok(None) };
        let g = self.gpu.as_mut().ok_or_else(|| Error::Gpu("no GPU is in use".into()))?;
        let model = match which {
            Which::Original => g.original.as_ref(),
            Which::Compressed => g.compressed.as_ref(),
        }
        .ok_or_else(|| Error::msg(format!("the {} model is not on the GPU yet", which.name())))?;
        let scope = g.gpu.scope("generating a token");
        if !g.decoders.iter().any(|(w, _)| *w == which) {
            g.decoders.push((which, Decoder::new(&g.gpu, model, ids.len(), cap)?));
        }
        let d =
            g.decoders.iter_mut().find(|(w, _)| *w == which).map(|(_, d)| d).ok_or_else(|| Error::msg("no decoder"))?;
        let readback = d.step(&g.gpu, model, ids)?;
        Ok(Some(g.gpu.pending(scope, Some(readback))))
    }

    /// Take the logits read back for the generation `which`: its next token.
    pub fn gpu_generate_accept(&mut self, which: Which, bytes: &[u8]) -> Result<GenStep> {
        let logits: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let pos = self
            .generations
            .iter()
            .position(|(w, _, _)| *w == which)
            .ok_or_else(|| Error::msg(format!("no generation with the {} model was started", which.name())))?;
        let (w, mut gen, mut stream) = self.generations.swap_remove(pos);
        let id = gen.accept(&logits);
        let step = (|| -> Result<GenStep> {
            let tok = self.tokenizer()?;
            Ok(GenStep { id, text: stream.push(tok, id)?, token: tok.token_text(id)?, done: gen.done })
        })();
        if gen.done {
            self.gpu_drop_decoder(which);
        }
        self.generations.push((w, gen, stream));
        step
    }

    /// Forget the GPU's cache of the generation `which` (finished, or started again).
    pub(super) fn gpu_drop_decoder(&mut self, which: Which) {
        if let Some(g) = self.gpu.as_mut() {
            g.decoders.retain(|(w, _)| *w != which);
        }
    }
}

/// Run a pending step to its end on this thread (the command line and tests).
#[cfg(not(target_arch = "wasm32"))]
pub fn wait(p: Pending) -> Result<Vec<u8>> {
    crate::gpu::block_on(p.wait())
}
