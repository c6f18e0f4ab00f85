#!/usr/bin/env bash
# Builds, here, everything the GPU machine runs (it has no Rust toolchain) and copies it,
# stripped, into gpu-bin/ (git-ignored), to be named in the device tool's `carry`.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release
cargo test --release --no-run --test cuda --test dist 2>&1 | tail -2
rm -rf gpu-bin && mkdir -p gpu-bin
cp target/release/kiln gpu-bin/
for t in cuda dist; do
    f=$(ls -t target/release/deps/$t-* | grep -v '\.d$' | head -1)
    cp "$f" "gpu-bin/$t"
done
strip gpu-bin/*
cp benches/gpu/run.sh gpu-bin/
du -sh gpu-bin
