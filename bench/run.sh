#!/usr/bin/env bash
# Bench harness: direct-to-mock vs through the gateway (and through nginx when installed),
# interleaved in one run so machine noise hits every path alike. Prints the added latency
# p50/p99 at concurrency 1 and the max-RPS ratio. Only loopback traffic, bounded in time.
#
#   bench/run.sh [rounds] [seconds-per-measurement]
#
# BASELINE_BIN=path/to/an/older/ai-gateway adds a "before" path: that binary with the same config
# (minus what it does not know), measured interleaved with this build, for before/after figures.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup-common.sh
ensure_build_tools
command -v wrk >/dev/null 2>&1 || apt_install wrk
command -v python3 >/dev/null 2>&1 || apt_install python3

ROUNDS=${1:-3}
SECS=${2:-5}
CONC=${BENCH_CONCURRENCY:-32}
MOCK_PORT=18081 GW_PORT=18080 GW_ADMIN=19090 NGINX_PORT=18082 LOGGED_PORT=18083 LOGGED_ADMIN=19091
FLOOR_PORT=18084 BASE_PORT=18085 BASE_ADMIN=19092 REDIS_PORT=18086 SHARED_PORT=18087 SHARED_ADMIN=19093
OUT=bench/results
mkdir -p "$OUT/conf"
LOG="$OUT/run-$(date +%Y%m%d-%H%M%S).txt"

cargo build --release --locked --bin ai-gateway --example bench_mock --example bench_floor >/dev/null
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

target/release/examples/bench_mock "$MOCK_PORT" & pids+=($!)
# pingora answering with no work at all: the fastest any pingora-based server can be.
target/release/examples/bench_floor "$FLOOR_PORT" >/dev/null 2>&1 & pids+=($!)
# The configs live in their own folder: the gateways watch it, and the logs below are written
# to $OUT all the time.
cat > "$OUT/conf/gateway.yaml" <<YAML
listen: 127.0.0.1:$GW_PORT
admin: { listen: 127.0.0.1:$GW_ADMIN }
threads: 1
log: { level: warn }
clients:
  - { name: bench-free, api_key: bench-free }
  # Limits far above the bench load: every request pays for admission and settlement.
  - name: bench-limited
    api_key: bench-limited
    rpm: 100000000
    tpm: 1000000000000
    budget: { usd: 1000000000, per: day }
providers:
  mock: { type: openai, base_url: "http://127.0.0.1:$MOCK_PORT/v1", api_key: bench-key }
  mockpriced: { type: openai, base_url: "http://127.0.0.1:$MOCK_PORT/v1", api_key: bench-key }
  dify: { type: dify, base_url: "http://127.0.0.1:$MOCK_PORT/v1", api_key: app-bench-key, app: chat }
  builtin: { type: mock, reply: "Hello! How can I help you today?" } # builtin
  claude: { type: anthropic, base_url: "http://127.0.0.1:$MOCK_PORT/v1", api_key: bench-key } # builtin
scenarios:
  bench:
    targets: [{ provider: mock, model: bench-model }]
  bench-dify:
    targets: [{ provider: dify }]
  bench-priced:
    targets: [{ provider: mockpriced, model: bench-model, cost: { input: 0.15, output: 0.6 } }]
  bench-cached:
    cache: { ttl: 3600s }
    targets: [{ provider: mock, model: bench-model }]
  bench-builtin: # builtin
    targets: [{ provider: builtin, model: bench-model }] # builtin
  bench-claude: # builtin
    targets: [{ provider: claude, model: bench-model }] # builtin
  bench-embed: # builtin
    targets: [{ provider: mock, model: bench-embed }] # builtin
  bench-private: # builtin
    privacy: { action: pseudonymize } # builtin
    targets: [{ provider: mock, model: bench-model }] # builtin
  bench-json: # builtin
    output: { schema: { type: object, required: [label, score] } } # builtin
    targets: [{ provider: mock, model: bench-model }] # builtin
