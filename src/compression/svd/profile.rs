//! The randomized SVD timed stage by stage beside plain products of the same shape (`slc bench svd` and the page's
//! benchmark print it).

use crate::compression::svd::exact::{rel_fro_error, singular_values, tail_error};
use crate::compression::svd::randomized::{
    product_units, randomized_staged, OVERSAMPLE, POWER_ITERS, RANDOMIZED_STAGES,
};
use crate::{Error, Result};
use faer::Mat;

/// What [`profile`] measured for one shape: seconds per stage of [`randomized`] (best of the runs), a plain f32
/// product of the same shape for comparison, and the errors.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SvdProfile {
    pub m: usize,
    pub n: usize,
    pub rank: usize,
    pub oversample: usize,
    pub power_iters: usize,
    /// (stage, seconds) in the order of [`RANDOMIZED_STAGES`].
    pub stages: Vec<(String, f64)>,
    pub randomized_seconds: f64,
    /// One `m × n` by `n × (rank + oversample)` f32 product: the unit a stage is measured against.
    pub matmul_seconds: f64,
    pub candle_seconds: f64,
    /// Units of `W · (n × l)` the randomized SVD does ([`product_units`]).
    pub products: f64,
    /// ‖W − W_r‖F / ‖W‖F of the randomized truncation.
    pub err_randomized: f64,
    /// The same for the exact truncation (from every singular value), when asked.
    pub err_exact: Option<f64>,
    pub exact_seconds: Option<f64>,
    /// The products of one Krylov block (`A·Z`, `Aᵀ·Q`, `b` columns) and a plain one, by implementation: the median
    /// seconds of interleaved rounds (wide matrices only).
    pub narrow: Vec<(String, f64)>,
}

/// Medians over interleaved rounds of the products a Krylov block does, `Y = A·Z` (`A` the wide `m × n` row-major
/// matrix, `Z` `n × b`) and `Z = Aᵀ·Q` (`Q` `m × b`), and of a plain `A·(n × l)`, through faer (what
/// [`randomized`] uses) and through candle.
pub fn narrow_products(w: &[f32], m: usize, n: usize, b: usize, l: usize, rounds: usize) -> Result<Vec<(String, f64)>> {
    use crate::clock::now;
    let a = faer::MatRef::from_row_major_slice(w, m, n);
    let fill = |rows: usize, cols: usize| Mat::<f32>::from_fn(rows, cols, |i, j| ((i * 7 + j * 13) % 17) as f32 - 8.0);
    let (z, q, zl) = (fill(n, b), fill(m, b), fill(n, l));
    let dev = candle_core::Device::Cpu;
    let tensor = |x: &Mat<f32>| {
        let (r, c) = (x.nrows(), x.ncols());
        candle_core::Tensor::from_vec((0..r * c).map(|k| x[(k / c, k % c)]).collect::<Vec<f32>>(), (r, c), &dev)
    };
    let ct = candle_core::Tensor::from_slice(w, (m, n), &dev)?;
    let ctt = ct.t()?;
    let (cz, cq, czl) = (tensor(&z)?, tensor(&q)?, tensor(&zl)?);
    let names = ["faer A·Z", "faer Aᵀ·Q", "faer A·(n×l)", "candle A·Z", "candle Aᵀ·Q", "candle A·(n×l)"];
    let mut times = vec![Vec::new(); names.len()];
    for _ in 0..rounds.max(1) {
        for (k, t) in times.iter_mut().enumerate() {
            let s = now();
            match k {
                0 => drop(std::hint::black_box(a * &z)),
                1 => drop(std::hint::black_box(a.transpose() * &q)),
                2 => drop(std::hint::black_box(a * &zl)),
                3 => drop(std::hint::black_box(ct.matmul(&cz)?)),
                4 => drop(std::hint::black_box(ctt.matmul(&cq)?)),
                _ => drop(std::hint::black_box(ct.matmul(&czl)?)),
            }
            t.push(now() - s);
        }
    }
    Ok(names
        .iter()
        .zip(times)
        .map(|(n, mut t)| {
            t.sort_by(f64::total_cmp);
            (n.to_string(), t[t.len() / 2])
        })
        .collect())
}

