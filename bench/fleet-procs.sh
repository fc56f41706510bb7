#!/usr/bin/env bash
# The fleet limiter's cost with real processes (a benchmark, not a test): 8 `pacer run --redis`
# processes share one `scope: fleet` per-token limit of the mock API (1000/s) through one
# throwaway redis-server, all on loopback. For each case it prints the requests, the most the
# mock saw in any window of the limit, Redis' own command count (INFO commandstats, commands run
# inside scripts included), the calls the processes sent, and Redis' CPU.
#
#   bash bench/fleet-procs.sh              # every case: 90 s with the 60 s window, 30 s with 5 s
#   LONG_SECONDS=65 SECONDS_PER_CASE=10 bash bench/fleet-procs.sh
#
# Cases: the limit over a 60 s window (lease hold 600 ms) and over a 5 s window (hold 50 ms),
# each with the processes offering their share (0.96x the limit: no backlog) and 3x of it.
set -euo pipefail
cd "$(dirname "$0")/.."

PROCS=${PROCS:-8}
SECS=${SECONDS_PER_CASE:-30}
LONG_SECS=${LONG_SECONDS:-90}
for tool in redis-server redis-cli python3 curl; do
  command -v "$tool" >/dev/null || { echo "fleet-procs: $tool is missing: run \`make deps\`" >&2; exit 1; }
done
cargo build -q --release -p pacer-cli
PACER=target/release/pacer

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

rport=$(free_port)
redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 100); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.05; done

echo "machine: $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB memory, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(redis-server --version | awk '{print $1, $2, $3}'); $(date -u +%F)"
echo "$PROCS processes; ${LONG_SECS} s per case with the 60 s window, ${SECS} s with the 5 s window"
printf '| limit | offered | requests | accepted/s (of the limit) | most in a window (limit) | Redis commands/request | calls/request (processes) | Redis CPU |\n|---|---|---|---|---|---|---|---|\n'

run_case() {
  local window=$1 count=$2 factor=$3 secs=$4
  local mport; mport=$(free_port)
  "$PACER" mock --listen "127.0.0.1:$mport" --latency fixed:2ms --token-rate-limit off \
    --limit "per-token:token:${count}/${window}s" >/dev/null 2>&1 &
  local mock=$!
  pids+=("$mock")
  for _ in $(seq 100); do curl -fs "127.0.0.1:$mport/_mock/stats" >/dev/null 2>&1 && break; sleep 0.05; done
  local share rate
  share=$(python3 -c "print($count / $window / $PROCS)")
  rate=$(python3 -c "print(max(1, round($share * $factor)))")
  cat >"$work/plan.yaml" <<EOF
name: fleet-procs
target: http://127.0.0.1:$mport
auth:
  - { name: g, type: oauth2-clientCredentials, tokenUrl: /oauth/token, clientId: pacer-demo, clientSecret: demo-secret }
limits:
  - { name: per-token, limit: ${count}/${window}s, scope: fleet }
scenarios:
  - name: s
    executor: constant-arrival-rate
    rate: ${rate}/s
    duration: ${secs}s
    maxInFlight: 200
    gracefulStop: 1s
    auth: g
    requests: [{ name: r, path: /api/v2/users/me }]
EOF
  redis-cli -p "$rport" config resetstat >/dev/null
  local cpu0; cpu0=$(redis-cli -p "$rport" info cpu | awk -F: '/used_cpu_(sys|user):/ {s+=$2} END {print s}')
  local fleet="bench-$window-$factor-$$"
  local runs=()
  for i in $(seq 0 $((PROCS - 1))); do
    timeout $((secs + 60)) "$PACER" run "$work/plan.yaml" -q --redis "redis://127.0.0.1:$rport" \
      --fleet "$fleet" --summary-json "$work/s$i.json" >/dev/null 2>"$work/e$i.log" &
    runs+=($!)
  done
  for p in "${runs[@]}"; do wait "$p" || true; done
  local cpu1; cpu1=$(redis-cli -p "$rport" info cpu | awk -F: '/used_cpu_(sys|user):/ {s+=$2} END {print s}')
  local cmds; cmds=$(redis-cli -p "$rport" info commandstats | sed -n 's/^cmdstat_[^:]*:calls=\([0-9]*\),.*/\1/p' | awk '{s+=$1} END {print s+0}')
  curl -fs "127.0.0.1:$mport/_mock/stats" >"$work/stats.json"
  kill "$mock" 2>/dev/null || true
  python3 - "$work" "$PROCS" "$cmds" "$cpu0" "$cpu1" "$secs" "$window" "$count" "$factor" <<'PY'
import json, sys
work, procs, cmds, cpu0, cpu1, secs, window, count, factor = sys.argv[1:]
procs, cmds, secs = int(procs), int(cmds), float(secs)
st = json.load(open(f"{work}/stats.json"))
lim = st["limits"][0]
reqs = lim["accepted"] + lim["rejected"]
calls = sum(json.load(open(f"{work}/s{i}.json"))["limits"][0]["fleet"]["redis_calls"] for i in range(procs))
cpu = (float(cpu1) - float(cpu0)) / secs * 100
rate = lim["accepted"] / secs
print(f"| {count}/{window}s | {float(factor):.2f}x the limit | {reqs} ({lim['rejected']} got 429) | "
      f"{rate:.0f} ({rate / (int(count) / int(window)) * 100:.1f}%) | "
      f"{lim['maxOfferedInWindow']} ({count}) | {cmds / reqs:.4f} | {calls / reqs:.4f} | {cpu:.1f}% of a core |")
PY
}

run_case 60 60000 0.96 "$LONG_SECS"
run_case 60 60000 3 "$LONG_SECS"
run_case 5 5000 0.96 "$SECS"
run_case 5 5000 3 "$SECS"
