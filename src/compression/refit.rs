//! The sequential refit (SVD-LLM's closed-form update, AdaSVD, AA-SVD): compress block by block, each matrix fitted
//! to what the model around it has already become.
//!
//! The calibration windows run through the original model and through the partly compressed one side by side. In
//! block b, for each group of matrices that read the same input (q, k, v; out_proj; c_fc; c_proj), the compressed
//! path's inputs `X̂` (after every compressed matrix before it) and the original's inputs `X` give the rank-r `W'`
//! minimising `‖X̂ W'ᵀ − X Wᵀ‖F`:
//!
//! * the unconstrained solution, pulled toward the original weights by a ridge (`argmin ‖X̂ W*ᵀ − Y‖² / rows +
//!   ρ ‖W* − W‖²`, ρ = `refit_ridge` · mean diagonal of `Ĝ`), is `W* = (Yᵀ X̂ / rows + ρ W) (Ĝ + (λ + ρ) I)⁻¹` with
//!   `Ĝ = X̂ᵀX̂ / rows`. Without the pull (ρ = 0) the fit follows the 4096 calibration tokens too closely: on
//!   neo-bard-8l at 50% of the parameters it measured ×1.082 on held-out text, with ρ = 0.3 ×1.067 (QUALITY.md);
//! * `‖X̂ W'ᵀ − Y‖² = ‖(W' − W*) L‖² + const` with `Ĝ = L Lᵀ`, so the best rank r is the whitened truncation of
//!   `W*` ([`svd::whitened_f64`]): `W' = U Σ (Vᵀ L⁻¹)`.
//!
//! The windows may overlap (`refit_stride` below the window): each of the same calibration tokens is then seen in
//! several contexts, more rows for the same least squares; on neo-bard-8l at 50% (loss allocation) windows every 64
//! tokens measured ×1.0426 against ×1.0469 side by side (QUALITY.md).
//!
//! With the loss allocation, the ranks are chosen again before each group is truncated (`refit_replan`, the
//! default): the budget left after the matrices already stored is spent by the same greedy, with this group's spectra
//! those of its `W*` whitened by `Ĝ` (what truncating it costs on the compressed path) and the later matrices' still
//! those of their original weights. On neo-bard-8l (side-by-side windows) it measured ×3.172 / ×1.559 / ×1.146 /
//! ×1.0458 at 10/20/35/50% against ×4.105 / ×1.614 / ×1.148 / ×1.0467 with the ranks planned before the refit.
//!
//! The factors are stored (INT8 by the policy) before the next group runs, so later matrices fit what is actually
//! stored. Each layer's report gives the relative error of its stored outputs against the original layer's outputs.
//! Memory: one block's inputs on the calibration windows, and two n × n statistics at a time.

use crate::compression::matrix::{factors, Decision, Factored, LayerReport, StepInfo};
use crate::compression::policy::{MatrixInfo, Method, Plan, Policy};
use crate::compression::quant::{grouped, per_row};
use crate::compression::refine::Refinement;
use crate::compression::svd::{self, rel_fro_error};
use crate::model::gpt_neo::{Block, GptNeo};
use crate::model::linear::LinearWeight;
use crate::model::storage::Factor;
use crate::{Error, Result};
use candle_core::Tensor;
use faer::linalg::solvers::Solve;
use faer::Mat;
use std::collections::HashMap;
use std::sync::Arc;

/// Linear matrices per block (q, k, v, out_proj, c_fc, c_proj).
pub const MATRICES_PER_BLOCK: usize = 6;

/// The matrices of a block that read the same input, in the order they run (indices into [`crate::model::gpt_neo::Block::linears`]).
const GROUPS: [&[usize]; 4] = [&[0, 1, 2], &[3], &[4], &[5]];

/// What the refit needs of the compression it works for: its policy and matrices, each matrix's plan (made again on
/// the refitted spectra with the loss allocation), and somewhere to keep what it stores. The pipeline's compressor is
/// one; the refit knows nothing else of it.
pub trait RefitTarget {
    fn policy(&self) -> &Policy;
    fn matrices(&self) -> &[MatrixInfo];
    /// Matrix `i`'s plan, once the plans are made.
    fn plan(&self, i: usize) -> Option<&Plan>;
    /// Spend the budget left after the matrices stored so far on the others, with these matrices' spectra replaced.
    fn replan(&mut self, spectra: &[(usize, Vec<f64>)]) -> Result<()>;
    /// Keep a matrix the refit stored.
    fn accept(&mut self, f: Factored) -> Result<()>;
    /// Matrices kept so far.
    fn accepted(&self) -> usize;
    /// Replace a kept matrix's weight by its refinement, `err_stored` its error against the original weight.
    fn refined(&mut self, i: usize, weight: LinearWeight, err_stored: f64) -> Result<()>;
    /// Every block has been refitted.
    fn blocks_refitted(&mut self);
    /// The index of the matrix named `name`.
    fn index_of(&self, name: &str) -> Option<usize> {
        self.matrices().iter().position(|m| m.name == name)
    }
}

