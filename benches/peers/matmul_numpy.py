#!/usr/bin/env python3
"""GEMM throughput of numpy's float32 matmul: the peer of examples/gemm_gflops.rs.

Same arguments, same shapes, same method, same JSON lines (with "impl":"numpy"):

    python3 matmul_numpy.py [--secs S] [MxKxN[:nn|tn|nt] ...]

"tn" makes A the transposed view (.T) of a C-contiguous [k, m], "nt" makes B the
transposed view of a C-contiguous [n, k]; numpy hands such views to BLAS with a transpose
flag, without copying. Threads: set OPENBLAS_NUM_THREADS / OMP_NUM_THREADS (the BLAS that
threadpoolctl reports at start, on stderr, is the one measured).
"""

import json
import sys
import time

import numpy as np

# (m, k, n, layout): keep in step with DEFAULT_SHAPES in examples/gemm_gflops.rs.
DEFAULT_SHAPES = [
    (256, 256, 256, "nn"),
    (1024, 1024, 1024, "nn"),
    (2048, 2048, 2048, "nn"),
    # MLP 784-256-256-10, batch 128: forward h = x @ w
    (128, 784, 256, "nn"),
    (128, 256, 256, "nn"),
    (128, 256, 10, "nn"),
    # weight grads dW = x.T @ g
    (784, 128, 256, "tn"),
    (256, 128, 256, "tn"),
    (256, 128, 10, "tn"),
    # input grads dx = g @ w.T (the first layer's is not needed in training)
    (128, 10, 256, "nt"),
    (128, 256, 256, "nt"),
]

MIN_SAMPLE = 2e-3  # seconds: one sample lasts at least this long
MIN_SAMPLES = 5


def parse_shape(s):
    dims, _, layout = s.partition(":")
    layout = layout or "nn"
    if layout not in ("nn", "tn", "nt"):
        raise SystemExit(f"{s!r}: layout must be nn, tn or nt")
    try:
        m, k, n = (int(p) for p in dims.split("x"))
    except ValueError:
        raise SystemExit(f"{s!r}: want MxKxN") from None
    if min(m, k, n) <= 0:
        raise SystemExit(f"{s!r}: want MxKxN with positive sizes")
    return m, k, n, layout


def operands(rng, m, k, n, layout):
    def randn(*shape):
        return rng.standard_normal(shape, dtype=np.float32)

    if layout == "tn":
        return randn(k, m).T, randn(k, n)
    if layout == "nt":
        return randn(m, k), randn(n, k).T
    return randn(m, k), randn(k, n)


def time_median(budget, f):
    """Median seconds per call of f: warm-up, then samples of `reps` calls each until
    `budget` seconds have elapsed (and at least MIN_SAMPLES were taken)."""
    calls = 0
    warm = time.perf_counter()
    while calls < 3 or time.perf_counter() - warm < budget / 10:
        f()
        calls += 1
    one = (time.perf_counter() - warm) / calls
    reps = max(1, int(np.ceil(MIN_SAMPLE / max(one, 1e-9))))
    samples = []
    start = time.perf_counter()
    while len(samples) < MIN_SAMPLES or time.perf_counter() - start < budget:
        t = time.perf_counter()
        for _ in range(reps):
            f()
        samples.append((time.perf_counter() - t) / reps)
    return float(np.median(samples))


def blas_info():
    print(f"matmul_numpy: numpy {np.__version__}", file=sys.stderr)
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        print("matmul_numpy: threadpoolctl not installed, BLAS unknown", file=sys.stderr)
        return 0
    threads = 0
    for pool in threadpool_info():
        # e.g. internal_api=openblas, architecture (OpenBLAS's core type)=Haswell, num_threads=2
        keys = ("user_api", "internal_api", "version", "architecture", "threading_layer", "num_threads", "filepath")
        print("matmul_numpy: " + ", ".join(f"{k}={pool.get(k)}" for k in keys), file=sys.stderr)
        if pool.get("user_api") == "blas":
            threads = pool.get("num_threads") or threads
    return threads


def main(argv):
    secs = 1.0
    shapes = []
    args = iter(argv)
    for a in args:
        if a == "--secs":
            secs = float(next(args))
        elif a in ("-h", "--help"):
            print("usage: matmul_numpy.py [--secs S] [MxKxN[:nn|tn|nt] ...]")
            return
        else:
            shapes.append(parse_shape(a))
    shapes = shapes or DEFAULT_SHAPES
    threads = blas_info()
    rng = np.random.default_rng(0)
    for m, k, n, layout in shapes:
        a, b = operands(rng, m, k, n, layout)
        per_call = time_median(secs, lambda: np.matmul(a, b))
        gflops = 2.0 * m * k * n / per_call / 1e9
        line = {
            "impl": "numpy",
            "shape": f"{m}x{k}x{n}",
            "layout": layout,
            "gflops": round(gflops, 3),
            "ms": round(per_call * 1e3, 6),
            "threads": threads,
        }
        print(json.dumps(line, separators=(",", ":")), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
