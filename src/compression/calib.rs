//! Calibration for activation-aware SVD: the Gram matrix `G = Σ x xᵀ` of the inputs `x` every linear layer sees
//! while the original model reads calibration text. Minimising `‖(W − W_r) X‖F` instead of `‖W − W_r‖F` keeps what
//! the layer does to the activations it actually receives (see [`crate::compression::svd::whitened`]).
//!
//! The statistics are collected by an observer handed to the forward pass a block at a time ([`Block::run_observed`]),
//! which shows it every linear layer's input.
//!
//! [`Block::run_observed`]: crate::model::gpt_neo::Block::run_observed

use crate::model::gpt_neo::GptNeo;
use crate::{Error, Result};
use candle_core::{Tensor, TensorId, D};
use faer::linalg::matmul::triangular::{matmul, BlockStructure};
use faer::{Accum, MatMut, MatRef, Par};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// The running `Σ x xᵀ` of one layer's inputs.
#[derive(Clone, Debug)]
pub struct Gram {
    /// Input dimension.
    pub n: usize,
    /// n × n, row-major, f64 (while calibrating only the lower half is summed; [`Calibrator::finish`] fills the
    /// upper).
    pub g: Vec<f64>,
    /// Input rows summed.
    pub count: usize,
}

/// Every calibrated layer's statistics by name; layers that read the same input (q, k and v) share one.
pub type Grams = HashMap<String, Arc<Gram>>;

impl Gram {
    /// Add the rows of `x` ([rows, n]): `xᵀ x` in f32, its lower half only (the product is symmetric), summed in f64.
    fn add(&mut self, x: &Tensor) -> Result<()> {
        let (rows, n) = x.dims2()?;
        let data: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let xm = MatRef::from_row_major_slice(&data, rows, n);
        let mut prod = vec![0f32; n * n];
        matmul(
            MatMut::from_row_major_slice_mut(&mut prod, n, n),
            BlockStructure::TriangularLower,
            Accum::Replace,
            xm.transpose(),
            BlockStructure::Rectangular,
            xm,
            BlockStructure::Rectangular,
            1.0f32,
            Par::Seq,
        );
        for i in 0..n {
            let (acc, p) = (&mut self.g[i * n..i * n + i + 1], &prod[i * n..i * n + i + 1]);
            for (a, &b) in acc.iter_mut().zip(p) {
                *a += b as f64;
            }
        }
        self.count += rows;
        Ok(())
    }

    /// The upper half from the lower, once the sums are done.
    fn symmetrize(&mut self) {
        let n = self.n;
        for i in 0..n {
            for j in 0..i {
                self.g[j * n + i] = self.g[i * n + j];
            }
        }
    }

    /// The mean `x xᵀ` (the uncentred covariance of the inputs).
    pub fn mean(&self) -> Vec<f64> {
        let c = self.count.max(1) as f64;
        self.g.iter().map(|v| v / c).collect()
    }

    /// The bytes it holds.
    pub fn bytes(&self) -> usize {
        8 * self.g.len()
    }
}

/// Runs the original model over the calibration windows a stage at a time (the embeddings with block 0, each block,
/// then the head's input), every window through one stage before the next, and collects every layer's Gram matrix
/// (or those of the layers it is told to keep). What it holds between stages is the windows' hidden states.
///
/// Collecting one stage's statistics at a time ([`Calibrator::collect_only`], [`Calibrator::take`]) is what lets a
/// model whose statistics are larger than memory be calibrated: 1.3B's are ~14 GiB, one block's ~600 MiB.
pub struct Calibrator {
    windows: Vec<Vec<u32>>,
    /// The stage to run next: block `i` at stage `i`, the head's input at stage `num_layers`.
    next: usize,
    /// Each window's hidden state entering stage `next` (`[1, t, hidden]`).
    hidden: Vec<Tensor>,
    /// One per distinct input, in the order first seen.
    grams: Vec<Gram>,
    /// Each kept layer's index in `grams`.
    by_name: HashMap<String, usize>,
    /// The input summed last and where: the same tensor shown to the next layer (q, k and v read one) is not summed
    /// again.
    last: Option<(TensorId, usize)>,
    /// The layers whose statistics are kept (`None`: all).
    keep: Option<HashSet<String>>,
    /// The only stage whose statistics are collected (`None`: every stage's).
    only_stage: Option<usize>,
}

impl Calibrator {
    /// The first `tokens` of `ids` in windows of `window`.
    pub fn new(ids: &[u32], tokens: usize, window: usize) -> Result<Self> {
        let windows = crate::model::tokenizer::windows(ids, tokens, window)?;
        Ok(Self {
            windows,
            next: 0,
            hidden: Vec::new(),
            grams: Vec::new(),
            by_name: HashMap::new(),
            last: None,
            keep: None,
            only_stage: None,
        })
    }

    /// Keep only these layers' statistics (the matrices a compression may store otherwise than as they are).
    pub fn only(self, names: impl IntoIterator<Item = String>) -> Self {
        Self { keep: Some(names.into_iter().collect()), ..self }
    }

    /// Collect the statistics of stage `stage` only ([`GptNeo::stage_of`]); the stages before it run unobserved.
    pub fn collect_only(&mut self, stage: usize) {
        self.only_stage = Some(stage);
    }

