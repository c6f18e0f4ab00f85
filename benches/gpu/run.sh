#!/usr/bin/env bash
# Runs on the GPU machine from the repository root (after benches/gpu/prepare.sh here), in
# ONE device-tool call: a session has 15 minutes of device time in all, the machine takes
# 1-2 of them to start and goes back 30 s after a call, so there is no second call to count on.
#
#   bash gpu-bin/run.sh            # device tool: carry ["gpu-bin"], timeout_s 600
#   QUICK=1 bash gpu-bin/run.sh    # the tests and the ResNet-18 figures only (~1 minute)
#
# Stages run most valuable first, each under `timeout`, against one deadline (DEADLINE
# seconds after the start, default 540): a hang costs its stage, never the rest, and what
# finished is already in $OUT. The device tool returns at most 8 files from $OUT, so every
# stage appends to one of these 8 (scratch output, the PTX cache and training folders go to
# /tmp): info.txt, cuda-tests.txt, dist-tests.txt, train.txt, gpu-ops.jsonl,
# gpu-bench.jsonl, sanitizer.txt, log.txt (each stage's command, time and exit status).
#
# The CPU side of the comparisons needs no GPU: the same `kiln train` runs on the CPU here
# give the accuracies the GPU runs must match (docs/gpu-validation.md has them).
set -uo pipefail
out=${OUT:-/tmp/kiln-out}
w=/tmp/kiln-gpu
mkdir -p "$out" "$w"
start=$(date +%s)
deadline=$((start + ${DEADLINE:-540}))
export VIRTUAL_ENV=${VIRTUAL_ENV:-/opt/torch/.venv}   # NVRTC, cuBLAS, NCCL from PyTorch's wheels
export KILN_CACHE_DIR=$w/cache RUST_BACKTRACE=1 NCCL_DEBUG=${NCCL_DEBUG:-WARN}
py=$VIRTUAL_ENV/bin/python3; [ -x "$py" ] || py=$(command -v python3)
site=$(ls -d "$VIRTUAL_ENV"/lib/python3*/site-packages 2>/dev/null | head -1)

# NCCL's wheel ships only libnccl.so.2, a name cudarc does not try (it loads libnccl.so or
# libnccl.so.<N> for other N), and glibc reads LD_LIBRARY_PATH only when a process starts:
# give it a libnccl.so before any kiln process starts (`kiln info` says the same).
nccl=$(ls "$site"/nvidia/nccl/lib/libnccl.so.2 /usr/lib/x86_64-linux-gnu/libnccl.so.2 2>/dev/null | head -1)
if [ -n "$nccl" ]; then
    mkdir -p "$w/lib" && ln -sf "$nccl" "$w/lib/libnccl.so"
    export LD_LIBRARY_PATH=$w/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi

# t SECONDS FILE CMD...: runs CMD with its output appended to $out/FILE, for at most SECONDS
# and never past the deadline; skipped when under 10 s are left.
t() {
    local budget=$1 file=$2; shift 2
    local left=$((deadline - $(date +%s)))
    [ "$budget" -gt "$left" ] && budget=$left
    if [ "$budget" -lt 10 ]; then
        echo "== $(date +%T) SKIPPED (deadline): $*" >>"$out/log.txt"
        return 0
    fi
    echo "== $(date +%T) [${budget}s] $*" >>"$out/log.txt"
    echo "== $*" >>"$out/$file"
    timeout -k 5 "$budget" "$@" >>"$out/$file" 2>&1
    local rc=$?
    last_rc=$rc
    echo "== rc=$rc after $(($(date +%s) - start))s" | tee -a "$out/log.txt" >>"$out/$file"
    echo "$file rc=$rc: $*"   # the call's output tail: what failed, even if no file comes back
    return 0
}

{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    echo "site-packages: $site"; echo "nccl: ${nccl:-none}"
    ls "$site"/nvidia 2>/dev/null | tr '\n' ' '; echo
    ls /usr/local/cuda/lib64 "$site"/nvidia/cu13/lib "$site"/nvidia/cuda_nvrtc/lib 2>/dev/null | grep -E 'nvrtc|cublas|nccl' | tr '\n' ' '; echo
    command -v compute-sanitizer nvcc
} >>"$out/info.txt" 2>&1
t 60 info.txt gpu-bin/kiln info

# 1. Every op forward and backward on the GPU against the CPU (ops::), the real cuBLAS
#    layouts (blas::cublas), NVRTC for this GPU (every_kernel); the emulator-only tests
#    already ran in CI. Then TF32 alone (the switch is process-wide).
export KILN_TEST_DEVICE=cuda:0
t 180 cuda-tests.txt gpu-bin/cuda ops:: blas::cublas every_kernel --test-threads 4
# A kernel fault is sticky for the context and fails every later test: on failure, rerun the
# ops one at a time with synchronous launches, so the first failure names the faulting op.
if [ "${last_rc:-0}" != 0 ]; then
    CUDA_LAUNCH_BLOCKING=1 t 90 cuda-tests.txt gpu-bin/cuda ops:: --test-threads 1
fi
t 60 cuda-tests.txt gpu-bin/cuda --ignored tf32
# The convolutions again on the im2col + cuBLAS path (cuDNN, the default on a GPU, ran above).
KILN_CUDNN=0 t 60 cuda-tests.txt gpu-bin/cuda ops::conv