YAML
RUST_LOG=error target/release/ai-gateway -c "$OUT/conf/gateway.yaml" >/dev/null 2>&1 & pids+=($!)
# The same gateway with its JSON access log on, written to a file: the log's cost per request.
sed -e "s/$GW_PORT/$LOGGED_PORT/; s/$GW_ADMIN/$LOGGED_ADMIN/; s/level: warn/level: info/" \
  "$OUT/conf/gateway.yaml" > "$OUT/conf/gateway-logged.yaml"
RUST_LOG=error,access=info target/release/ai-gateway -c "$OUT/conf/gateway-logged.yaml" \
  >"$OUT/access.log" 2>/dev/null & pids+=($!)

paths=("direct http://127.0.0.1:$MOCK_PORT/v1/chat/completions" "gateway http://127.0.0.1:$GW_PORT/v1/chat/completions"
       "logged http://127.0.0.1:$LOGGED_PORT/v1/chat/completions")
ports="$MOCK_PORT $GW_PORT $LOGGED_PORT $FLOOR_PORT"
# The same gateway with its state in a loopback Redis (state.backend: redis). Its in-process L1
# is off (cache.max_entries: 0), so every cache hit is read from Redis.
SHARED=""
if command -v redis-server >/dev/null 2>&1; then
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no >/dev/null 2>&1 & pids+=($!)
  sed -e "s/$GW_PORT/$SHARED_PORT/; s/$GW_ADMIN/$SHARED_ADMIN/" "$OUT/conf/gateway.yaml" > "$OUT/conf/gateway-redis.yaml"
  # A 1 s command timeout: the default 50 ms is exceeded under c=32 on a loaded 2-core VM, and
  # a timed-out admission is served from local memory, which would flatter the Redis rows.
  printf 'state: { backend: redis, url: "redis://127.0.0.1:%s/0", timeout: 1s }\ncache: { max_entries: 0 }\n' "$REDIS_PORT" \
    >> "$OUT/conf/gateway-redis.yaml"
  RUST_LOG=error target/release/ai-gateway -c "$OUT/conf/gateway-redis.yaml" >/dev/null 2>&1 & pids+=($!)
  ports="$ports $REDIS_PORT $SHARED_PORT"
  SHARED=1
fi
if [ -n "${BASELINE_BIN:-}" ]; then
  grep -v '# builtin' "$OUT/conf/gateway.yaml" \
    | sed -e "s/$GW_PORT/$BASE_PORT/; s/$GW_ADMIN/$BASE_ADMIN/" > "$OUT/conf/gateway-before.yaml"
  RUST_LOG=error "$BASELINE_BIN" -c "$OUT/conf/gateway-before.yaml" >/dev/null 2>&1 & pids+=($!)
  paths+=("before http://127.0.0.1:$BASE_PORT/v1/chat/completions")
  ports="$ports $BASE_PORT"
fi
if command -v nginx >/dev/null 2>&1; then
  mkdir -p "$OUT/nginx"
  cat > "$OUT/nginx/nginx.conf" <<NGINX
worker_processes 1;
error_log stderr error;
pid $PWD/$OUT/nginx/nginx.pid;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $PWD/$OUT/nginx; proxy_temp_path $PWD/$OUT/nginx;
  fastcgi_temp_path $PWD/$OUT/nginx; uwsgi_temp_path $PWD/$OUT/nginx; scgi_temp_path $PWD/$OUT/nginx;
  upstream mock { server 127.0.0.1:$MOCK_PORT; keepalive 64; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / { proxy_pass http://mock; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering off; }
  }
}
NGINX
  nginx -c "$PWD/$OUT/nginx/nginx.conf" -p "$PWD/$OUT/nginx" -g 'daemon off;' & pids+=($!)
  paths+=("nginx http://127.0.0.1:$NGINX_PORT/v1/chat/completions")
fi

for port in $ports; do
  for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
done
sleep 0.5

