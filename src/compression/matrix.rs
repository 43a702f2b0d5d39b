//! One weight matrix compressed: its plan carried out ([`FactorJob`], here or in another worker), what is stored
//! ([`factors`]: a truncated SVD's factors in the policy's storage), what was done and measured ([`LayerReport`],
//! [`Decision`]), and the totals over a model's reports. The pipeline, the refit and the refinement all produce
//! these; none of them owns them.

use crate::clock::now;
use crate::compression::gptq::gptq;
use crate::compression::policy::{FactorStorage, MatrixInfo, Plan, Policy};
use crate::compression::quant::{grouped, per_row, per_tensor};
use crate::compression::sensitivity::Damage;
use crate::compression::svd::{self, rel_fro_error, Svd};
use crate::model::linear::LinearWeight;
use crate::model::storage::{Factor, QuantScheme};
use crate::{Error, Result};
use serde::Serialize;
use std::sync::Arc;

/// What was done to a weight matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decision {
    /// Truncated SVD factors.
    LowRank,
    /// The dense weight in INT8.
    Int8,
    /// The dense weight as group-wise codes of 2 to 8 bits.
    Quantized,
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
                LinearWeight::Matrix(f) if matches!(f.as_ref(), Factor::Grouped(_)) => Decision::Quantized,
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

/// One matrix's work cut loose from the compression that planned it
/// ([`crate::compression::pipeline::Compressor::job`]), so that another thread or worker can do it with its own reader
/// of the same files.
#[derive(Clone, Debug)]
pub struct FactorJob {
    pub index: usize,
    matrix: MatrixInfo,
    plan: Plan,
    policy: Policy,
    spectrum: Option<Vec<f64>>,
    /// Whether `spectrum` is the weight's own singular values (not a whitened spectrum): then the report of
    /// activation-aware factors takes it instead of computing it again.
    spectrum_plain: bool,
    gram: Option<Vec<f64>>,
}

/// A [`FactorJob`] but for its vectors (the spectrum, the calibration statistics): what another worker is told.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct JobDescription {
    pub index: usize,
    pub matrix: MatrixInfo,
    pub plan: Plan,
    pub policy: Policy,
    pub spectrum_plain: bool,
}

/// A matrix factored: its report and what is stored (none when it stays dense).
#[derive(Clone)]
pub struct Factored {
    pub index: usize,
    pub report: LayerReport,
    pub weight: Option<LinearWeight>,
}

impl FactorJob {
    /// Matrix `index` (`matrix`) factored by `plan` with `policy`'s storage; `spectrum`, when known, goes into its
    /// report; `gram`, the mean input Gram matrix, makes the factors activation-aware.
    pub fn new(
        index: usize,
        matrix: MatrixInfo,
        plan: Plan,
        policy: Policy,
        spectrum: Option<Vec<f64>>,
        gram: Option<Vec<f64>>,
    ) -> Self {
        let spectrum_plain = !policy.needs_sensitivity();
        Self { index, matrix, plan, policy, spectrum, spectrum_plain, gram }
    }

    /// The job but for its vectors ([`FactorJob::from_description`] makes it again).
    pub fn describe(&self) -> JobDescription {
        JobDescription {
            index: self.index,
            matrix: self.matrix.clone(),
            plan: self.plan.clone(),
            policy: self.policy.clone(),
            spectrum_plain: self.spectrum_plain,
        }
    }

    /// The job [`FactorJob::describe`] described, with its vectors.
    pub fn from_description(d: JobDescription, spectrum: Option<Vec<f64>>, gram: Option<Vec<f64>>) -> Self {
        Self {
            index: d.index,
            matrix: d.matrix,
            plan: d.plan,
            policy: d.policy,
            spectrum,
            spectrum_plain: d.spectrum_plain,
            gram,
        }
    }

    pub fn spectrum(&self) -> Option<&[f64]> {
        self.spectrum.as_deref()
    }

    pub fn gram(&self) -> Option<&[f64]> {
        self.gram.as_deref()
    }

    /// What this job's result depends on, written out, when another compression may use its result instead of
    /// doing the work again: a plain SVD's factors (or a dense weight's INT8 codes) are a function of the weight, the
    /// plan, the storage and the SVD's method and seed, so the same key gives the same factors to the bit. `None` for
    /// what depends on more (activation-aware factors: the calibration) and for what costs nothing (a dense plan).
    pub fn reuse_key(&self) -> Option<String> {
        if self.gram.is_some() || matches!(self.plan, Plan::Dense { .. }) || self.policy.method.is_activation_aware() {
            return None;
        }
        let p = &self.policy;
        Some(format!(
            "{}|{:?}|{:?}|{:?}|{:?}|{}|spectrum:{}",
            self.matrix.name,
            self.plan,
            p.factor_storage(),
            p.method,
            p.svd,
            p.seed,
            self.spectrum.is_some()
        ))
    }