# QUICK=1: after the tests, only ResNet-18 (cuDNN and im2col convolutions vs PyTorch) and its
# per-op profile: a short call to check a convolution change.
if [ -n "${QUICK:-}" ]; then
    t 60 gpu-bench.jsonl gpu-bin/kiln bench-resnet --device cuda:0 --steps 30
    KILN_CUDNN_BENCHMARK=0 t 60 gpu-bench.jsonl gpu-bin/kiln bench-resnet --device cuda:0 --steps 30
    KILN_CUDNN=0 t 60 gpu-bench.jsonl gpu-bin/kiln bench-resnet --device cuda:0 --steps 30
    t 60 gpu-bench.jsonl "$py" benches/gpu/torch_resnet.py cuda 128 30
    t 60 gpu-bench.jsonl "$py" benches/gpu/torch_resnet.py cuda 128 30 benchmark
    CUDA_LAUNCH_BLOCKING=1 t 60 train.txt gpu-bin/kiln bench-resnet --device cuda:0 --steps 5 --profile
    echo "done (QUICK) after $(($(date +%s) - start))s" | tee -a "$out/log.txt"
    exit 0
fi

# 2. NCCL all-reduce over the GPUs of the process against the plain sum (the other dist
#    tests start the kiln binary from the build folder here and are not for this machine).
t 60 dist-tests.txt gpu-bin/dist nccl

# 3. Training on the GPU: MLP on cuda:0, MLP through NCCL (--devices 0), CNN on cuda:0.
t 90 train.txt gpu-bin/kiln train --device cuda:0 --quiet --epochs 3 --out "$w/run-gpu"
t 60 train.txt gpu-bin/kiln train --devices 0 --quiet --epochs 3 --out "$w/run-devices"
t 90 train.txt gpu-bin/kiln train --model cnn --device cuda:0 --quiet --epochs 2 --out "$w/cnn-gpu"
for r in run-gpu run-devices cnn-gpu; do
    [ -f "$w/$r/summary.json" ] && { echo "== $r"; cat "$w/$r/summary.json"; echo; } >>"$out/train.txt"
done

# 4. Issue 4's goals: copy/add/relu bandwidth on 256 MB, square matmul TFLOP/s, vs PyTorch.
t 60 gpu-ops.jsonl gpu-bin/kiln bench-ops --device cuda:0
t 60 gpu-ops.jsonl "$py" benches/gpu/torch_ops.py

# 5. The GPU section of BENCHMARKS.md: Kiln vs PyTorch on the same GPU, alternating.
for wl in mlp cnn; do
    e=15; [ $wl = cnn ] && e=5
    t 60 gpu-bench.jsonl gpu-bin/kiln bench --model $wl --epochs $e --rounds 2 --device cuda:0
    t 60 gpu-bench.jsonl "$py" benches/peers/torch_train.py $wl $e 16 cuda
    t 30 gpu-bench.jsonl gpu-bin/kiln bench --model $wl --epochs $e --rounds 1 --device cuda:0 --tf32
done
# ResNet-18: Kiln's convolutions on cuDNN with measured algorithms (the default), with the
# heuristics' picks, on im2col + cuBLAS; PyTorch by default (heuristics) and with
# cudnn.benchmark (measured, as Kiln's default).
t 60 gpu-bench.jsonl gpu-bin/kiln bench-resnet --device cuda:0 --steps 30
KILN_CUDNN_BENCHMARK=0 t 60 gpu-bench.jsonl gpu-bin/kiln bench-resnet --device cuda:0 --steps 30
KILN_CUDNN=0 t 60 gpu-bench.jsonl gpu-bin/kiln bench-resnet --device cuda:0 --steps 30
t 60 gpu-bench.jsonl "$py" benches/gpu/torch_resnet.py cuda 128 30
t 60 gpu-bench.jsonl "$py" benches/gpu/torch_resnet.py cuda 128 30 benchmark
t 30 gpu-bench.jsonl gpu-bin/kiln bench-resnet --device cuda:0 --steps 30 --tf32
t 30 gpu-bench.jsonl "$py" benches/gpu/torch_resnet.py cuda 128 30 tf32
t 30 gpu-bench.jsonl "$py" benches/gpu/torch_resnet.py cuda 128 30 tf32 benchmark

# 5b. Where the time goes: per-op tables with synchronous launches (an op's host time is
#     then its device time; the totals count nested ops twice, e.g. conv2d and its matmul).
CUDA_LAUNCH_BLOCKING=1 t 60 train.txt gpu-bin/kiln bench-resnet --device cuda:0 --steps 5 --profile
CUDA_LAUNCH_BLOCKING=1 t 60 train.txt gpu-bin/kiln train --device cuda:0 --quiet --epochs 1 --profile --out "$w/mlp-prof"

# 6. compute-sanitizer over the ops tests with every allocation exact-sized and freed at
#    once (KILN_NO_CACHING=1: an overrun into a cached block's slack would go unseen), in
#    whatever time is left.
sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
if [ -n "$sanitizer" ]; then
    # cuDNN by heuristics here: measuring every algorithm under memcheck would take the stage.
    KILN_CUDNN_BENCHMARK=0 KILN_NO_CACHING=1 t 600 sanitizer.txt "$sanitizer" --tool memcheck --error-exitcode 9 gpu-bin/cuda ops:: --test-threads 1
else
    echo "no compute-sanitizer found" >>"$out/sanitizer.txt"
fi
echo "done after $(($(date +%s) - start))s" | tee -a "$out/log.txt"