/// The refit of a model's blocks, one block per [`Refit::step`].
pub struct Refit {
    original: GptNeo,
    /// Hidden states entering the next block, per window: the original's and the compressed model's.
    orig: Vec<Tensor>,
    comp: Vec<Tensor>,
    next: usize,
    /// The block refitted last, while its refinement (`refine_steps`) takes its steps, one per [`Refit::step`].
    refining: Option<(Block, Refinement)>,
}

impl Refit {
    /// Start on the first `tokens` of `ids` (the calibration text) in windows of `window` starting every `stride`
    /// tokens ([`crate::model::tokenizer::strided_windows`]).
    pub fn new(original: &GptNeo, ids: &[u32], tokens: usize, window: usize, stride: Option<usize>) -> Result<Self> {
        Self::on_windows(original, &crate::model::tokenizer::strided_windows(ids, tokens, window, stride)?)
    }

    /// Start on these calibration windows.
    pub fn on_windows(original: &GptNeo, windows: &[Vec<u32>]) -> Result<Self> {
        let orig = windows.iter().map(|w| original.embed(w)).collect::<Result<Vec<_>>>()?;
        Ok(Self { original: original.clone(), comp: orig.clone(), orig, next: 0, refining: None })
    }

    pub fn total_blocks(&self) -> usize {
        self.original.blocks().len()
    }

    /// Blocks refitted (a block being refined counts).
    pub fn done(&self) -> usize {
        self.next + self.refining.is_some() as usize
    }

    /// Steps in all for `blocks` blocks: one refit per block, and the refinement's steps after each.
    pub fn total_steps(policy: &Policy, blocks: usize) -> usize {
        blocks * (1 + policy.refine_steps)
    }

