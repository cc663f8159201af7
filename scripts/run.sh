#!/usr/bin/env bash
# Builds and runs the gateway with the shipped gateway.yaml (or the file given as $1).
# Keys come from the environment (see gateway.yaml); with none set it starts and serves
# /health, /v1/models and /metrics, and answers chat requests with a clear 502.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup-common.sh
ensure_build_tools
exec cargo run --release --locked -- -c "${1:-gateway.yaml}"
