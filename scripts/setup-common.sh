# Shared by scripts/run.sh and scripts/test.sh: make sure the build prerequisites exist.
# pingora's rustls build compiles zlib-ng with cmake and ring/zstd with a C compiler.

apt_install() {
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing $* (apt-get)"
    if [ -z "${AI_GATEWAY_APT_UPDATED:-}" ]; then
      apt-get update -qq >/dev/null
      export AI_GATEWAY_APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    echo "error: missing $*; install it (e.g. sudo apt-get install -y $*) and run this again" >&2
    exit 1
  fi
}

ensure_build_tools() {
  command -v cargo >/dev/null 2>&1 || {
    echo "error: cargo not found; install the Rust toolchain (https://rustup.rs) first" >&2
    exit 1
  }
  command -v cc >/dev/null 2>&1 || apt_install build-essential
  command -v cmake >/dev/null 2>&1 || apt_install cmake
}

# The shared-state tests (tests/support/redis.rs) start their own redis-server on free loopback
# ports: only the program is needed, never a running service, so the package's service is kept
# from starting (and from starting at boot). AI_GATEWAY_REDIS_SERVER names another
# Redis-protocol server to use instead (e.g. valkey-server).
ensure_redis_server() {
  if [ -n "${AI_GATEWAY_REDIS_SERVER:-}" ]; then
    command -v "$AI_GATEWAY_REDIS_SERVER" >/dev/null 2>&1 && return 0
    echo "error: AI_GATEWAY_REDIS_SERVER=$AI_GATEWAY_REDIS_SERVER not found on PATH" >&2
    exit 1
  fi
  command -v redis-server >/dev/null 2>&1 && return 0
  if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "error: redis-server not found; the Redis tests run a real one on loopback. Install it" \
      "(e.g. sudo apt-get install -y redis-server; its service need not run) and run this again" >&2
    exit 1
  fi
  (
    # policy-rc.d answering 101 is Debian's way to say "install, do not start".
    policy=/usr/sbin/policy-rc.d
    if [ ! -e "$policy" ]; then
      trap 'rm -f "$policy"' EXIT
      printf '#!/bin/sh\nexit 101\n' >"$policy"
      chmod 755 "$policy"
    fi
    apt_install redis-server
  )
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now redis-server >/dev/null 2>&1 || true
  fi
  command -v redis-server >/dev/null 2>&1 || {
    echo "error: redis-server is still not on PATH after installing it" >&2
    exit 1
  }
}