    /// Factor the matrix as planned and measure what is stored; `read(name)` returns it as f32, row-major.
    pub fn run(self, read: &dyn Fn(&str) -> Result<Vec<f32>>) -> Result<Factored> {
        Ok(self.run_with(read, None)?.0)
    }

    /// [`FactorJob::run`], and the same matrix under `alt` too (the allocation check's other candidate) from one read
    /// of the weight and, for activation-aware factors, one whitened decomposition: each result the same to the bit
    /// as its own job's.
    pub fn run_with(
        self,
        read: &dyn Fn(&str) -> Result<Vec<f32>>,
        alt: Option<Plan>,
    ) -> Result<(Factored, Option<Factored>)> {
        let t0 = now();
        let m = &self.matrix;
        let tag = |e: Error| Error::tensor(&m.name, e.to_string());
        let plans: Vec<&Plan> = std::iter::once(&self.plan).chain(alt.as_ref()).collect();
        let needs_weight = plans.iter().any(|p| !matches!(p, Plan::Dense { .. }));
        let w = if needs_weight { Some(read(&m.name)?) } else { None };
        let low_rank = plans.iter().any(|p| matches!(p, Plan::LowRank { .. }));
        // activation-aware: one whitened decomposition for every rank asked, and the weight's own spectrum for the
        // report (the spectrum pass's, when it computed the plain one)
        let whitened = match (&self.gram, &w) {
            (Some(g), Some(w)) if low_rank => {
                Some(svd::Whitened::new(&svd::to_mat(w, m.out, m.inp), g, self.policy.damp).map_err(tag)?)
            }
            _ => None,
        };
        let plain_spectrum: Option<Vec<f32>> = match (&whitened, &w) {
            (Some(_), Some(w)) => Some(match (&self.spectrum, self.spectrum_plain) {
                (Some(s), true) => s.iter().map(|&x| x as f32).collect(),
                _ => svd::singular_values(w, m.out, m.inp).map_err(tag)?.iter().map(|&x| x as f32).collect(),
            }),
            _ => None,
        };
        let mut out = Vec::with_capacity(plans.len());
        for plan in plans {
            let t = now();
            let mut f = self.factor(plan, w.as_deref(), whitened.as_ref(), plain_spectrum.as_ref())?;
            // one matrix's reading and decomposition are shared: the first result carries their time
            f.report.seconds = if out.is_empty() { now() - t0 } else { now() - t };
            out.push(f);
        }
        let mut it = out.into_iter();
        let first = it.next().ok_or_else(|| Error::msg("a job without a plan"))?;
        Ok((first, it.next()))
    }

