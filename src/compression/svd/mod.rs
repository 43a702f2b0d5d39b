//! Truncated singular value decomposition.
//!
//! A weight `W` (m × n, row-major, `out × in` as `nn.Linear` stores it) is factored as `W = U · diag(S) · Vh` with
//! orthonormal columns in `U` (m × k), orthonormal rows in `Vh` (k × n) and `S` descending, k = min(m, n). Keeping
//! the first `r` triplets gives the best rank-r approximation in the Frobenius norm (Eckart–Young):
//! `‖W − W_r‖F² = Σ_{j>r} σ_j²`.
//!
//! * [`exact`] uses faer's SVD (the reference, and the method for small matrices);
//! * [`randomized`] is Halko–Martinsson–Tropp: a Gaussian sketch with oversampling, power iterations each followed by
//!   re-orthonormalisation (QR), then an exact SVD of the small projected matrix;
//! * [`singular_values`] computes the spectrum alone.
//!
//! Signs of singular vectors are not unique; [`Svd::canonicalize_signs`] fixes them the way the Python reference does
//! (the largest-magnitude entry of every column of U is positive), which matters for per-tensor quantization.
//! Non-finite input is an error, not a panic.
//!
//! One file a method: [`exact`] (and the [`Svd`] all of them return, with the errors measured on it),
//! [`randomized`], [`whitened`] (activation-aware), and [`profile`] (the randomized SVD timed stage by stage). This
//! module chooses between exact and randomized ([`truncated`]).

mod exact;
mod profile;
mod randomized;
mod whitened;

pub(crate) use exact::to_mat;
pub use exact::{
    exact, rank_for_energy, rel_fro_error, rel_fro_error_f32, reserve_scratch, singular_values, stored_error,
    sum_squares, tail_error, Svd,
};
pub use profile::{narrow_products, profile, ProfileSpec, SvdProfile};
pub use randomized::{product_units, randomized, randomized_staged, OVERSAMPLE, POWER_ITERS, RANDOMIZED_STAGES};
pub use whitened::{damping, rel_activation_error, whitened, whitened_f64, Whitened};

use crate::Result;

/// How to compute a truncated SVD.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(not(target_arch = "wasm32"), derive(clap::ValueEnum))]
pub enum SvdMethod {
    /// Exact for matrices whose smaller side is at most [`AUTO_EXACT_DIM`] or when the rank is a large share of it;
    /// randomized otherwise.
    #[default]
    Auto,
    Exact,
    Randomized,
}

/// Below this smaller side, `Auto` uses the exact SVD.
pub const AUTO_EXACT_DIM: usize = 512;

impl SvdMethod {
    /// Whether a rank-`r` truncation of an `m × n` matrix by this method is computed exactly (the one place the
    /// choice is made).
    pub fn is_exact_for(self, m: usize, n: usize, r: usize) -> bool {
        let k = m.min(n);
        match self {
            SvdMethod::Exact => true,
            SvdMethod::Randomized => false,
            SvdMethod::Auto => k <= AUTO_EXACT_DIM || 4 * r >= k,
        }
    }
}

/// The rank-`r` truncated SVD by `method`.
pub fn truncated(w: &[f32], m: usize, n: usize, r: usize, method: SvdMethod, seed: u64) -> Result<Svd> {
    Ok(truncated_with_spectrum(w, m, n, r, method, seed)?.0)
}

/// [`truncated`], with every singular value when the exact path computed them anyway.
pub fn truncated_with_spectrum(
    w: &[f32],
    m: usize,
    n: usize,
    r: usize,
    method: SvdMethod,
    seed: u64,
) -> Result<(Svd, Option<Vec<f64>>)> {
    if method.is_exact_for(m, n, r) {
        let full = exact(w, m, n)?;
        let all = full.s.clone();
        Ok((full.truncate(r), Some(all)))
    } else {
        Ok((randomized(w, m, n, r, OVERSAMPLE, POWER_ITERS, seed)?, None))
    }
}

#[cfg(test)]
mod tests;
