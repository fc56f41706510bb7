# Sourced by bench/lib/common.sh: installs the peers pacer is compared with, when missing, and
# sets OHA and WRK (empty when not available) and PEER_VERSIONS. A second run is a no-op.
#
#   oha  from crates.io, pinned: cargo install oha --locked --version $OHA_VERSION into
#        $PACER_TOOLS (default ~/.cache/pacer-tools, outside the repository)
#   wrk  from Debian: apt-get install -y wrk (sudo when not root)
#   k6   not installed and not run: its Go module go.k6.io/k6 (AGPL-3.0) is listed as not to be
#        used in the package policy of the machines this project runs on; every table says so
#        in a k6 row ($K6_NOT_RUN).

OHA_VERSION=${OHA_VERSION:-1.16.0}
PACER_TOOLS=${PACER_TOOLS:-$HOME/.cache/pacer-tools}
K6_NOT_RUN="not run: go.k6.io/k6 (AGPL-3.0) is not-to-use in this machine's package policy"

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

ensure_oha() {
  OHA="$PACER_TOOLS/bin/oha"
  if [ -x "$OHA" ] && "$OHA" --version 2>/dev/null | grep -q " $OHA_VERSION\$"; then
    return 0
  fi
  echo "peers: installing oha $OHA_VERSION from crates.io into $PACER_TOOLS (a few minutes)" >&2
  mkdir -p "$PACER_TOOLS"
  if ! cargo install oha --locked --version "$OHA_VERSION" --root "$PACER_TOOLS" \
    >"$PACER_TOOLS/oha-install.log" 2>&1; then
    echo "peers: cargo install oha failed; see $PACER_TOOLS/oha-install.log:" >&2
    tail -5 "$PACER_TOOLS/oha-install.log" >&2
    OHA=""
    return 1
  fi
}

ensure_wrk() {
  if ! command -v wrk >/dev/null; then
    echo "peers: installing wrk from Debian" >&2
    if ! { as_root apt-get install -y -qq wrk >/dev/null 2>&1 ||
      { as_root apt-get update -qq >/dev/null 2>&1 && as_root apt-get install -y -qq wrk >/dev/null 2>&1; }; }; then
      echo "peers: apt-get install wrk failed" >&2
      WRK=""
      return 1
    fi
  fi
  WRK=$(command -v wrk)
}

ensure_peers() {
  # BENCH_PEERS=0: pacer alone (e.g. two pacer builds compared), nothing installed.
  if [ "${BENCH_PEERS:-1}" = 0 ]; then
    OHA="" WRK=""
    PEER_VERSIONS="not run (BENCH_PEERS=0)"
    return 0
  fi
  ensure_oha || true
  ensure_wrk || true
  local oha_v="missing" wrk_v="missing"
  [ -n "$OHA" ] && oha_v=$("$OHA" --version | head -1)
  # wrk -v prints its version and exits 1
  [ -n "$WRK" ] && wrk_v="$( (wrk -v 2>&1 || true) | head -1 | awk '{print $1, $2}') (Debian $(dpkg-query -W -f='${Version}' wrk 2>/dev/null || echo '?'))"
  PEER_VERSIONS="oha: $oha_v; wrk: $wrk_v; k6: $K6_NOT_RUN"
}
