//! Whole jobs on the GPU, driven to their end: an evaluation and a generation, each a loop of submitted steps
//! (what the command line, the benchmarks and the tests run; the page's worker runs the same steps one call at a
//! time through the session).

use super::metrics::{position_stats, Decoder, EvalRoom};
use super::model::GpuModel;
use super::Gpu;
use crate::evaluation::metrics::Evaluator;
use crate::model::generate::{Generation, SamplingParams};
use crate::Result;

/// Every window of `ev` on the GPU, `progress(done, total)` after each.
pub async fn evaluate(
    gpu: &Gpu,
    original: &GpuModel,
    compressed: Option<&GpuModel>,
    ev: &mut Evaluator,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<()> {
    let longest = ev.next_window().map_or(1, |(_, ids)| ids.len());
    let room = EvalRoom::new(gpu, original, compressed, longest)?;
    let vocab = original.cfg.vocab_size;
    while let Some((_, ids)) = ev.next_window() {
        let bytes = room.submit(gpu, original, compressed, ids)?.read().await?;
        ev.accept_window(&position_stats(&bytes), compressed.is_some(), vocab)?;
        progress(ev.done(), ev.total_windows());
    }
    Ok(())
}

/// A continuation of `prompt` on the GPU, the tokens picked by the CPU's sampler; `token(id)` as each comes.
pub async fn generate(
    gpu: &Gpu,
    model: &GpuModel,
    prompt: &[u32],
    params: SamplingParams,
    token: &mut dyn FnMut(u32) -> Result<()>,
) -> Result<Vec<u32>> {
    let cap = prompt.len().max(1) + params.max_new_tokens;
    let mut g = Generation::for_config(&model.cfg, prompt, params)?;
    let mut d: Option<Decoder> = None;
    while let Some(ids) = g.pending() {
        let ids = ids.to_vec();
        let d = match d.as_mut() {
            Some(d) => d,
            None => d.insert(Decoder::new(gpu, model, ids.len(), cap)?),
        };
        let logits = d.step(gpu, model, &ids)?.read_f32().await?;
        token(g.accept(&logits))?;
    }
    Ok(g.tokens)
}
