#!/usr/bin/env bash
# Runs every test: unit, integration (real gateway + mock upstreams) and the official openai
# and anthropic Python SDKs and LangChain against the gateway. Creates .venv with `openai`,
# `anthropic`, `langchain-openai` and `prometheus_client` on first use, and installs redis-server
# when it is missing (the Redis tests start their own on free loopback ports).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup-common.sh
ensure_build_tools
ensure_redis_server

venv=.venv
if ! "$venv/bin/python" -c "import openai, anthropic, prometheus_client, langchain_openai" >/dev/null 2>&1; then
  command -v python3 >/dev/null 2>&1 || apt_install python3 python3-venv
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    rm -rf "$venv"
    apt_install python3-venv
    python3 -m venv "$venv"
  fi
  echo "==> installing the openai and anthropic Python SDKs, langchain-openai and prometheus_client (metrics parser) into $venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check openai anthropic prometheus-client langchain-openai
fi
export AI_GATEWAY_PYTHON="$PWD/$venv/bin/python"

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --locked --all-targets --no-fail-fast "$@" 2>&1 | tee "$log" || status=$?
# One closing line over every test binary, for readers that look only at the last line.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