    /// Refit the next block's matrices and hand them to `c` (accepted as if factored), or, with `refine_steps`, take
    /// the next step of the refinement of the block refitted last; `false` when every block is done. `c` must have
    /// made its plans (activation-aware method, calibration given).
    pub fn step(&mut self, c: &mut dyn RefitTarget, progress: &mut dyn FnMut(&StepInfo)) -> Result<bool> {
        let (block, blocks) = (self.next + 1, self.total_blocks());
        if let Some((_, r)) = self.refining.as_mut() {
            let loss = r.step()?;
            let (done, total) = r.progress();
            progress(&StepInfo {
                phase: "refine",
                done,
                total,
                name: format!("block {block}/{blocks}, step {done}/{total}, output error {loss:.3e}"),
                index: None,
            });
            if r.finished() {
                let (mut cb, r) = self.refining.take().ok_or_else(|| Error::msg("the refinement has ended"))?;
                self.store_refined(c, &mut cb, r)?;
                self.block_done(c, &cb)?;
            }
            return Ok(true);
        }
        let Some(ob) = self.original.blocks().get(self.next) else {
            c.blocks_refitted();
            return Ok(false);
        };
        let names: Vec<String> = ob.linears().iter().map(|l| l.name.clone()).collect();
        // the original path: each layer's input, per window
        let mut xs: HashMap<String, Vec<Tensor>> = HashMap::new();
        let orig_in: Vec<Tensor> = self.orig.iter().map(rows).collect::<Result<_>>()?;
        for h in self.orig.iter_mut() {
            *h = ob.run_observed(h, &mut |name, x| {
                xs.entry(name.to_string()).or_default().push(x.clone());
                Ok(())
            })?;
        }
        let orig_out: Vec<Tensor> = self.orig.iter().map(rows).collect::<Result<_>>()?;
        let comp_in: Vec<Tensor> = self.comp.iter().map(rows).collect::<Result<_>>()?;
        let mut cb = ob.clone();
        let p = c.policy();
        let replan =
            p.refit_replan && p.budget.is_some() && p.budget_mode == crate::compression::policy::BudgetMode::Loss;
        for group in GROUPS {
            let wanted: Vec<&str> = group.iter().map(|&k| names[k].as_str()).collect();
            let mut xh: HashMap<String, Vec<Tensor>> = HashMap::new();
            let mut comp_out = Vec::with_capacity(self.comp.len());
            for h in &self.comp {
                comp_out.push(rows(&cb.run_observed(h, &mut |name, x| {
                    if wanted.contains(&name) {
                        xh.entry(name.to_string()).or_default().push(x.clone());
                    }
                    Ok(())
                })?)?);
            }
            let drift = Drift { orig_in: &orig_in, comp_in: &comp_in, orig_out: &orig_out, comp_out: &comp_out };
            let mut work = Vec::with_capacity(wanted.len());
            for &name in &wanted {
                let i = c.index_of(name).ok_or_else(|| Error::tensor(name, "is not among the compressed matrices"))?;
                let original = ob.linear(name).ok_or_else(|| Error::tensor(name, "is not in its block"))?;
                let (x, x_hat) = match (xs.get(name), xh.get(name)) {
                    (Some(x), Some(x_hat)) => (x, x_hat),
                    _ => return Err(Error::tensor(name, "saw no calibration input")),
                };
                // replanning needs the group's refitted spectra before any of it is truncated; otherwise each
                // matrix is solved when it is refitted, one at a time (one target held at a time)
                let solved = if replan && c.policy().exclusion(&c.matrices()[i]).is_none() {
                    let target = drift.target(group, &original.weight, x, x_hat)?;
                    Some((solve(c, i, &original.weight, &target, x_hat)?, target))
                } else {
                    None
                };
                work.push((name, i, original, x, x_hat, solved));
            }
            if replan {
                let mut spectra: Vec<(usize, Vec<f64>)> = Vec::new();
                for (_, i, _, _, _, solved) in &work {
                    if let Some((s, _)) = solved {
                        spectra.push((*i, s.spectrum.clone()));
                    }
                }
                c.replan(&spectra)?;
            }
            for (name, i, original, x, x_hat, solved) in work {
                let plan = c.plan(i).cloned().ok_or_else(|| Error::msg("the compression's plans are not made yet"))?;
                let (solved, target) = match solved {
                    Some((s, t)) => (Some(s), t),
                    None => (None, drift.target(group, &original.weight, x, x_hat)?),
                };
                let f = refit_one(c, i, &plan, &original.weight, &target, x_hat, solved)?;
                if let Some(w) = &f.weight {
                    cb.set_weight(name, w.clone())?;
                }
                c.accept(f)?;
                progress(&StepInfo {
                    phase: "refit",
                    done: c.accepted(),
                    total: c.matrices().len(),
                    name: name.to_string(),
                    index: Some(i),
                });
            }
        }
        // the block's factors, all six matrices at once, against the original block's outputs, one step per call
        match Refinement::start(c.policy(), &cb, &self.comp, &self.orig)? {
            Some(r) => self.refining = Some((cb, r)),
            None => self.block_done(c, &cb)?,
        }
        Ok(true)
    }

    /// The refined factors stored in the block and handed to `c`, with the error of each against the original.
    fn store_refined(&self, c: &mut dyn RefitTarget, cb: &mut Block, r: Refinement) -> Result<()> {
        let ob = self.original.blocks().get(self.next).ok_or_else(|| Error::msg("no block is being refined"))?;
        for (name, w) in r.finish()? {
            let i = c.index_of(&name).ok_or_else(|| Error::tensor(&name, "is not among the compressed matrices"))?;
            let original = ob.linear(&name).ok_or_else(|| Error::tensor(&name, "is not in its block"))?;
            let err = svd::stored_error(&original.weight.to_dense_f32()?, &w)?;
            cb.set_weight(&name, w.clone())?;
            c.refined(i, w, err)?;
        }
        Ok(())
    }

    /// The compressed path carried through the finished block `cb`, as the compressor stores it.
    fn block_done(&mut self, c: &mut dyn RefitTarget, cb: &Block) -> Result<()> {
        for h in self.comp.iter_mut() {
            *h = cb.run(h)?;
        }
        self.next += 1;
        if self.next == self.total_blocks() {
            c.blocks_refitted();
        }
        Ok(())
    }
}