/// What to profile on `slc synth`'s trained-like `m × n` matrix (seed 1): what `./build.sh bench` runs in the
/// browser. The pipeline's oversampling and iterations where none are given.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct ProfileSpec {
    pub m: usize,
    pub n: usize,
    pub rank: usize,
    pub runs: usize,
    pub oversample: Option<usize>,
    pub power_iters: Option<usize>,
}

impl ProfileSpec {
    pub fn run(&self) -> Result<SvdProfile> {
        let (m, n) = (self.m, self.n);
        let w = crate::model::synth::matrix(m, n, 1)?;
        let (o, q) = (self.oversample.unwrap_or(OVERSAMPLE), self.power_iters.unwrap_or(POWER_ITERS));
        profile(&w, m, n, self.rank, o, q, self.runs, false)
    }
}

/// Time [`randomized`] with the given oversampling and iterations on the `m × n` matrix `w`, best of `runs`, stage by stage, beside a plain
/// f32 product of the same shape; with `exact`, also the exact SVD's time and error.
#[allow(clippy::too_many_arguments)]
pub fn profile(
    w: &[f32],
    m: usize,
    n: usize,
    rank: usize,
    oversample: usize,
    power_iters: usize,
    runs: usize,
    exact_too: bool,
) -> Result<SvdProfile> {
    use crate::clock::now;
    let l = (rank + oversample).min(m.min(n));
    let a = faer::MatRef::from_row_major_slice(w, m, n);
    let b = Mat::<f32>::from_fn(n, l, |i, j| ((i * 7 + j * 13) % 17) as f32 - 8.0);
    let mut matmul_seconds = f64::INFINITY;
    for _ in 0..runs.max(1) {
        let t = now();
        let c = a * &b;
        matmul_seconds = matmul_seconds.min(now() - t);
        std::hint::black_box(c);
    }
    let ct = candle_core::Tensor::from_slice(w, (m, n), &candle_core::Device::Cpu)?;
    let cb = candle_core::Tensor::from_slice(&vec![0.5f32; n * l], (n, l), &candle_core::Device::Cpu)?;
    let mut candle_seconds = f64::INFINITY;
    for _ in 0..runs.max(1) {
        let t = now();
        let c = ct.matmul(&cb)?;
        candle_seconds = candle_seconds.min(now() - t);
        std::hint::black_box(c);
    }
    let mut best = vec![f64::INFINITY; RANDOMIZED_STAGES.len()];
    let mut total = f64::INFINITY;
    let mut svd = None;
    for _ in 0..runs.max(1) {
        let mut spent = vec![0.0; RANDOMIZED_STAGES.len()];
        let t0 = now();
        let mut t = t0;
        let out = randomized_staged(w, m, n, rank, oversample, power_iters, 1, &mut |stage| {
            let here = now();
            spent[stage] += here - t;
            t = here;
        })?;
        total = total.min(now() - t0);
        for (b, s) in best.iter_mut().zip(&spent) {
            *b = b.min(*s);
        }
        svd = Some(out);
    }
    let svd = svd.ok_or_else(|| Error::msg("no run"))?;
    let err_randomized = rel_fro_error(w, &svd.reconstruct());
    let (err_exact, exact_seconds) = if exact_too {
        let t = now();
        let s = singular_values(w, m, n)?;
        (Some(tail_error(&s, rank)), Some(now() - t))
    } else {
        (None, None)
    };
    Ok(SvdProfile {
        m,
        n,
        rank,
        oversample,
        power_iters,
        stages: RANDOMIZED_STAGES.iter().map(|s| s.to_string()).zip(best).collect(),
        randomized_seconds: total,
        matmul_seconds,
        candle_seconds,
        products: product_units(power_iters),
        err_randomized,
        err_exact,
        exact_seconds,
        narrow: {
            let l = (rank + oversample).min(m.min(n));
            if m <= n && l < m {
                narrow_products(w, m, n, l.div_ceil(power_iters + 1), l, 7)?
            } else {
                vec![]
            }
        },
    })
}
