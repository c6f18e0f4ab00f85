#!/usr/bin/env bash
# Builds, here, everything the GPU machine runs (it has no Rust toolchain) and copies it,
# stripped, into gpu-bin/ (git-ignored), to be named in the device tool's `carry`.
# Run it right before the device call: the binaries must be the code being validated.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release
rm -rf gpu-bin && mkdir -p gpu-bin
cp target/release/kiln gpu-bin/
# The test executables exactly as cargo names them in this build (not the newest file
# matching a pattern, which can be a stale one).
cargo test --release --no-run --test cuda --test dist --message-format=json 2>/dev/null |
    python3 -c '
import json, sys, shutil
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        shutil.copy(m["executable"], "gpu-bin/" + m["target"]["name"])
        print("gpu-bin/" + m["target"]["name"], "<-", m["executable"])
'
for t in kiln cuda dist; do [ -x "gpu-bin/$t" ] || { echo "gpu-bin/$t missing" >&2; exit 1; }; done
strip gpu-bin/*
cp benches/gpu/run.sh gpu-bin/
git rev-parse --short HEAD > gpu-bin/COMMIT
du -sh gpu-bin