/// A block's hidden states on both paths, per window (`[rows, h]`): entering it, and after the group being refitted
/// with everything before it compressed.
struct Drift<'a> {
    orig_in: &'a [Tensor],
    comp_in: &'a [Tensor],
    orig_out: &'a [Tensor],
    comp_out: &'a [Tensor],
}

impl Drift<'_> {
    /// What a layer's outputs should be: the original layer's on the original's inputs `x`; for the two layers that
    /// write into the residual stream (out_proj, c_proj), also what the stream has drifted by, so that the block's
    /// output, not only the layer's, comes back to the original's.
    fn target(&self, group: &[usize], weight: &LinearWeight, x: &[Tensor], x_hat: &[Tensor]) -> Result<Vec<Tensor>> {
        let lin = crate::model::linear::Linear { name: String::new(), weight: weight.clone(), bias: None };
        let plain = |xs: &[Tensor]| -> Result<Vec<Tensor>> { xs.iter().map(|x| lin.forward(x)).collect() };
        let plus = |ys: Vec<Tensor>, a: &[Tensor], b: &[Tensor]| -> Result<Vec<Tensor>> {
            ys.iter().zip(a.iter().zip(b)).map(|(y, (a, b))| Ok((y + (a - b)?)?)).collect()
        };
        match group {
            [3] => plus(plain(x)?, self.orig_in, self.comp_in),
            [5] => plus(plain(x_hat)?, self.orig_out, self.comp_out),
            _ => plain(x),
        }
    }
}

/// Run every block's refit on the compressor's calibration text.
pub fn refit_all(
    c: &mut dyn RefitTarget,
    original: &GptNeo,
    ids: &[u32],
    progress: &mut dyn FnMut(&StepInfo),
) -> Result<()> {
    if c.policy().method != Method::Refit {
        return Err(Error::Policy("the refit is the method refit's".into()));
    }
    let p = c.policy();
    let mut r = Refit::new(original, ids, p.calibration_tokens, p.calibration_window, p.refit_stride)?;
    while r.step(c, progress)? {}
    Ok(())
}

/// An error about matrix `name`.
fn tag(name: &str, e: Error) -> Error {
    Error::tensor(name, e.to_string())
}

/// `[1, t, h]` as `[t, h]`.
fn rows(x: &Tensor) -> Result<Tensor> {
    let h = x.dim(candle_core::D::Minus1)?;
    Ok(x.reshape(((), h))?)
}

/// `Σ aᵀ b` over the windows, n × n in f64 (`a`, `b`: `[rows, n]` per window).
fn cross(a: &[Tensor], b: &[Tensor]) -> Result<(Vec<f64>, usize)> {
    let n = a.first().map(|t| t.dim(1)).transpose()?.unwrap_or(0);
    let k = b.first().map(|t| t.dim(1)).transpose()?.unwrap_or(0);
    let mut acc = vec![0f64; n * k];
    let mut rows = 0;
    for (x, y) in a.iter().zip(b) {
        let p: Vec<f32> = x.t()?.contiguous()?.matmul(y)?.flatten_all()?.to_vec1()?;
        for (s, v) in acc.iter_mut().zip(p) {
            *s += v as f64;
        }
        rows += x.dim(0)?;
    }
    Ok((acc, rows))
}

