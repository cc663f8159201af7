#!/usr/bin/env bash
# Heap allocations per request, counted with perf uprobes on mimalloc's entry points, for one
# gateway binary and one scenario of bench/run.sh's config. Needs root (uprobes) and a release
# build; only loopback traffic, a fixed number of requests.
#
#   bench/allocs.sh BINARY [model] [requests]      e.g. bench/allocs.sh target/release/ai-gateway bench 20000
#   models: bench (OpenAI passthrough), bench-cached, bench-claude (chat -> Messages API),
#   messages (POST /v1/messages -> the OpenAI mock)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(realpath "$1")
MODEL=${2:-bench}
N=${3:-20000}
MOCK_PORT=18181 GW_PORT=18180 GW_ADMIN=19190
OUT=bench/results/allocs
mkdir -p "$OUT"
command -v wrk >/dev/null 2>&1 || { echo "wrk missing (bench/run.sh installs it)" >&2; exit 1; }
[ -x target/release/examples/bench_mock ] || cargo build --release --locked --example bench_mock >/dev/null
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; perf probe -q -d 'probe_ai:*' 2>/dev/null || true; }
trap cleanup EXIT
target/release/examples/bench_mock "$MOCK_PORT" & pids+=($!)
cat > "$OUT/gateway.yaml" <<YAML
listen: 127.0.0.1:$GW_PORT
admin: { listen: 127.0.0.1:$GW_ADMIN }
threads: 1
log: { level: warn }
providers:
  mock: { type: openai, base_url: "http://127.0.0.1:$MOCK_PORT/v1", api_key: bench-key }
  claude: { type: anthropic, base_url: "http://127.0.0.1:$MOCK_PORT/v1", api_key: bench-key }
scenarios:
  bench-claude:
    targets: [{ provider: claude, model: bench-model }]
  bench:
    targets: [{ provider: mock, model: bench-model }]
  bench-cached:
    cache: { ttl: 3600s }
    targets: [{ provider: mock, model: bench-model }]
YAML
RUST_LOG=error "$BIN" -c "$OUT/gateway.yaml" >/dev/null 2>&1 & gw=$!; pids+=($gw)
for port in $MOCK_PORT $GW_PORT; do
  for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
done
path=/v1/chat/completions
body="{\"model\":\"$MODEL\",\"messages\":[{\"role\":\"user\",\"content\":\"Say hello\"}]}"
if [ "$MODEL" = messages ]; then
  path=/v1/messages
  body='{"model":"bench","max_tokens":64,"messages":[{"role":"user","content":"Say hello"}]}'
fi
# Warm up: pools, caches and lazily built state are not per-request costs.
BENCH_BODY=$body wrk -t1 -c1 -d1s -s bench/post.lua "http://127.0.0.1:$GW_PORT$path" >/dev/null
perf probe -q -d 'probe_ai:*' 2>/dev/null || true
for f in mi_malloc_aligned mi_zalloc_aligned mi_realloc_aligned; do
  perf probe -q -x "$BIN" --add "$f" 2>/dev/null
done
events=$(perf probe -l 2>/dev/null | awk '/probe_ai/ {print $1}' | paste -sd, -)
# Exactly N requests on one connection (wrk -c1 with a request budget via the lua counter).
perf stat -x, -e "$events" -p "$gw" -o "$OUT/perf.txt" -- \
  env BENCH_BODY="$body" BENCH_LIMIT="$N" wrk -t1 -c1 -d60s -s bench/count.lua \
  "http://127.0.0.1:$GW_PORT$path" > "$OUT/wrk.txt"
sent=$(sed -n 's/^SENT //p' "$OUT/wrk.txt")
total=$(awk -F, '/probe_ai/ {s += $1} END {print s}' "$OUT/perf.txt")
python3 -c "print(f'$MODEL: {$total / $sent:.1f} allocations per request ({$total} over $sent requests)')"
