//! The SVD methods against each other and against the definitions, on fixed seeds.

use super::*;
use crate::model::generate::Rng;

fn random(m: usize, n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..m * n).map(|_| rng.normal() as f32).collect()
}

/// A matrix with a decaying spectrum: Σ_k σ_k u_k v_kᵀ with σ_k = 0.8^k.
fn decaying(m: usize, n: usize, seed: u64) -> Vec<f32> {
    let g = random(m, n, seed);
    let svd = exact(&g, m, n).unwrap();
    let k = m.min(n);
    let mut s = svd.clone();
    s.s = (0..k).map(|i| 0.8f64.powi(i as i32)).collect();
    s.reconstruct().iter().map(|&x| x as f32).collect()
}

fn orthonormal_cols(u: &[f64], m: usize, r: usize) -> f64 {
    let mut worst = 0f64;
    for a in 0..r {
        for b in 0..r {
            let d: f64 = (0..m).map(|i| u[i * r + a] * u[i * r + b]).sum();
            worst = worst.max((d - if a == b { 1.0 } else { 0.0 }).abs());
        }
    }
    worst
}

#[test]
fn exact_reconstructs_tall_wide_square() {
    for (m, n) in [(40, 12), (12, 40), (25, 25), (1, 7), (7, 1)] {
        let w = random(m, n, (m * 100 + n) as u64);
        let svd = exact(&w, m, n).unwrap();
        let k = m.min(n);
        assert_eq!(svd.s.len(), k);
        assert!(svd.s.windows(2).all(|p| p[0] >= p[1]));
        let err = rel_fro_error(&w, &svd.reconstruct());
        assert!(err < 1e-12 * ((m.max(n)) as f64).sqrt() * 10.0, "{m}x{n}: {err}");
        assert!(orthonormal_cols(&svd.u, m, k) < 1e-10);
        // Vh rows orthonormal = columns of Vhᵀ
        let vt: Vec<f64> = (0..n).flat_map(|j| (0..k).map(move |i| (i, j))).map(|(i, j)| svd.vh[i * n + j]).collect();
        assert!(orthonormal_cols(&vt, n, k) < 1e-10);
    }
}

#[test]
fn truncation_error_is_the_spectral_tail() {
    let (m, n) = (30, 20);
    let w = random(m, n, 3);
    let full = exact(&w, m, n).unwrap();
    for r in [0, 1, 5, 19, 20] {
        let t = full.clone().truncate(r);
        let err = rel_fro_error(&w, &t.reconstruct());
        assert!((err - tail_error(&full.s, r)).abs() < 1e-9, "r={r}");
    }
}

#[test]
fn rank_deficient_and_zero_matrices() {
    // rank 3: A = B·C with B 20×3, C 3×15
    let (b, c) = (random(20, 3, 1), random(3, 15, 2));
    let w: Vec<f32> =
        (0..20 * 15).map(|idx| (0..3).map(|k| b[(idx / 15) * 3 + k] * c[k * 15 + idx % 15]).sum()).collect();
    let s = singular_values(&w, 20, 15).unwrap();
    assert!(s[2] > 1e-3 && s[3] < 1e-5 * s[0], "{s:?}");
    let r3 = truncated(&w, 20, 15, 3, SvdMethod::Randomized, 9).unwrap();
    assert!(rel_fro_error(&w, &r3.reconstruct()) < 1e-5);
    assert_eq!(rank_for_energy(&s, 0.999999), 3);
    let z = vec![0f32; 12];
    let svd = exact(&z, 3, 4).unwrap();
    assert!(svd.s.iter().all(|&x| x == 0.0));
    assert_eq!(rel_fro_error(&z, &svd.reconstruct()), 0.0);
    assert_eq!(rank_for_energy(&svd.s, 0.9), 0);
    let r = randomized(&vec![0f32; 60 * 40], 60, 40, 5, 5, 2, 1).unwrap();
    assert!(r.s.iter().all(|&x| x == 0.0));
}

