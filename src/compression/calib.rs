//! Calibration for activation-aware SVD: the Gram matrix `G = Σ x xᵀ` of the inputs `x` every linear layer sees
//! while the original model reads calibration text. Minimising `‖(W − W_r) X‖F` instead of `‖W − W_r‖F` keeps what
//! the layer does to the activations it actually receives (see [`crate::compression::svd::whitened`]).
//!
//! The statistics are collected by an observer handed to the forward pass ([`GptNeo::observe`]), which shows it every
//! linear layer's input.

use crate::model::gpt_neo::GptNeo;
use crate::{Error, Result};
use candle_core::{Tensor, D};
use std::collections::{HashMap, HashSet};

/// The running `Σ x xᵀ` of one layer's inputs.
#[derive(Clone, Debug)]
pub struct Gram {
    /// Input dimension.
    pub n: usize,
    /// n × n, row-major, f64.
    pub g: Vec<f64>,
    /// Input rows summed.
    pub count: usize,
}

impl Gram {
    fn add(&mut self, x: &Tensor) -> Result<()> {
        let xt = x.t()?.contiguous()?;
        let g: Vec<f32> = xt.matmul(x)?.flatten_all()?.to_vec1()?;
        for (a, b) in self.g.iter_mut().zip(g) {
            *a += b as f64;
        }
        self.count += x.dim(0)?;
        Ok(())
    }

    /// The mean `x xᵀ` (the uncentred covariance of the inputs).
    pub fn mean(&self) -> Vec<f64> {
        let c = self.count.max(1) as f64;
        self.g.iter().map(|v| v / c).collect()
    }
}

/// Add one layer's input `[rows, n]` to its Gram matrix in `grams`.
fn record(grams: &mut HashMap<String, Gram>, name: &str, x: &Tensor) -> Result<()> {
    let n = x.dim(D::Minus1)?;
    let gram = grams.entry(name.to_string()).or_insert_with(|| Gram { n, g: vec![0.0; n * n], count: 0 });
    if gram.n != n {
        return Err(Error::tensor(name, "changed input width while calibrating"));
    }
    gram.add(x)
}

/// Runs the original model over calibration windows, one per step, and collects every layer's Gram matrix (or those
/// of the layers it is told to keep).
pub struct Calibrator {
    windows: Vec<Vec<u32>>,
    next: usize,
    grams: HashMap<String, Gram>,
    /// The layers whose statistics are kept (`None`: all).
    keep: Option<HashSet<String>>,
}

impl Calibrator {
    /// The first `tokens` of `ids` in windows of `window`.
    pub fn new(ids: &[u32], tokens: usize, window: usize) -> Result<Self> {
        let windows = crate::model::tokenizer::windows(ids, tokens, window)?;
        Ok(Self { windows, next: 0, grams: HashMap::new(), keep: None })
    }

    /// Keep only these layers' statistics (the matrices a compression may store otherwise than as they are).
    pub fn only(self, names: impl IntoIterator<Item = String>) -> Self {
        Self { keep: Some(names.into_iter().collect()), ..self }
    }

    /// Bytes the statistics of layers with these input widths take: an n × n matrix of f64 each.
    pub fn bytes_for(inputs: impl IntoIterator<Item = usize>) -> f64 {
        inputs.into_iter().map(|n| 8.0 * (n * n) as f64).sum()
    }

    pub fn total_windows(&self) -> usize {
        self.windows.len()
    }

    pub fn done(&self) -> usize {
        self.next
    }

    pub fn tokens(&self) -> usize {
        self.windows.iter().map(|w| w.len()).sum()
    }

    /// Run the next window; `false` when all are done.
    pub fn step(&mut self, original: &GptNeo) -> Result<bool> {
        let Some(ids) = self.windows.get(self.next) else { return Ok(false) };
        let (grams, keep) = (&mut self.grams, &self.keep);
        original.observe(ids, &mut |name, x| match keep {
            Some(k) if !k.contains(name) => Ok(()),
            _ => record(grams, name, x),
        })?;
        self.next += 1;
        Ok(true)
    }

    /// The Gram matrices by layer name, once every window has run.
    pub fn finish(self) -> HashMap<String, Gram> {
        self.grams
    }
}
