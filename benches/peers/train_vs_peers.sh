#!/usr/bin/env bash
# Training side by side (issue 5): Kiln, PyTorch and TensorFlow/Keras train the same MLP
# (784-256-256-10, 15 epochs) and CNN (5 epochs) on the bundled MNIST split, Adam 1e-3,
# batch 128, all on THREADS threads, in alternating rounds. Reports, per framework, the
# training-loop seconds (epochs only, no evaluation), whole-process wall seconds and peak RSS
# (/usr/bin/time -v), and test accuracy; medians over ROUNDS, and Kiln/peer ratios.
#
#   ROUNDS=3 THREADS=2 bash benches/peers/train_vs_peers.sh [mlp] [cnn]
#
# Peers are installed from PyPI into KILN_PEERS_VENV (default /tmp/kiln-peers-venv):
# torch, tensorflow-cpu, numpy. Run it on an otherwise idle machine.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
rounds=${ROUNDS:-3}
threads=${THREADS:-2}
venv=${KILN_PEERS_VENV:-/tmp/kiln-peers-venv}
workloads=("$@")
[ ${#workloads[@]} -gt 0 ] || workloads=(mlp cnn)
raw=$(mktemp -t kiln-peers.XXXXXX.jsonl)

if ! "$venv/bin/python" -c 'import torch, tensorflow' 2>/dev/null; then
    echo "== installing torch and tensorflow-cpu into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check numpy torch tensorflow-cpu
fi
(cd "$root" && cargo build --release --quiet --bin kiln)
kiln="$root/target/release/kiln"
export RAYON_NUM_THREADS=$threads OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads

# Runs a command under /usr/bin/time -v; appends its JSON line plus wall and RSS to $raw.
measure() {
    local out tim
    out=$(mktemp) tim=$(mktemp)
    /usr/bin/time -v -o "$tim" "$@" >"$out" 2>/dev/null
    local wall rss
    wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; print s}' "$tim")
    rss=$(awk -F': ' '/Maximum resident set size/ {print $2 * 1024}' "$tim")
    "$venv/bin/python" - "$out" "$wall" "$rss" >>"$raw" <<'PY'
import json, sys
line = [l for l in open(sys.argv[1]) if l.startswith("{")][-1]
d = json.loads(line)
d["wall_seconds"], d["peak_rss_bytes"] = float(sys.argv[2]), int(sys.argv[3])
print(json.dumps(d))
PY
    rm -f "$out" "$tim"
}

kiln_run() {
    measure "$kiln" bench --model "$1" --epochs "$2" --device cpu
}

for ((r = 1; r <= rounds; r++)); do
    for w in "${workloads[@]}"; do
        epochs=15
        [ "$w" = cnn ] && epochs=5
        echo "== round $r/$rounds: $w" >&2
        order=(kiln torch tf)
        ((r % 2 == 0)) && order=(tf torch kiln)
        for f in "${order[@]}"; do
            case $f in
                kiln) kiln_run "$w" "$epochs" ;;
                torch) measure "$venv/bin/python" "$here/torch_train.py" "$w" "$epochs" "$threads" ;;
                tf) measure "$venv/bin/python" "$here/tf_train.py" "$w" "$epochs" "$threads" ;;
            esac
            tail -n 1 "$raw" >&2
        done
    done
done
echo "== raw: $raw" >&2
"$venv/bin/python" - "$raw" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("| workload | framework | train loop s | wall s | peak RSS MB | test acc | Kiln/peer (train loop) | per round |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
for w in sorted({r["workload"] for r in rows}):
    med, runs = {}, {}
    for fw in sorted({r["framework"] for r in rows if r["workload"] == w}):
        rs = [r for r in rows if r["workload"] == w and r["framework"] == fw]
        runs[fw] = [r["train_seconds"] for r in rs]
        med[fw] = {k: statistics.median(r[k] for r in rs) for k in ["train_seconds", "wall_seconds", "peak_rss_bytes", "test_accuracy"]}
    kfw = next((fw for fw in med if fw.startswith("kiln")), None)
    for fw, m in med.items():
        ratio = per_round = ""
        if kfw and fw != kfw:
            ratio = f"{med[kfw]['train_seconds'] / m['train_seconds']:.2f}"
            # Rounds interleave the frameworks: round r's ratio compares runs minutes apart.
            rr = [k / p for k, p in zip(runs[kfw], runs[fw])]
            per_round = f"{min(rr):.2f}-{max(rr):.2f}"
        print(f"| {w} | {fw} | {m['train_seconds']:.2f} | {m['wall_seconds']:.2f} | {m['peak_rss_bytes'] / 1e6:.0f} | {100 * m['test_accuracy']:.2f}% | {ratio} | {per_round} |")
PY
