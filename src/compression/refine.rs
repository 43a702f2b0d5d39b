//! Block-level refinement of the refit's factors (AA-SVD, arXiv 2604.02119): after a block's matrices have been
//! refitted one group at a time in closed form, all six are adjusted together by gradient steps on the error of the
//! block's output.
//!
//! Each closed-form refit fits one layer's outputs; the block's output also passes through the attention's softmax
//! (q and k act only through `q kᵀ`) and the MLP's activation, which no single layer's least squares sees. With the
//! compressed path's inputs `X̂` entering the block and the original block's outputs `Y` on the original path (both on
//! the refit's calibration windows), the refinement minimises
//!
//! `L = mean ‖block(X̂; A_i, B_i) − Y‖²` over the low-rank matrices' factors `W_i ≈ A_i B_i`
//! (`A = U diag(S)`, `B = Vh`), starting from what the refit stored (INT8 factors dequantized),
//!
//! by Adam steps (`refine_steps`; each factor's step `refine_lr` times its root-mean-square entry), on batches of
//! [`BATCH`] windows in turn. Matrices kept dense and the biases and LayerNorms stay as they are. The factors are
//! then stored again in the policy's storage, `S` the product of each component's column and row norms. The rank of
//! each matrix does not change, so neither does the budget.
//!
//! On neo-bard-8l at 50% of the linear parameters (loss allocation, side-by-side windows), 30 steps per block cut
//! each block's output error by 6–12% and the held-out perplexity ratio from ×1.0459 to ×1.0388 (QUALITY.md).
//! Memory: the block's autograd graph on one batch of windows (the attention's `[batch, heads, t, t]` a few times).

use crate::compression::matrix::factors;
use crate::compression::policy::Policy;
use crate::compression::svd::Svd;
use crate::model::gpt_neo::Block;
use crate::model::linear::{Linear, LinearWeight};
use crate::{Error, Result};
use candle_core::{Tensor, Var};
use std::collections::HashMap;

/// Windows per gradient step.
pub const BATCH: usize = 8;

/// Adam's moment decays and its ε.
const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-8;

/// One low-rank matrix being refined: `W ≈ A B`, with Adam's moments and the step scales of A and B.
struct Factors {
    a: Var,
    b: Var,
    moments: [(Tensor, Tensor); 2],
    scale: [f64; 2],
}

/// `block`'s low-rank matrices refined on `inputs` (the compressed path's hidden states entering it, `[1, t, h]`
/// per window) against `targets` (the original block's outputs on the same windows): their names and new weights in
/// the policy's storage. The block itself is not changed. [`Refinement`] runs the same steps one at a time.
pub fn refine_block(
    policy: &Policy,
    block: &Block,
    inputs: &[Tensor],
    targets: &[Tensor],
) -> Result<Vec<(String, LinearWeight)>> {
    let Some(mut r) = Refinement::start(policy, block, inputs, targets)? else { return Ok(Vec::new()) };
    while !r.finished() {
        r.step()?;
    }
    r.finish()
}

/// One block's refinement in progress, a step at a time (the page reports each step; the command line runs them
/// in one call). It holds the block, its factors with their moments, and the batches of windows.
pub struct Refinement {
    policy: Policy,
    block: Block,
    trained: Vec<(String, Factors)>,
    fixed: HashMap<String, Tensor>,
    batches: Vec<(Tensor, Tensor)>,
    done: usize,
}