#[test]
fn randomized_is_close_to_optimal_on_decaying_spectra() {
    for (m, n) in [(120, 80), (80, 120)] {
        let w = decaying(m, n, 5);
        let s = singular_values(&w, m, n).unwrap();
        for r in [4, 16] {
            let rs = randomized(&w, m, n, r, 40, 2, 42).unwrap();
            let err = rel_fro_error(&w, &rs.reconstruct());
            let best = tail_error(&s, r);
            assert!(err <= best * 1.02 + 1e-12, "{m}x{n} r={r}: {err} vs optimum {best}");
            // Ritz values: from below, and at this depth converged
            for (a, b) in rs.s.iter().zip(&s) {
                assert!(*a <= b + 1e-6 * s[0] && *a >= b - 1e-6 * s[0], "{a} vs {b}");
            }
        }
    }
}

#[test]
fn signs_are_canonical_and_reconstruction_unchanged() {
    let w = random(10, 6, 11);
    let mut svd = exact(&w, 10, 6).unwrap();
    let before = svd.reconstruct();
    svd.canonicalize_signs();
    let after = svd.reconstruct();
    for (a, b) in before.iter().zip(&after) {
        assert!((a - b).abs() < 1e-12);
    }
    for i in 0..6 {
        let col: Vec<f64> = (0..10).map(|j| svd.u[j * 6 + i]).collect();
        let j = (0..10).fold(0, |b, j| if col[j].abs() > col[b].abs() { j } else { b });
        assert!(col[j] > 0.0);
    }
}

#[test]
fn whitened_svd_is_better_on_the_activations_and_exact_at_full_rank() {
    let (m, n, rows) = (24, 16, 200);
    let w = random(m, n, 21);
    // inputs with very different scales per feature
    let mut rng = Rng::new(5);
    let x: Vec<f64> =
        (0..rows * n).map(|k| rng.normal() * (1.0 + 10.0 * ((k % n) as f64 / n as f64).powi(3))).collect();
    let mut gram = vec![0f64; n * n];
    for r in 0..rows {
        for i in 0..n {
            for j in 0..n {
                gram[i * n + j] += x[r * n + i] * x[r * n + j] / rows as f64;
            }
        }
    }
    for r in [2, 6] {
        let plain = exact(&w, m, n).unwrap().truncate(r).reconstruct();
        let white = whitened(&w, m, n, &gram, r, 1e-9).unwrap();
        let act = |wr: &[f64]| rel_activation_error(&w, wr, m, n, &gram);
        assert!(act(&white.reconstruct()) < act(&plain), "rank {r}");
        assert!(
            rel_fro_error(&w, &white.reconstruct()) >= rel_fro_error(&w, &plain) - 1e-12,
            "rank {r}: plain SVD is optimal in F"
        );
    }
    let full = whitened(&w, m, n, &gram, n, 1e-9).unwrap();
    assert!(rel_fro_error(&w, &full.reconstruct()) < 1e-8);
    assert!(whitened(&w, m, n, &gram[1..], 2, 0.0).is_err());
}

#[test]
fn stored_error_equals_the_dense_difference() {
    use crate::compression::matrix::factors;
    use crate::compression::policy::FactorStorage;
    use crate::model::storage::QuantScheme;
    for (m, n) in [(70, 150), (150, 70)] {
        let w = decaying(m, n, 8);
        let full = exact(&w, m, n).unwrap();
        // ranks whose error is large (the factored identity) and near zero (the dense fallback)
        for r in [1, 8, 30, 70] {
            let mut t = full.clone().truncate(r);
            t.canonicalize_signs();
            for quant in [
                FactorStorage::F32,
                FactorStorage::Int8(QuantScheme::PerRow),
                FactorStorage::Int8(QuantScheme::PerTensor),
                FactorStorage::Grouped { bits: 4, group: 32 },
            ] {
                let lw = factors(&t, quant);
                let back: Vec<f64> = lw.to_dense_f32().unwrap().iter().map(|&x| x as f64).collect();
                let (got, want) = (stored_error(&w, &lw).unwrap(), rel_fro_error(&w, &back));
                assert!((got - want).abs() <= 1e-5 * want.max(1e-3), "{m}x{n} r={r} {quant:?}: {got} vs {want}");
            }
        }
    }
    let w = random(9, 7, 3);
    assert_eq!(stored_error(&w, &factors(&exact(&w, 9, 7).unwrap().truncate(0), FactorStorage::F32)).unwrap(), 1.0);
    assert!(stored_error(&w[1..], &factors(&exact(&w, 9, 7).unwrap(), FactorStorage::F32)).is_err());
    assert_eq!(sum_squares(&[3.0, 4.0]), 25.0);
}

