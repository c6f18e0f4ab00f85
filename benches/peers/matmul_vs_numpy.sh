#!/usr/bin/env bash
# Kiln's f32 matmul against numpy's (OpenBLAS from the PyPI wheel) on the same shapes and
# threads, in alternating rounds, summarised as a markdown table of median GFLOP/s.
#
#   benches/peers/matmul_vs_numpy.sh [--secs S] [MxKxN[:nn|tn|nt] ...]
#
# Arguments go to both examples/gemm_gflops.rs and matmul_numpy.py (none: their default
# shapes, square 256/1024/2048 and an MLP 784-256-256-10 at batch 128 with its backward).
#
# Environment:
#   ROUNDS            rounds (default 5); each runs kiln and numpy once, order alternating
#   THREADS           threads for both (default 2): RAYON_NUM_THREADS, OPENBLAS_NUM_THREADS,
#                     OMP_NUM_THREADS, MKL_NUM_THREADS
#   KILN_BENCH_VENV   venv holding numpy and threadpoolctl (default /tmp/kiln-bench-venv);
#                     made, and the two installed from PyPI, when missing
#   KILN_BENCH_OUT    where the raw JSON lines go (default: a new temp file; path printed)
#
# Run it on an otherwise idle machine: both sides use every thread they are given.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
rounds=${ROUNDS:-5}
threads=${THREADS:-2}
venv=${KILN_BENCH_VENV:-/tmp/kiln-bench-venv}
raw=${KILN_BENCH_OUT:-$(mktemp -t kiln-matmul-vs-numpy.XXXXXX.jsonl)}

if ! "$venv/bin/python" -c 'import numpy, threadpoolctl' 2>/dev/null; then
    echo "== making $venv with numpy and threadpoolctl" >&2
    python3 -m venv "$venv" || { echo "python3 -m venv failed (Debian: apt-get install python3-venv)" >&2; exit 1; }
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet numpy threadpoolctl
fi

echo "== building examples/gemm_gflops.rs (release)" >&2
(cd "$root" && cargo build --release --quiet --example gemm_gflops)
bin="${CARGO_TARGET_DIR:-$root/target}/release/examples/gemm_gflops"
[ -x "$bin" ] || { echo "not found: $bin" >&2; exit 1; }

thread_env=(RAYON_NUM_THREADS="$threads" OPENBLAS_NUM_THREADS="$threads" OMP_NUM_THREADS="$threads" MKL_NUM_THREADS="$threads")

run_kiln() {
    env "${thread_env[@]}" "$bin" "$@"
}

run_numpy() {
    # OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, when set on this machine, slow a current numpy's
    # OpenBLAS down: let it detect the CPU itself.
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "${thread_env[@]}" "$venv/bin/python" "$here/matmul_numpy.py" "$@"
}

: >"$raw"
for ((r = 1; r <= rounds; r++)); do
    echo "== round $r/$rounds" >&2
    if ((r % 2 == 1)); then
        run_kiln "$@" | tee -a "$raw" >&2
        run_numpy "$@" | tee -a "$raw" >&2
    else
        run_numpy "$@" | tee -a "$raw" >&2
        run_kiln "$@" | tee -a "$raw" >&2
    fi
done

echo "== raw results: $raw" >&2
echo
echo "f32 GEMM, $threads threads, median of $rounds rounds (layout: tn = A is a transposed view, nt = B is)"
echo
"$venv/bin/python" "$here/summarize.py" "$raw"