impl Refinement {
    /// Ready to refine `block`'s low-rank matrices (see [`refine_block`]); `None` when it has none, or the policy
    /// no steps.
    pub fn start(policy: &Policy, block: &Block, inputs: &[Tensor], targets: &[Tensor]) -> Result<Option<Self>> {
        if inputs.len() != targets.len() || inputs.is_empty() {
            return Err(Error::msg(format!(
                "the refinement needs as many target windows as input windows ({} and {})",
                inputs.len(),
                targets.len()
            )));
        }
        if policy.refine_steps == 0 {
            return Ok(None);
        }
        let mut trained: Vec<(String, Factors)> = Vec::new();
        let mut fixed: HashMap<String, Tensor> = HashMap::new();
        for l in block.linears() {
            let (out, inp) = l.weight.shape()?;
            let device = inputs[0].device();
            match &l.weight {
                LinearWeight::LowRank { u, s, vh } => {
                    let r = s.cols();
                    let (mut a, sv) = (u.to_f32(), s.to_f32());
                    for row in a.chunks_exact_mut(r.max(1)) {
                        for (v, k) in row.iter_mut().zip(&sv) {
                            *v *= k;
                        }
                    }
                    let a = Tensor::from_vec(a, (out, r), device)?;
                    let b = Tensor::from_vec(vh.to_f32(), (r, inp), device)?;
                    let moments = [(a.zeros_like()?, a.zeros_like()?), (b.zeros_like()?, b.zeros_like()?)];
                    let scale = [rms(&a)? * policy.refine_lr, rms(&b)? * policy.refine_lr];
                    trained.push((
                        l.name.clone(),
                        Factors { a: Var::from_tensor(&a)?, b: Var::from_tensor(&b)?, moments, scale },
                    ));
                }
                w => {
                    fixed.insert(l.name.clone(), Tensor::from_vec(w.to_dense_f32()?, (out, inp), device)?);
                }
            }
        }
        if trained.is_empty() {
            return Ok(None);
        }
        let batches: Vec<(Tensor, Tensor)> = inputs
            .chunks(BATCH)
            .zip(targets.chunks(BATCH))
            .map(|(x, y)| Ok((Tensor::cat(x, 0)?, Tensor::cat(y, 0)?)))
            .collect::<Result<_>>()?;
        Ok(Some(Self { policy: policy.clone(), block: block.clone(), trained, fixed, batches, done: 0 }))
    }

    /// Steps taken, and in all.
    pub fn progress(&self) -> (usize, usize) {
        (self.done, self.policy.refine_steps)
    }

    pub fn finished(&self) -> bool {
        self.done >= self.policy.refine_steps
    }

    /// One Adam step on the next batch of windows; the block output's mean squared error on it, before the step.
    pub fn step(&mut self) -> Result<f64> {
        if self.finished() {
            return Err(Error::msg("the refinement has taken all its steps"));
        }
        let step = self.done + 1;
        let (x, y) = &self.batches[self.done % self.batches.len()];
        let loss = output_error(&self.block, &self.trained, &self.fixed, x, y)?;
        let grads = loss.backward()?;
        let (c1, c2) = (1.0 - BETA1.powi(step as i32), 1.0 - BETA2.powi(step as i32));
        for (_, f) in self.trained.iter_mut() {
            for (j, v) in [&f.a, &f.b].into_iter().enumerate() {
                let Some(g) = grads.get(v.as_tensor()) else { continue };
                let (m, s2) = &f.moments[j];
                let m = ((m * BETA1)? + (g * (1.0 - BETA1))?)?;
                let s2 = ((s2 * BETA2)? + (g.sqr()? * (1.0 - BETA2))?)?;
                let update = ((&m / c1)? / ((&s2 / c2)?.sqrt()? + EPS)?)?;
                v.set(&(v.as_tensor() - (update * f.scale[j])?)?)?;
                f.moments[j] = (m, s2);
            }
        }
        self.done = step;
        Ok(loss.to_scalar::<f32>()? as f64)
    }

    /// The refined matrices' names and weights in the policy's storage.
    pub fn finish(self) -> Result<Vec<(String, LinearWeight)>> {
        let policy = self.policy;
        self.trained.into_iter().map(|(name, f)| Ok((name, stored(&policy, &f)?))).collect()
    }
}

