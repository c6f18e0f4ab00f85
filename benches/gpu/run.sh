#!/usr/bin/env bash
# Runs on the GPU machine from the repository root (after benches/gpu/prepare.sh here):
# every CUDA op against the CPU on the real GPU, NCCL, compute-sanitizer over the kernels,
# the training paths, and the GPU benchmarks against PyTorch. Output goes to $OUT (or /tmp)
# for docs/gpu-validation.md.
#
#   bash gpu-bin/run.sh [tests] [train] [sanitizer] [bench]     (no argument: all four)
#
# The device tool allows 10 minutes per command: if one call cannot hold all four, run
# `tests train` in one call and `sanitizer`, `bench` in others (each stage is independent).
set -uo pipefail
out=${OUT:-/tmp}
stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(tests train sanitizer bench)
want() { [[ " ${stages[*]} " == *" $1 "* ]]; }
export VIRTUAL_ENV=${VIRTUAL_ENV:-/opt/torch/.venv}   # NVRTC, cuBLAS, NCCL from PyTorch's wheels
export KILN_CACHE_DIR=$out/kiln-cache
py=${VIRTUAL_ENV}/bin/python
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
gpu-bin/kiln info | tee "$out/info.txt"
if want tests; then
    echo "== every op on the GPU vs the CPU"
    KILN_TEST_DEVICE=cuda:0 gpu-bin/cuda --test-threads 4 2>&1 | tee "$out/cuda-tests.txt" | tail -5
    KILN_TEST_DEVICE=cuda:0 gpu-bin/cuda --ignored tf32 2>&1 | tee -a "$out/cuda-tests.txt" | tail -3
    echo "== NCCL and data-parallel"
    gpu-bin/dist --test-threads 2 2>&1 | tee "$out/dist-tests.txt" | tail -5
fi
if want train; then
    echo "== training: MLP on the GPU, the CPU, and --devices 0 (NCCL); CNN on the GPU and the CPU"
    gpu-bin/kiln train --device cuda:0 --quiet --epochs 3 --out "$out/run-gpu" 2>&1 | tail -1 | tee "$out/train-gpu.txt"
    gpu-bin/kiln train --device cpu --quiet --epochs 3 --out "$out/run-cpu" 2>&1 | tail -1 | tee "$out/train-cpu.txt"
    gpu-bin/kiln train --devices 0 --quiet --epochs 3 --out "$out/run-devices" 2>&1 | tail -1 | tee "$out/train-devices.txt"
    gpu-bin/kiln train --model cnn --device cuda:0 --quiet --epochs 2 --out "$out/cnn-gpu" 2>&1 | tail -1 | tee "$out/cnn-gpu.txt"
    gpu-bin/kiln train --model cnn --device cpu --quiet --epochs 2 --out "$out/cnn-cpu" 2>&1 | tail -1 | tee "$out/cnn-cpu.txt"
fi
if want sanitizer; then
    echo "== compute-sanitizer over the ops tests"
    sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
    if [ -n "$sanitizer" ]; then
        KILN_TEST_DEVICE=cuda:0 "$sanitizer" --tool memcheck --error-exitcode 9 gpu-bin/cuda ops:: --test-threads 1 \
            > "$out/sanitizer.txt" 2>&1; echo "compute-sanitizer exit $?" | tee -a "$out/sanitizer.txt"
    else
        echo "no compute-sanitizer found" | tee "$out/sanitizer.txt"
    fi
fi
if want bench; then
    echo "== GPU section of BENCHMARKS.md: Kiln vs PyTorch on the same GPU"
    gpu-bin/kiln bench-ops --device cuda:0 2>/dev/null | tee "$out/gpu-ops.jsonl"
    "$py" benches/gpu/torch_ops.py | tee -a "$out/gpu-ops.jsonl"
    for w in mlp cnn; do
        e=15; [ $w = cnn ] && e=5
        gpu-bin/kiln bench --model $w --epochs $e --rounds 3 --device cuda:0 2>/dev/null | tee -a "$out/gpu-bench.jsonl"
        gpu-bin/kiln bench --model $w --epochs $e --rounds 1 --device cuda:0 --tf32 2>/dev/null | tee -a "$out/gpu-bench.jsonl"
        for r in 1 2 3; do "$py" benches/peers/torch_train.py $w $e 16 cuda | tee -a "$out/gpu-bench.jsonl"; done
    done
    # The larger workload: ResNet-18 on a random 32x32 batch of 128, f32 and TF32, alternating.
    for r in 1 2; do
        gpu-bin/kiln bench-resnet --device cuda:0 --steps 30 2>/dev/null | tee -a "$out/gpu-resnet.jsonl"
        "$py" benches/gpu/torch_resnet.py cuda 128 30 | tee -a "$out/gpu-resnet.jsonl"
    done
    gpu-bin/kiln bench-resnet --device cuda:0 --steps 30 --tf32 2>/dev/null | tee -a "$out/gpu-resnet.jsonl"
    "$py" benches/gpu/torch_resnet.py cuda 128 30 tf32 | tee -a "$out/gpu-resnet.jsonl"
fi
