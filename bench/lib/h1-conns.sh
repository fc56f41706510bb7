#!/usr/bin/env bash
# By hand (not part of `make bench`): RSS per hyper HTTP/1.1 connection, apart from pacer's
# engine (bench/lib/h1-conns/src/main.rs), with hyper's adaptive read buffer and a 1 KiB exact
# one, and with jemalloc's default dirty-page decay (10 s) and none. The target is `pacer mock
# --latency fixed:2s` on cpu 0, the client on cpu 1. N=9000 by default (under a 20000 open-files
# limit). Write-up: docs/benchmarks.md, "10,000 in flight".
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-9000}
PACER=${PACER_BIN:-target/release/pacer}
cargo build -q --release --manifest-path bench/lib/h1-conns/Cargo.toml
BIN=bench/lib/h1-conns/target/release/h1-conns
ulimit -n "$(ulimit -Hn)"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
taskset -c 0 "$PACER" mock --listen "127.0.0.1:$PORT" --auth off --no-limits --latency fixed:2s >/dev/null 2>&1 &
MOCK=$!
trap 'kill $MOCK 2>/dev/null || true' EXIT
sleep 1
for cfg in "READBUF=" "READBUF=1024" "READBUF= _RJEM_MALLOC_CONF=dirty_decay_ms:0" "READBUF=1024 _RJEM_MALLOC_CONF=dirty_decay_ms:0"; do
  # loopback's TIME_WAIT sockets from the last run drain first (up to 90 s)
  for _ in $(seq 30); do [ "$(ss -Htan state time-wait | wc -l)" -lt 1000 ] && break; sleep 3; done
  echo "== $cfg"
  env $cfg N="$N" ROUNDS=3 ADDR="127.0.0.1:$PORT" timeout 120 taskset -c 1 "$BIN"
done
