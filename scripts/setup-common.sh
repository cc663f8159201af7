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