/// Matrix `i` refitted as `plan` says: the rank-r `W'` whose outputs on the compressed path's inputs `x_hat` come
/// closest to `target` (`[rows, out]` per window).
fn refit_one(
    c: &dyn RefitTarget,
    i: usize,
    plan: &Plan,
    weight: &LinearWeight,
    target: &[Tensor],
    x_hat: &[Tensor],
    solved: Option<Solved>,
) -> Result<Factored> {
    let t0 = crate::clock::now();
    let m = c.matrices()[i].clone();
    let (out, inp) = (m.out, m.inp);
    let w = weight.to_dense_f32()?;
    let mut rep = LayerReport::stored(&m, None);
    let stored = match plan {
        Plan::Dense { reason } => {
            rep.reason = Some(reason.clone());
            rep.err_stored = Some(0.0);
            None
        }
        Plan::Int8 => {
            let lw = LinearWeight::Matrix(Arc::new(Factor::Int8(per_row(&w, out, inp))));
            rep.decision = Decision::Int8;
            Some(lw)
        }
        &Plan::Grouped { bits, group } => {
            let lw = LinearWeight::Matrix(Arc::new(Factor::Grouped(grouped(&w, out, inp, bits, group))));
            rep.decision = Decision::Quantized;
            Some(lw)
        }
        Plan::LowRank { rank } => {
            let Solved { svd: full, spectrum: all } = match solved {
                Some(s) => s,
                None => solve(c, i, weight, target, x_hat)?,
            };
            let mut s = full.truncate(*rank);
            s.canonicalize_signs();
            rep.err_svd = Some(rel_fro_error(&w, &s.reconstruct()));
            let total: f64 = all.iter().map(|v| v * v).sum();
            let kept: f64 = all.iter().take(*rank).map(|v| v * v).sum();
            rep.energy_kept = Some(if total > 0.0 { kept / total } else { 1.0 });
            rep.decision = Decision::LowRank;
            rep.rank = Some(s.rank());
            rep.params_after = s.rank() * (out + inp + 1);
            Some(factors(&s, c.policy().factor_storage()))
        }
    };
    if let Some(lw) = &stored {
        rep.err_stored = Some(svd::stored_error(&w, lw)?);
        rep.err_activations = Some(output_error(lw, target, x_hat)?);
        rep.storage = lw.describe();
        rep.bytes_after = lw.bytes();
    }
    rep.seconds = crate::clock::now() - t0;
    Ok(Factored { index: i, report: rep, weight: stored })
}

/// A matrix's refit before its rank is chosen: the whitened SVD of `W*` in full (`W* L = U Σ Vᵀ`, `Ĝ = L Lᵀ`) and its
/// spectrum. [`svd::whitened_f64`] decomposes in full whatever the rank, so computing it once here and
/// truncating it costs what truncating at the rank directly would, and replanning reads the spectrum for free.
pub(crate) struct Solved {
    svd: svd::Svd,
    spectrum: Vec<f64>,
}

/// Matrix `i` refitted before truncation: `W*`, the unconstrained least squares toward `target` on the compressed
/// path's inputs, and its whitened SVD by their statistics `Ĝ`.
fn solve(c: &dyn RefitTarget, i: usize, weight: &LinearWeight, target: &[Tensor], x_hat: &[Tensor]) -> Result<Solved> {
    let m = &c.matrices()[i];
    let (out, inp) = (m.out, m.inp);
    let w = weight.to_dense_f32()?;
    let (g, rows) = cross(x_hat, x_hat)?;
    let (cy, _) = cross(x_hat, target)?;
    let rows = rows.max(1) as f64;
    let g: Vec<f64> = g.iter().map(|v| v / rows).collect();
    // W* = (Yᵀ X̂ + ρ W) (Ĝ + (λ + ρ) I)⁻¹, i.e. (Ĝ + (λ + ρ) I) W*ᵀ = X̂ᵀ Y + ρ Wᵀ
    let n = inp;
    let mean_diag = (0..n).map(|k| g[k * n + k]).sum::<f64>() / n.max(1) as f64;
    let lambda = c.policy().damp * mean_diag.max(f64::MIN_POSITIVE);
    let rho = c.policy().refit_ridge * mean_diag;
    let gd = Mat::from_fn(n, n, |a, b| g[a * n + b] + if a == b { lambda + rho } else { 0.0 });
    let rhs = Mat::from_fn(n, out, |a, b| cy[a * out + b] / rows + rho * w[b * inp + a] as f64);
    let llt = gd.llt(faer::Side::Lower).map_err(|e| {
        tag(
            &m.name,
            Error::Numeric(format!("the compressed path's input statistics are not positive definite ({e:?})")),
        )
    })?;
    let t = llt.solve(&rhs).transpose().to_owned();
    let (svd, spectrum) = svd::whitened_f64(&t, &g, out.min(inp), c.policy().damp).map_err(|e| tag(&m.name, e))?;
    Ok(Solved { svd, spectrum })
}

/// `‖X̂ W'ᵀ − Y‖F / ‖Y‖F` over the windows (biases cancel: the layer keeps the original's).
fn output_error(stored: &LinearWeight, target: &[Tensor], x_hat: &[Tensor]) -> Result<f64> {
    let b = crate::model::linear::Linear { name: String::new(), weight: stored.clone(), bias: None };
    let (mut num, mut den) = (0f64, 0f64);
    for (yo, xc) in target.iter().zip(x_hat) {
        let yc = b.forward(xc)?;
        num += (yo - &yc)?.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        den += yo.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    }
    Ok(if den > 0.0 { (num / den).sqrt() } else { 0.0 })
}