/// The mean squared error of the block's output with these factors on windows `x` against `y`, as a graph.
fn output_error(
    block: &Block,
    trained: &[(String, Factors)],
    fixed: &HashMap<String, Tensor>,
    x: &Tensor,
    y: &Tensor,
) -> Result<Tensor> {
    let lin = |l: &Linear, x: &Tensor| -> Result<Tensor> {
        let (b, t, inp) = x.dims3()?;
        let rows = x.reshape((b * t, inp))?;
        let out = match trained.iter().find(|(n, _)| *n == l.name) {
            Some((_, f)) => rows.matmul(&f.b.as_tensor().t()?)?.matmul(&f.a.as_tensor().t()?)?,
            None => {
                let w = fixed.get(&l.name).ok_or_else(|| Error::tensor(&l.name, "has no weight to refine with"))?;
                rows.matmul(&w.t()?)?
            }
        };
        let out = match &l.bias {
            Some(bias) => out.broadcast_add(bias)?,
            None => out,
        };
        let n = out.dim(1)?;
        Ok(out.reshape((b, t, n))?)
    };
    Ok((block.forward_differentiable(x, &lin)? - y)?.sqr()?.mean_all()?)
}

/// The refined `A B` in the policy's storage: `U` and `Vh` the columns of A and the rows of B at unit norm, `S` the
/// products of their norms.
fn stored(policy: &Policy, f: &Factors) -> Result<LinearWeight> {
    let (out, r) = f.a.as_tensor().dims2()?;
    let inp = f.b.as_tensor().dim(1)?;
    let a: Vec<f32> = f.a.as_tensor().flatten_all()?.to_vec1()?;
    let b: Vec<f32> = f.b.as_tensor().flatten_all()?.to_vec1()?;
    let mut u = vec![0f64; out * r];
    let mut vh = vec![0f64; r * inp];
    let mut s = vec![0f64; r];
    for k in 0..r {
        let na = (0..out).map(|i| (a[i * r + k] as f64).powi(2)).sum::<f64>().sqrt();
        let nb = (0..inp).map(|j| (b[k * inp + j] as f64).powi(2)).sum::<f64>().sqrt();
        s[k] = na * nb;
        for i in 0..out {
            u[i * r + k] = if na > 0.0 { a[i * r + k] as f64 / na } else { 0.0 };
        }
        for j in 0..inp {
            vh[k * inp + j] = if nb > 0.0 { b[k * inp + j] as f64 / nb } else { 0.0 };
        }
    }
    Ok(factors(&Svd { m: out, n: inp, u, s, vh }, policy.factor_storage()))
}

/// Bytes the refinement's graph holds on one batch of windows of `window` tokens, at most: per token, the attention's
/// scores, masked scores, exponentials and probabilities (`heads × window` each, with their gradients), the MLP's
/// pre-activations and activations and every hidden state of the block (with gradients), in f32.
pub fn graph_bytes(cfg: &crate::model::config::GptNeoConfig, window: usize) -> f64 {
    let per_token = 8 * cfg.num_heads * window + 6 * cfg.intermediate_size() + 24 * cfg.hidden_size;
    4.0 * (BATCH * window * per_token) as f64
}