    /// The matrix under `plan`, its weight `w` read (unless dense), `whitened` its decomposition (activation-aware).
    fn factor(
        &self,
        plan: &Plan,
        w: Option<&[f32]>,
        whitened: Option<&svd::Whitened>,
        plain_spectrum: Option<&Vec<f32>>,
    ) -> Result<Factored> {
        let m = &self.matrix;
        let (out, inp) = (m.out, m.inp);
        let spectrum = self.spectrum.as_ref().map(|s| s.iter().map(|&x| x as f32).collect());
        let mut rep = LayerReport::stored(m, spectrum);
        let tag = |e: Error| Error::tensor(&m.name, e.to_string());
        let weight = w.ok_or_else(|| Error::tensor(&m.name, "was not read"));
        let mut stored = None;
        match plan {
            Plan::Dense { reason } => {
                rep.reason = Some(reason.clone());
                rep.err_stored = Some(0.0);
            }
            Plan::Int8 => {
                let w = weight?;
                let lw = LinearWeight::Matrix(Arc::new(Factor::Int8(per_row(w, out, inp))));
                rep.decision = Decision::Int8;
                rep.err_stored = Some(svd::stored_error(w, &lw).map_err(tag)?);
                rep.storage = lw.describe();
                rep.bytes_after = lw.bytes();
                stored = Some(lw);
            }
            Plan::Grouped { bits, group } => {
                let w = weight?;
                let g = match &self.gram {
                    Some(gram) => gptq(w, out, inp, gram, *bits, *group, self.policy.damp).map_err(tag)?,
                    None => grouped(w, out, inp, *bits, *group),
                };
                let lw = LinearWeight::Matrix(Arc::new(Factor::Grouped(g)));
                rep.decision = Decision::Quantized;
                rep.err_stored = Some(svd::stored_error(w, &lw).map_err(tag)?);
                if let Some(gram) = &self.gram {
                    let wr: Vec<f64> = lw.to_dense_f32()?.iter().map(|&v| v as f64).collect();
                    rep.err_activations = Some(svd::rel_activation_error(w, &wr, out, inp, gram));
                }
                rep.storage = lw.describe();
                rep.bytes_after = lw.bytes();
                stored = Some(lw);
            }
            Plan::LowRank { rank } => {
                let (w, rank) = (weight?, *rank);
                let seed = self.policy.seed ^ fnv(&m.name);
                // The exact path yields every singular value for free; keep them for the report.
                let mut s: Svd = match whitened {
                    Some(d) => {
                        rep.singular_values = plain_spectrum.cloned();
                        d.truncate(rank)
                    }
                    None => {
                        let (s, all) =
                            svd::truncated_with_spectrum(w, out, inp, rank, self.policy.svd, seed).map_err(tag)?;
                        if let Some(all) = all {
                            rep.singular_values = Some(all.iter().map(|&x| x as f32).collect());
                        }
                        s
                    }
                };
                s.canonicalize_signs();
                rep.err_svd =
                    Some(if whitened.is_some() { rel_fro_error(w, &s.reconstruct()) } else { s.projection_error(w) });
                if let Some(sv) = &rep.singular_values {
                    let all: Vec<f64> = sv.iter().map(|&x| x as f64).collect();
                    let total: f64 = all.iter().map(|x| x * x).sum();
                    let kept: f64 = all.iter().take(rank).map(|x| x * x).sum();
                    rep.energy_kept = Some(if total > 0.0 { kept / total } else { 1.0 });
                }
                let lw = factors(&s, self.policy.factor_storage());
                rep.err_stored = Some(svd::stored_error(w, &lw).map_err(tag)?);
                if let (Some(d), LinearWeight::LowRank { u, s: sv, vh }) = (whitened, &lw) {
                    // P = U diag(S) and V as stored
                    let (r, sv) = (sv.cols(), sv.to_f32());
                    let p: Vec<f64> = u
                        .to_f32()
                        .chunks_exact(r.max(1))
                        .flat_map(|row| row.iter().zip(&sv).map(|(x, k)| (x * k) as f64))
                        .collect();
                    let v: Vec<f64> = vh.to_f32().iter().map(|&x| x as f64).collect();
                    rep.err_activations = Some(d.activation_error(w, &p, &v, r));
                }
                rep.decision = Decision::LowRank;
                rep.rank = Some(s.rank());
                rep.storage = lw.describe();
                rep.params_after = s.rank() * (out + inp + 1);
                rep.bytes_after = lw.bytes();
                stored = Some(lw);
            }
        }
        Ok(Factored { index: self.index, report: rep, weight: stored })
    }
}

/// Factors of a truncated SVD in the policy's storage. Per-row INT8 keeps S in f32 (a per-row scale of Vh would
/// absorb it anyway); the origin's per-tensor scheme quantizes U, S and Vh each with one scale and zero point,
/// computed in f64 like the Python reference.
pub fn factors(s: &Svd, storage: FactorStorage) -> LinearWeight {
    let (m, n, r) = (s.m, s.n, s.rank());
    let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    let (u, sv, vh) = match storage {
        FactorStorage::Grouped { bits, group } => (
            Factor::Grouped(grouped(&f32s(&s.u), m, r, bits, group)),
            Factor::F32 { rows: 1, cols: r, data: f32s(&s.s) },
            Factor::Grouped(grouped(&f32s(&s.vh), r, n, bits, group)),
        ),
        FactorStorage::F32 => (
            Factor::F32 { rows: m, cols: r, data: f32s(&s.u) },
            Factor::F32 { rows: 1, cols: r, data: f32s(&s.s) },
            Factor::F32 { rows: r, cols: n, data: f32s(&s.vh) },
        ),
        FactorStorage::Int8(QuantScheme::PerRow) => (
            Factor::Int8(per_row(&f32s(&s.u), m, r)),
            Factor::F32 { rows: 1, cols: r, data: f32s(&s.s) },
            Factor::Int8(per_row(&f32s(&s.vh), r, n)),
        ),
        FactorStorage::Int8(QuantScheme::PerTensor) => (
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
    /// Bits the linear layers store per parameter of the original's (`8 · bytes_after / params_considered`): codes,
    /// scales, zero points, factors, everything the file holds for them.
    pub bits_per_param: f64,
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
    t.bits_per_param = 8.0 * t.bytes_after as f64 / t.params_considered.max(1) as f64;
    t
}