prompt4k() { # model: a ~4 KB Chinese chat request with one phone number in it
  python3 -c 'import json,sys; t="客户咨询了双眼皮手术的恢复期和费用，预算大约一万元，希望下个月安排面诊。"*37+"联系电话13800138000。"; print(json.dumps({"model":sys.argv[1],"messages":[{"role":"user","content":t}]},ensure_ascii=False))' "$1"
}
measure() { # name url conns
  wrk -t1 -c"$3" -d"${SECS}s" -s bench/post.lua "$2" 2>/dev/null | sed -n "s/^RESULT /$1 c=$3 /p"
}
{
  echo "# $(date -u +%FT%TZ) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
  for name_url in "${paths[@]}"; do set -- $name_url; measure "$1" "$2" 1 >/dev/null; done # warm-up
  for r in $(seq "$ROUNDS"); do
    for name_url in "${paths[@]}"; do set -- $name_url; measure "$1" "$2" 1; done
    for name_url in "${paths[@]}"; do set -- $name_url; measure "$1" "$2" "$CONC"; done
    # Dify translation (stream upstream, aggregated to one completion) next to OpenAI passthrough.
    BENCH_BODY='{"model":"bench-dify","messages":[{"role":"user","content":"Say hello"}]}' \
      measure dify "http://127.0.0.1:$GW_PORT/v1/chat/completions" 1
    BENCH_BODY='{"model":"bench-dify","messages":[{"role":"user","content":"Say hello"}]}' \
      measure dify "http://127.0.0.1:$GW_PORT/v1/chat/completions" "$CONC"
    # The built-in mock provider: the whole gateway path with the upstream answered in process.
    BENCH_BODY='{"model":"bench-builtin","messages":[{"role":"user","content":"Say hello"}]}' \
      measure builtin "http://127.0.0.1:$GW_PORT/v1/chat/completions" 1
    BENCH_BODY='{"model":"bench-builtin","messages":[{"role":"user","content":"Say hello"}]}' \
      measure builtin "http://127.0.0.1:$GW_PORT/v1/chat/completions" "$CONC"
    # Claude as an upstream (chat in, Messages stream out and translated back), and the Messages
    # API as a front door to the OpenAI mock (decoded and re-encoded): each next to `gateway`.
    for conns in 1 "$CONC"; do
      measure gateway "http://127.0.0.1:$GW_PORT/v1/chat/completions" "$conns"
      BENCH_BODY='{"model":"bench-claude","messages":[{"role":"user","content":"Say hello"}]}' \
        measure claude "http://127.0.0.1:$GW_PORT/v1/chat/completions" "$conns"
      BENCH_BODY='{"model":"bench","max_tokens":64,"messages":[{"role":"user","content":"Say hello"}]}' \
        measure messages "http://127.0.0.1:$GW_PORT/v1/messages" "$conns"
      # The Responses API door to the OpenAI mock (store: false: the bench measures the
      # translation, not the conversation store).
      BENCH_BODY='{"model":"bench","input":"Say hello","store":false}' \
        measure responses "http://127.0.0.1:$GW_PORT/v1/responses" "$conns"
      # Structured output: the answer collected, its JSON extracted and validated against the
      # scenario's schema, then written (the mock answers valid JSON: no repair).
      BENCH_BODY='{"model":"bench-json","messages":[{"role":"user","content":"Say hello"}]}' \
        measure validated "http://127.0.0.1:$GW_PORT/v1/chat/completions" "$conns"
    done
    # Privacy: a 4 KB Chinese prompt with a phone number, through a scenario that pseudonymizes
    # it (detected, rewritten, the answer decoded to restore it) next to the same prompt
    # relayed as it is.
    for conns in 1 "$CONC"; do
      for name in plain4k private private plain4k; do
        model=bench; [ "$name" = private ] && model=bench-private
        BENCH_BODY=$(prompt4k "$model") measure "$name" "http://127.0.0.1:$GW_PORT/v1/chat/completions" "$conns"
      done
    done
    # The same priced scenario from a client without limits and from one with RPM, TPM and a
    # budget: the difference is the limiter's cost.
    BENCH_BODY='{"model":"bench-priced","messages":[{"role":"user","content":"Say hello"}]}' \
      measure unlimited "http://127.0.0.1:$GW_PORT/v1/chat/completions" 1
    BENCH_BODY='{"model":"bench-priced","messages":[{"role":"user","content":"Say hello"}]}' \
      measure unlimited "http://127.0.0.1:$GW_PORT/v1/chat/completions" "$CONC"
    BENCH_KEY=bench-limited BENCH_BODY='{"model":"bench-priced","messages":[{"role":"user","content":"Say hello"}]}' \
      measure limited "http://127.0.0.1:$GW_PORT/v1/chat/completions" 1
    BENCH_KEY=bench-limited BENCH_BODY='{"model":"bench-priced","messages":[{"role":"user","content":"Say hello"}]}' \
      measure limited "http://127.0.0.1:$GW_PORT/v1/chat/completions" "$CONC"
    if [ -n "$SHARED" ]; then
      # The limited client again, its admission and settlement decided in Redis: next to
      # `limited` (memory) in ABBA order, since position alone moves a figure.
      for conns in 1 "$CONC"; do
        for name in rlimited limited limited rlimited; do
          port=$GW_PORT; [ "$name" = rlimited ] && port=$SHARED_PORT
          BENCH_KEY=bench-limited BENCH_BODY='{"model":"bench-priced","messages":[{"role":"user","content":"Say hello"}]}' \
            measure "$name" "http://127.0.0.1:$port/v1/chat/completions" "$conns"
        done
      done
    fi
    # Cache hits (the same request every time; only the very first one reaches the mock), each
    # right next to what a hit is compared with: the direct round trip to the mock, and the
    # pingora floor.
    for conns in 1 "$CONC"; do
      measure direct "http://127.0.0.1:$MOCK_PORT/v1/chat/completions" "$conns"
      measure floor "http://127.0.0.1:$FLOOR_PORT/v1/chat/completions" "$conns"
      BENCH_BODY='{"model":"bench-cached","messages":[{"role":"user","content":"Say hello"}]}' \
        measure cached "http://127.0.0.1:$GW_PORT/v1/chat/completions" "$conns"
      # Hits read from Redis (the L1 holds nothing) right after hits from the L1.
      [ -n "$SHARED" ] && BENCH_BODY='{"model":"bench-cached","messages":[{"role":"user","content":"Say hello"}]}' \
        measure rcached "http://127.0.0.1:$SHARED_PORT/v1/chat/completions" "$conns"
    done
    # Embeddings relayed byte for byte (a ~5 KB answer) next to nginx proxying the same call.
    if command -v nginx >/dev/null 2>&1; then
      for conns in 1 "$CONC"; do
        for name in embeddings nginxemb nginxemb embeddings; do
          port=$GW_PORT; [ "$name" = nginxemb ] && port=$NGINX_PORT
          BENCH_BODY='{"model":"bench-embed","input":"Say hello"}' \
            measure "$name" "http://127.0.0.1:$port/v1/embeddings" "$conns"
        done
      done
    fi
    if [ -n "${BASELINE_BIN:-}" ]; then
      # This build and the baseline in ABBA order: in the rows above each always follows the
      # same path, and position alone moves a figure by several percent on this machine.
      for conns in 1 "$CONC"; do
        measure abnew "http://127.0.0.1:$GW_PORT/v1/chat/completions" "$conns"
        measure abold "http://127.0.0.1:$BASE_PORT/v1/chat/completions" "$conns"
        measure abold "http://127.0.0.1:$BASE_PORT/v1/chat/completions" "$conns"
        measure abnew "http://127.0.0.1:$GW_PORT/v1/chat/completions" "$conns"
      done
    fi
  done
} | tee "$LOG"

# Figures for Redis are only figures for Redis if no command fell back (an error or a timeout
# serves from per-replica memory): the run records the shared-state errors it saw.
[ -n "$SHARED" ] && { curl -s "http://127.0.0.1:$SHARED_ADMIN/metrics" | grep '^ai_gateway_state_errors_total' \
  || echo "ai_gateway_state_errors_total: none"; } | sed 's/^/# redis gateway: /' | tee -a "$LOG"

python3 bench/summarize.py "$LOG" "$CONC"