fn rms(t: &Tensor) -> Result<f64> {
    Ok((t.sqr()?.mean_all()?.to_scalar::<f32>()? as f64).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compression::policy::Method;
    use crate::model::gpt_neo::GptNeo;

    /// A tiny random GPT-Neo (global and local attention), its block 1 with rank-4 factors of its own weights, and
    /// windows through it.
    fn setup() -> (GptNeo, Block, Vec<Tensor>, Vec<Tensor>) {
        use crate::model::checkpoint::{Checkpoint, MemSource, SafetensorsFile};
        let config = r#"{"model_type":"gpt_neo","vocab_size":96,"hidden_size":32,"num_layers":2,"num_heads":4,
               "max_position_embeddings":16,"window_size":8,"attention_types":[[["global","local"],1]]}"#;
        let cfg = crate::model::config::GptNeoConfig::from_json(config).unwrap();
        let synth = crate::model::synth::Synth::new(&cfg, safetensors::Dtype::F32, 3, 0).unwrap();
        let h = synth.header().unwrap();
        let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
        bytes.extend(h);
        synth
            .tensors(&mut |_, b| {
                bytes.extend_from_slice(b);
                Ok(())
            })
            .unwrap();
        let file = SafetensorsFile::open(Box::new(MemSource::new("m", bytes))).unwrap();
        let bundle =
            crate::model::bundle::ModelBundle::from_parts(config, None, Checkpoint::new(vec![file], None).unwrap())
                .unwrap();
        let model = bundle.load_model(false).unwrap();
        // the local block: its window (8) is shorter than the windows (16)
        let original = model.blocks()[1].clone();
        let mut block = original.clone();
        for l in original.linears() {
            let (out, inp) = l.weight.shape().unwrap();
            let w = l.weight.to_dense_f32().unwrap();
            let mut svd = crate::compression::svd::exact(&w, out, inp).unwrap().truncate(4);
            svd.canonicalize_signs();
            block.set_weight(&l.name, factors(&svd, crate::compression::policy::FactorStorage::F32)).unwrap();
        }
        let ids: Vec<Vec<u32>> = (0..3).map(|k| (0..16).map(|i| (i * 7 + k * 31) % 96).collect()).collect();
        let inputs: Vec<Tensor> = ids.iter().map(|w| model.embed(w).unwrap()).collect();
        let targets = inputs.iter().map(|x| original.run(x).unwrap()).collect();
        (model, block, inputs, targets)
    }

    fn error(block: &Block, inputs: &[Tensor], targets: &[Tensor]) -> f64 {
        let x = Tensor::cat(inputs, 0).unwrap();
        let y = Tensor::cat(targets, 0).unwrap();
        (block.run(&x).unwrap() - y).unwrap().sqr().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap() as f64
    }

    #[test]
    fn the_differentiable_forward_is_the_block_forward() {
        let (_, block, inputs, _) = setup();
        let x = Tensor::cat(&inputs, 0).unwrap();
        let plain: Vec<f32> = block.run(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let diff: Vec<f32> = block
            .forward_differentiable(&x, &|l: &Linear, x: &Tensor| l.forward(x))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let worst = plain.iter().zip(&diff).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-4, "largest difference {worst}");
    }

    #[test]
    fn refinement_brings_the_block_output_closer_and_keeps_the_ranks() {
        let (_, mut block, inputs, targets) = setup();
        let before = error(&block, &inputs, &targets);
        let policy =
            Policy { method: Method::Refit, quant_bits: 32, refine_steps: 40, refine_lr: 1e-2, ..Default::default() };
        let refined = refine_block(&policy, &block, &inputs, &targets).unwrap();
        assert_eq!(refined.len(), 6);
        for (name, w) in refined {
            assert_eq!(w.rank(), Some(4), "{name}");
            block.set_weight(&name, w).unwrap();
        }
        let after = error(&block, &inputs, &targets);
        assert!(after < 0.8 * before, "block output error {before} → {after}");
        // nothing to refine without steps
        let none = Policy { refine_steps: 0, ..policy.clone() };
        assert!(refine_block(&none, &block, &inputs, &targets).unwrap().is_empty());
        // finished before any step, the weights come back as they were stored
        let r = Refinement::start(&policy, &block, &inputs, &targets).unwrap().unwrap();
        assert_eq!(r.progress(), (0, 40));
        let same = r.finish().unwrap();
        assert_eq!(same.len(), 6);
        for (name, w) in same {
            let a = block.linear(&name).unwrap().weight.to_dense_f32().unwrap();
            let b = w.to_dense_f32().unwrap();
            let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            assert!(worst < 1e-5, "{name}: {worst}");
        }
    }
}
