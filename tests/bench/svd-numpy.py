#!/usr/bin/env python3
"""numpy's LAPACK SVD (gesdd through OpenBLAS) and a randomized SVD written in numpy, on the matrices that
`slc bench svd --save DIR` wrote (DIR/MxN.f32, row-major little-endian f32): time, and the relative Frobenius error
‖W − W_r‖F / ‖W‖F of the rank-r truncation, for BENCHMARKS.md beside `slc bench svd` and `scale.mjs svd`.

    OPENBLAS_NUM_THREADS=1 python3 tests/bench/svd-numpy.py DIR [--rank 128] [--oversample 80] [--iters 3]

The randomized SVD is Halko, Martinsson and Tropp's (Algorithm 4.4, power iterations with a QR after every product,
the scheme of scikit-learn's randomized_svd), in f32 like ours, with the same basis size l = r + oversample; its
error is measured against W exactly. The exact truncation's error comes from all singular values (f64 SVD of the
f32 matrix). A figures-only benchmark: it asserts nothing.
"""
import argparse
import glob
import os
import time

import numpy as np


def best(f, runs):
    t, out = float("inf"), None
    for _ in range(runs):
        s = time.perf_counter()
        out = f()
        t = min(t, time.perf_counter() - s)
    return t, out


def randomized(a, r, oversample, iters, seed=1):
    m, n = a.shape
    l = min(r + oversample, min(m, n))
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(a @ rng.standard_normal((n, l), dtype=np.float32))
    for _ in range(iters):
        q, _ = np.linalg.qr(a.T @ q)
        q, _ = np.linalg.qr(a @ q)
    u, s, vt = np.linalg.svd(q.T @ a, full_matrices=False)
    return (q @ u[:, :r]), s[:r], vt[:r]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("dir")
    p.add_argument("--rank", type=int, default=128)
    p.add_argument("--oversample", type=int, default=80)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--runs", type=int, default=2)
    args = p.parse_args()
    threads = os.environ.get("OPENBLAS_NUM_THREADS", "all")
    files = sorted(glob.glob(os.path.join(args.dir, "*.f32")), key=lambda f: os.path.getsize(f))
    for f in files:
        m, n = (int(x) for x in os.path.basename(f)[:-4].split("x"))
        a = np.fromfile(f, dtype="<f4").reshape(m, n)
        norm2 = float(np.sum(a.astype(np.float64) ** 2))
        r = args.rank
        t_full, (u, s, vt) = best(lambda: np.linalg.svd(a, full_matrices=False), 1)
        s64 = np.linalg.svd(a.astype(np.float64), compute_uv=False)
        exact_err = float(np.sqrt(np.sum(s64[r:] ** 2) / norm2))
        full_err = float(np.linalg.norm(a - (u[:, :r] * s[:r]) @ vt[:r]) / np.sqrt(norm2))
        t_rand, (ur, sr, vtr) = best(lambda: randomized(a, r, args.oversample, args.iters), args.runs)
        rand_err = float(np.linalg.norm(a - (ur * sr) @ vtr) / np.sqrt(norm2))
        t_mm, _ = best(lambda: a @ np.ones((n, min(r + args.oversample, min(m, n))), dtype=np.float32), args.runs)
        print(f"numpy {np.__version__} {m}x{n} rank {r} (OpenBLAS threads: {threads}): "
              f"full LAPACK SVD (gesdd, f32) {t_full:.3f} s, error {full_err:.4f}; "
              f"randomized (l = r + {args.oversample}, {args.iters} power iterations) {t_rand:.3f} s, "
              f"error {rand_err:.4f} ({100 * (rand_err / exact_err - 1):+.2f}% vs exact {exact_err:.4f}); "
              f"one f32 product W·(n×l) {t_mm:.3f} s")


if __name__ == "__main__":
    main()
