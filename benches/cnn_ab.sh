#!/usr/bin/env bash
# Interleaved A/B timing of one CNN epoch for two or more kiln binaries:
#
#   ROUNDS=5 bash benches/cnn_ab.sh /tmp/kiln-before target/release/kiln
#
# Each round runs every binary once, in turn (A B A B ...), as
# `/usr/bin/time -v BIN train --model cnn --epochs 1 --quiet --out DIR`, and records the
# training loop's seconds (summary.json's train_seconds), the whole process's peak RSS
# (time's "Maximum resident set size") and its CPU seconds (user + system, all threads:
# less disturbed than wall time when other jobs share the cores). Prints every run, the
# load average before each round, and the median per binary.
set -euo pipefail
ROUNDS=${ROUNDS:-5}
EPOCHS=${EPOCHS:-1}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for r in $(seq 1 "$ROUNDS"); do
    echo "round $r: load average $(cut -d' ' -f1-3 /proc/loadavg)"
    i=0
    for bin in "$@"; do
        i=$((i + 1))
        "/usr/bin/time" -v "$bin" train --model cnn --epochs "$EPOCHS" --quiet --out "$tmp/out$i" 2>"$tmp/time$i" >/dev/null
        secs=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['train_seconds'])" "$tmp/out$i/summary.json")
        rss=$(awk '/Maximum resident/ {print $6}' "$tmp/time$i")
        cpu=$(awk '/User time|System time/ {s += $NF} END {print s}' "$tmp/time$i")
        echo "  $bin: train_seconds $secs, peak RSS $((rss / 1024)) MB, process CPU $cpu s"
        echo "$secs $rss $cpu" >>"$tmp/res$i"
    done
done
i=0
for bin in "$@"; do
    i=$((i + 1))
    python3 - "$bin" "$tmp/res$i" <<'PY'
import statistics, sys
rows = [tuple(map(float, l.split())) for l in open(sys.argv[2])]
print(f"median {sys.argv[1]}: train_seconds {statistics.median(r[0] for r in rows):.3f}, "
      f"peak RSS {statistics.median(r[1] for r in rows) / 1024:.0f} MB, "
      f"process CPU {statistics.median(r[2] for r in rows):.2f} s ({len(rows)} runs)")
PY
done
