//! Calibration for activation-aware SVD: the Gram matrix `G = Σ x xᵀ` of the inputs `x` every linear layer sees
//! while the original model reads calibration text. Minimising `‖(W − W_r) X‖F` instead of `‖W − W_r‖F` keeps what
//! the layer does to the activations it actually receives (see [`crate::svd::whitened`]).
//!
//! Recording is a switch that [`crate::linear::Linear::forward`] consults: off (the default), it costs one check.

use crate::model::GptNeo;
use crate::{Error, Result};
use candle_core::{Tensor, D};
use std::cell::RefCell;
use std::collections::HashMap;

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

thread_local! {
    static RECORDING: RefCell<Option<HashMap<String, Gram>>> = const { RefCell::new(None) };
}

/// Called by every linear layer with its input `[rows, n]`: adds it to the layer's Gram matrix when recording.
pub fn record(name: &str, x: &Tensor) -> Result<()> {
    RECORDING.with(|r| {
        let mut r = r.borrow_mut();
        let Some(map) = r.as_mut() else { return Ok(()) };
        let n = x.dim(D::Minus1)?;
        let gram = map.entry(name.to_string()).or_insert_with(|| Gram { n, g: vec![0.0; n * n], count: 0 });
        if gram.n != n {
            return Err(Error::tensor(name, "changed input width while calibrating"));
        }
        gram.add(x)
    })
}

/// Runs the original model over calibration windows, one per step, and collects every layer's Gram matrix.
pub struct Calibrator {
    windows: Vec<Vec<u32>>,
    next: usize,
    grams: HashMap<String, Gram>,
}

impl Calibrator {
    /// The first `tokens` of `ids` in windows of `window`.
    pub fn new(ids: &[u32], tokens: usize, window: usize) -> Result<Self> {
        let windows = crate::metrics::windows(ids, tokens, window)?;
        Ok(Self { windows, next: 0, grams: HashMap::new() })
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
        RECORDING.with(|r| *r.borrow_mut() = Some(std::mem::take(&mut self.grams)));
        let out = original.logits(ids).map(|_| ());
        self.grams = RECORDING.with(|r| r.borrow_mut().take()).unwrap_or_default();
        out?;
        self.next += 1;
        Ok(true)
    }

    /// The Gram matrices by layer name, once every window has run.
    pub fn finish(self) -> HashMap<String, Gram> {
        self.grams
    }
}
