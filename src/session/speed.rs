//! How fast this worker computes, measured on a few small products of the kinds a job is made of: what the page's
//! estimates of a long job's time start from (before the session has measured any real job of that kind).

use crate::clock::now;
use crate::Result;
use serde::Serialize;

/// Rates of the operations jobs are made of, each the best of a few timed runs.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Speed {
    /// f32 matrix products (candle's, as the forward pass does them): floating-point operations per second.
    pub f32_flops: f64,
    /// An exact SVD (faer, f64, singular vectors): `m · n · min(m, n)` per second.
    pub svd_units: f64,
    /// Singular values alone (f64): `m · n · min(m, n)` per second.
    pub spectrum_units: f64,
}

/// Time `f` (best of three runs), in seconds.
fn best(mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let mut t = f64::INFINITY;
    for _ in 0..3 {
        let t0 = now();
        f()?;
        t = t.min(now() - t0);
    }
    Ok(t.max(1e-6))
}

/// Measure this worker's [`Speed`] (about a tenth of a second natively, a few tenths in wasm).
pub fn measure() -> Result<Speed> {
    use candle_core::{Device, Tensor};
    let (m, k, n) = (128usize, 768usize, 768usize);
    let a =
        Tensor::from_vec((0..m * k).map(|i| ((i % 17) as f32 - 8.0) * 0.01).collect::<Vec<_>>(), (m, k), &Device::Cpu)?;
    let b =
        Tensor::from_vec((0..k * n).map(|i| ((i % 13) as f32 - 6.0) * 0.01).collect::<Vec<_>>(), (k, n), &Device::Cpu)?;
    let t = best(|| {
        std::hint::black_box(a.matmul(&b)?);
        Ok(())
    })?;
    let f32_flops = 2.0 * (m * k * n) as f64 / t;
    let s = 256usize;
    let w = crate::model::synth::matrix(s, s, 7)?;
    let units = (s * s * s) as f64;
    let svd_units = units / best(|| crate::compression::svd::exact(&w, s, s).map(|_| ()))?;
    let spectrum_units = units / best(|| crate::compression::svd::singular_values(&w, s, s).map(|_| ()))?;
    Ok(Speed { f32_flops, svd_units, spectrum_units })
}