    /// Bytes the statistics of these layers (name, input width) take: an n × n matrix of f64 for each input, a
    /// block's q, k and v sharing theirs.
    pub fn bytes_for<'a>(layers: impl IntoIterator<Item = (&'a str, usize)>) -> f64 {
        let inputs: HashMap<String, usize> = layers
            .into_iter()
            .map(|(name, n)| (name.replace("k_proj", "q_proj").replace("v_proj", "q_proj"), n))
            .collect();
        inputs.values().map(|&n| 8.0 * (n * n) as f64).sum()
    }

    /// Stages to run for `model`: through the last one holding a kept layer.
    pub fn total_stages(&self, model: &GptNeo) -> usize {
        let all = model.blocks().len() + 1;
        match &self.keep {
            None => all,
            Some(k) => k.iter().filter_map(|name| model.stage_of(name)).max().map_or(0, |s| s + 1),
        }
    }

    /// The next stage to run.
    pub fn next_stage(&self) -> usize {
        self.next
    }

    pub fn total_windows(&self) -> usize {
        self.windows.len()
    }

    pub fn tokens(&self) -> usize {
        self.windows.iter().map(|w| w.len()).sum()
    }

    /// Run the next stage over every window; `false` when all are done.
    pub fn step(&mut self, original: &GptNeo) -> Result<bool> {
        let (s, layers) = (self.next, original.blocks().len());
        if s >= self.total_stages(original) {
            return Ok(false);
        }
        if s == 0 {
            self.hidden = self.windows.iter().map(|w| original.embed(w)).collect::<Result<_>>()?;
        }
        let observed = self.only_stage.is_none_or(|o| o == s);
        let mut hidden = std::mem::take(&mut self.hidden);
        for x in hidden.iter_mut() {
            let mut observe = |name: &str, t: &Tensor| self.observe(name, t);
            match original.blocks().get(s) {
                Some(block) if observed => *x = block.run_observed(x, &mut observe)?,
                Some(block) => *x = block.run(x)?,
                None if observed && s == layers => original.observe_head(x, &mut observe)?,
                None => {}
            }
            self.last = None;
        }
        self.next += 1;
        if self.next < self.total_stages(original) {
            self.hidden = hidden;
        }
        Ok(true)
    }

    /// Add layer `name`'s input `x` (`[rows, n]`) to its statistics, if they are kept.
    fn observe(&mut self, name: &str, x: &Tensor) -> Result<()> {
        if self.keep.as_ref().is_some_and(|k| !k.contains(name)) {
            return Ok(());
        }
        let n = x.dim(D::Minus1)?;
        let i = match self.by_name.get(name) {
            Some(&i) => i,
            None => {
                // a layer reading the input the layer before it read shares its statistics
                let i = match self.last {
                    Some((id, i)) if id == x.id() => i,
                    _ => {
                        self.grams.push(Gram { n, g: vec![0.0; n * n], count: 0 });
                        self.grams.len() - 1
                    }
                };
                self.by_name.insert(name.to_string(), i);
                i
            }
        };
        if self.grams[i].n != n {
            return Err(Error::tensor(name, "changed input width while calibrating"));
        }
        if self.last != Some((x.id(), i)) {
            self.grams[i].add(x)?;
            self.last = Some((x.id(), i));
        }
        Ok(())
    }

    /// The Gram matrices collected so far by layer name (layers that read one input share one), handed over: the
    /// stages still to run collect anew.
    pub fn take(&mut self) -> Grams {
        let shared: Vec<Arc<Gram>> = std::mem::take(&mut self.grams)
            .into_iter()
            .map(|mut g| {
                g.symmetrize();
                Arc::new(g)
            })
            .collect();
        std::mem::take(&mut self.by_name).into_iter().map(|(name, i)| (name, shared[i].clone())).collect()
    }

    /// The Gram matrices by layer name, once every stage has run (layers that read one input share one).
    pub fn finish(mut self) -> Grams {
        self.take()
    }
}

/// The bytes a set of statistics holds (each shared one once).
fn grams_bytes(grams: &Grams) -> usize {
    let mut seen = HashSet::new();
    grams.values().filter(|g| seen.insert(Arc::as_ptr(g))).map(|g| g.bytes()).sum()
}

/// A calibration's statistics with what they were measured on, kept for the next compression that reads the same
/// ([`Calibrated::serves`]): the origin's story calibrates its activation-aware step and its GPTQ step on the same
/// text, tokens and window.
pub struct Calibrated {
    ids: Vec<u32>,
    tokens: usize,
    window: usize,
    pub grams: Grams,
    /// Tokens read.
    pub read: usize,
    /// Whether the compression in progress measured them (its memory must not count them).
    pub fresh: bool,
}

impl Calibrated {
    /// `grams` as a calibration on the first `tokens` of `ids` in windows of `window` (`key`) collected them,
    /// reading `read` tokens.
    pub fn new(key: (Vec<u32>, usize, usize), read: usize, grams: Grams) -> Self {
        let (ids, tokens, window) = key;
        Self { ids, tokens, window, grams, read, fresh: true }
    }

    /// Whether these statistics are what a calibration of `targets` on the first `tokens` of `ids` in windows of
    /// `window` would collect.
    pub fn serves(&self, ids: &[u32], tokens: usize, window: usize, targets: &[String]) -> bool {
        self.tokens == tokens
            && self.window == window
            && self.ids == ids
            && targets.iter().all(|t| self.grams.contains_key(t))
    }

    /// The bytes it holds: the statistics, and the tokens and names they are filed under.
    pub fn bytes(&self) -> usize {
        let names: usize = self.grams.keys().map(|k| k.capacity() + std::mem::size_of::<(String, Arc<Gram>)>()).sum();
        grams_bytes(&self.grams) + 4 * self.ids.capacity() + names
    }
}
