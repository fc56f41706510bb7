#!/usr/bin/env bash
# Installs what the build and the tests need when it is missing, so `make test` works on a
# fresh machine. Everything comes from the distribution or crates.io.
set -euo pipefail

need_apt=()
command -v cc >/dev/null || need_apt+=(build-essential)
command -v cmake >/dev/null || need_apt+=(cmake)          # aws-lc-sys (rustls' crypto provider)
command -v redis-server >/dev/null || need_apt+=(redis-tools redis-server)  # the fleet tests
# tests/tests/shapes.rs: nginx's limit_req, a token bucket written by others (Debian: /usr/sbin)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need_apt+=(nginx-light)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null; then
  echo "cargo is missing: install Rust (rustup) first" >&2
  exit 1
fi
if ! cargo fmt --version >/dev/null 2>&1; then rustup component add rustfmt; fi
if ! cargo clippy --version >/dev/null 2>&1; then rustup component add clippy; fi
