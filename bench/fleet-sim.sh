#!/usr/bin/env bash
# The fleet limiter under load (a benchmark, not a test): 1000 simulated workers in one process,
# each with its own Redis connection and lease, share one `scope: fleet` limit of 20000/s (over a
# 10 s window) through one throwaway redis-server on loopback. Prints the achieved rate, the
# worst window against the limit, Redis commands/s and Redis' CPU. Extra arguments go to the
# simulation (e.g. --workers 200 --seconds 20); results are written up in docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null; then
  echo "fleet-sim: redis-server is missing: run \`make deps\`" >&2
  exit 1
fi
cargo build -q --release -p pacer-limiter --example fleet_sim

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --maxclients 10000 \
  >/dev/null 2>&1 &
redis_pid=$!
trap 'kill "$redis_pid" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  redis-cli -p "$port" ping >/dev/null 2>&1 && break
  sleep 0.05
done

echo "machine: $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB memory, $(redis-server --version | awk '{print $1, $2, $3}')"
ulimit -n 20000 2>/dev/null || true
timeout 300 target/release/examples/fleet_sim --redis "redis://127.0.0.1:$port" "$@"