#[test]
fn non_finite_input_is_an_error() {
    let mut w = random(4, 4, 1);
    w[5] = f32::NAN;
    assert!(exact(&w, 4, 4).unwrap_err().to_string().contains("non-finite"));
    assert!(randomized(&w, 4, 4, 2, 1, 1, 0).is_err());
    let mut big = random(40, 60, 2);
    big[2000] = f32::NEG_INFINITY;
    let e = randomized(&big, 40, 60, 4, 4, 1, 0).unwrap_err().to_string();
    assert!(e.contains("-inf") && e.contains("index 2000"), "{e}");
}

#[test]
fn the_activation_error_from_the_decomposition_equals_the_direct_one() {
    // both sides of the decomposition: wide (from A (G + λI) Aᵀ) and tall (from (A L)ᵀ A L)
    for (m, n) in [(24, 40), (40, 24)] {
        let rows = 300;
        let w = random(m, n, 31);
        let mut rng = Rng::new(9);
        let x: Vec<f64> = (0..rows * n).map(|k| rng.normal() * (1.0 + 5.0 * ((k % n) as f64 / n as f64))).collect();
        let mut gram = vec![0f64; n * n];
        for r in 0..rows {
            for i in 0..n {
                for j in 0..n {
                    gram[i * n + j] += x[r * n + i] * x[r * n + j] / rows as f64;
                }
            }
        }
        let d = Whitened::new(&to_mat(&w, m, n), &gram, 0.01).unwrap();
        // the same as the SVD of A L, with G + λI = L Lᵀ: every singular value, and each truncation U Σ Vᵀ L⁻¹
        let lambda = d.lambda;
        let g = faer::Mat::from_fn(n, n, |i, j| gram[i * n + j] + if i == j { lambda } else { 0.0 });
        let l = g.llt(faer::Side::Lower).unwrap().L().to_owned();
        let al = to_mat(&w, m, n) * &l;
        let svd = al.thin_svd().unwrap();
        let k = m.min(n);
        for i in 0..k {
            let (a, b) = (d.all[i], svd.S().column_vector()[i]);
            // (on the output side A G is an f32 product: σ² moves by ~10⁻⁷ of σ₁²)
            assert!((a * a - b * b).abs() <= 1e-6 * d.all[0] * d.all[0], "{m}x{n} σ{i}: {a} vs {b}");
        }
        for r in [1, 5, 12] {
            let s = d.truncate(r);
            // the reference: (U Σ Vᵀ) L⁻¹, from the SVD of A L
            let (u, v) = (svd.U().subcols(0, r), svd.V().subcols(0, r));
            let usv = faer::Mat::from_fn(m, n, |i, j| {
                (0..r).map(|q| u[(i, q)] * svd.S().column_vector()[q] * v[(j, q)]).sum::<f64>()
            });
            let mut want = usv.transpose().to_owned();
            faer::linalg::triangular_solve::solve_upper_triangular_in_place(
                l.transpose(),
                want.as_mut(),
                faer::Par::Seq,
            );
            let got = s.reconstruct();
            let scale = want.norm_max();
            for i in 0..m {
                for j in 0..n {
                    // (measured: 10⁻⁷ of the largest entry on the output side, 10⁻¹⁵ on the input side)
                    let e = (got[i * n + j] - want[(j, i)]).abs();
                    assert!(e <= 1e-6 * scale, "{m}x{n} rank {r} at ({i}, {j})");
                }
            }
            // P = U diag(S), V = Vh
            let p: Vec<f64> = (0..m * r).map(|k| s.u[k] * s.s[k % r]).collect();
            let direct = rel_activation_error(&w, &got, m, n, &gram);
            let via = d.activation_error(&w, &p, &s.vh, r);
            assert!((direct - via).abs() < 1e-6 * direct.max(1.0), "{m}x{n} rank {r}: {direct} vs {via}");
        }
    }
}
