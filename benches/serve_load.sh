#!/usr/bin/env bash
# Load test of `kiln serve` on loopback with wrk: trains a small MLP, serves it, and sends
# POST :predict requests (one 784-number instance each) at 64 connections, with dynamic
# batching on (--max-batch 32) and off (--max-batch 1). Prints throughput, p50/p99 latency,
# errors, forward passes and the server's RSS before and after each run.
#
#   bash benches/serve_load.sh            # DURATION=20 CONNECTIONS=64 THREADS=2 PORT=18501
#
# Needs wrk (installed from Debian's packages if missing) and curl. Only 127.0.0.1 is used.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-20}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
PORT=${PORT:-18501}
MIN_REQUESTS=${MIN_REQUESTS:-10000}

if ! command -v wrk >/dev/null; then
    echo "installing wrk" >&2
    (apt-get update -qq && apt-get install -y -qq wrk) >/dev/null
fi
command -v curl >/dev/null || { echo "curl is needed" >&2; exit 1; }

cargo build --release --quiet
KILN=target/release/kiln
work=$(mktemp -d /tmp/kiln-serve-load.XXXXXX)
server=""
cleanup() {
    if [ -n "$server" ] && kill -0 "$server" 2>/dev/null; then kill -TERM "$server"; wait "$server" || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

# A trained model: 3 epochs of the default MLP on the bundled digits.
"$KILN" train --epochs 3 --quiet --out "$work/model" >/dev/null 2>&1

# One instance of 784 numbers (normalised-pixel range), the same for every request.
awk 'BEGIN { srand(7); printf "{\"instances\": [["; for (i = 0; i < 784; i++) printf "%s%.5f", (i ? "," : ""), rand() * 3 - 0.4242; print "]]}" }' >"$work/body.json"
cat >"$work/post.lua" <<EOF
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("$work/body.json", "r")
wrk.body = f:read("*a")
f:close()
done = function(summary, latency, requests)
    local e = summary.errors
    io.write(string.format("RESULT requests=%d seconds=%.2f rps=%.0f p50_ms=%.2f p99_ms=%.2f max_ms=%.2f errors=%d\n",
        summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
        latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000,
        e.connect + e.read + e.write + e.status + e.timeout))
end
EOF

rss_kb() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }
metric() { curl -s "http://127.0.0.1:$PORT/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }

run() {
    local label=$1; shift
    "$KILN" serve --model "$work/model" --port "$PORT" "$@" 2>"$work/server.log" &
    server=$!
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.1; done
    curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null || { cat "$work/server.log" >&2; exit 1; }
    # Check one answer, then measure.
    curl -sf -d @"$work/body.json" "http://127.0.0.1:$PORT/v1/models/mnist:predict" | grep -q '"predictions"'
    local rss0; rss0=$(rss_kb "$server")
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --timeout 10s -s "$work/post.lua" \
        "http://127.0.0.1:$PORT/v1/models/mnist:predict" >"$work/wrk.out"
    local rss1; rss1=$(rss_kb "$server")
    local result; result=$(grep '^RESULT' "$work/wrk.out")
    local passes rows; passes=$(metric kiln_serve_forward_passes_total); rows=$(metric kiln_serve_predict_rows_total)
    local non2xx; non2xx=$(awk '/Non-2xx/ { print $NF }' "$work/wrk.out"); non2xx=${non2xx:-0}
    kill -TERM "$server"; wait "$server" || true; server=""
    echo "$label $result non2xx=$non2xx forward_passes=$passes rows=$rows rss_before_mb=$((rss0 / 1024)) rss_after_mb=$((rss1 / 1024))"
    local n; n=$(sed 's/.*requests=\([0-9]*\).*/\1/' <<<"$result")
    if [ "$n" -lt "$MIN_REQUESTS" ]; then echo "only $n requests (< $MIN_REQUESTS): raise DURATION" >&2; exit 1; fi
}

echo "machine: $(nproc) cores, $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo); load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s, one instance per request"
run "batching(max-batch=32,timeout=2ms)" --max-batch 32 --batch-timeout-ms 2
run "no-batching(max-batch=1)" --max-batch 1
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
