#!/usr/bin/env bash
# The controller at scale (a benchmark, not a test; issue 23): `pacer controller` on loopback
# with 1000 simulated workers (crates/pacer-controller/examples/worker_sim.rs: one process, one
# gRPC connection and session per worker, the real protocol, a cumulative report per worker
# every second of a plan of 3 scenarios x 10 requests, an abortOnFail threshold the simulator
# crosses near the end). Prints the controller's RSS (peak and steady, from /proc/PID/status
# every second), its CPU share (utime+stime from /proc/PID/stat over the run's wall time), the
# status latency (a worker's report to the `--metrics` merge that includes it, measured by the
# simulator) and the abort time (the reports that cross the threshold to the Stop at each
# worker). Results are written up in docs/benchmarks.md, "Controller at scale".
#
# Environment:
#   BENCH_QUICK=1      20 s instead of 10 minutes (checks that the script works)
#   BENCH_SECS=N       the run's length in seconds (default 600; quick 20)
#   BENCH_WORKERS=N    simulated workers (default 1000)
#   BENCH_FAIL_AT=T    the second from which the workers report drops (default BENCH_SECS - 5)
#   BENCH_OUT=DIR      keep the raw outputs there (default: a temporary directory, removed)
#   PACER_BIN, SIM_BIN the pacer binary and the simulator to measure (default: built here)
#   HEAPTRACK=1        run the controller under heaptrack (RSS and CPU then include heaptrack's)
#   CONTROLLER_CPU, SIM_CPU  cores to pin them to (default 0 and 1 on 2 cores or more)
#   BENCH_MAX_RSS_MIB  stop the controller when its RSS passes this (default: half the memory
#                      available at the start): at 1000 workers it has reached 11 GiB
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=${BENCH_QUICK:-0}
if [ "$QUICK" = 1 ]; then SECS=${BENCH_SECS:-20}; else SECS=${BENCH_SECS:-600}; fi
WORKERS=${BENCH_WORKERS:-1000}
FAIL_AT=${BENCH_FAIL_AT:-$((SECS - 5))}
# How long the workers may take to join, and the bound on the whole run past its length.
JOIN_BOUND=180
if [ -n "${BENCH_OUT:-}" ]; then
  mkdir -p "$BENCH_OUT"
  OUT=$(cd "$BENCH_OUT" && pwd)
  KEEP=1
else
  OUT=$(mktemp -d /tmp/pacer-controller-scale.XXXXXX)
  KEEP=0
fi

if [ -z "${PACER_BIN:-}" ]; then
  cargo build -q --release -p pacer-cli
  PACER_BIN=target/release/pacer
fi
if [ -z "${SIM_BIN:-}" ]; then
  cargo build -q --release -p pacer-controller --example worker_sim
  SIM_BIN=target/release/examples/worker_sim
fi
if [ "$(nproc)" -ge 2 ]; then
  PIN_CONTROLLER=(taskset -c "${CONTROLLER_CPU:-0}")
  PIN_SIM=(taskset -c "${SIM_CPU:-1}")
else
  PIN_CONTROLLER=(env)
  PIN_SIM=(env)
fi
WRAP=(env)
if [ "${HEAPTRACK:-0}" = 1 ]; then WRAP=(heaptrack -o "$OUT/heaptrack.controller"); fi

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
port=$(free_port)
mport=$(free_port)
token=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

"$SIM_BIN" --print-plan --workers "$WORKERS" --seconds "$SECS" >"$OUT/plan.yaml"
echo "machine: $(nproc) cores ($(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)), load average $(cut -d' ' -f1-3 /proc/loadavg); $(date -u +%Y-%m-%dT%H:%MZ); build $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates || echo +dirty)"
echo "controller: $WORKERS workers x $(grep -c '^  - name: s' "$OUT/plan.yaml") scenarios, ${SECS}s, reports drop iterations from second $FAIL_AT (abortOnFail)"

"${PIN_CONTROLLER[@]}" "${WRAP[@]}" "$PACER_BIN" controller --plan "$OUT/plan.yaml" \
  --expect-workers "$WORKERS" --listen "127.0.0.1:$port" --insecure-plaintext \
  --session-token "$token" --test-id sim --wait-for-workers "${JOIN_BOUND}s" \
  --metrics "127.0.0.1:$mport" --summary-json "$OUT/summary.json" \
  >"$OUT/controller.out" 2>"$OUT/controller.err" &
wrapper=$!
cleanup() {
  kill "$wrapper" 2>/dev/null || true
  if [ "$KEEP" = 0 ]; then rm -rf "$OUT"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# The controller itself (under heaptrack: the wrapper's child running pacer).
cpid=$wrapper
for _ in $(seq 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
  sleep 0.1
done
if [ "${HEAPTRACK:-0}" = 1 ]; then
  for p in $(pgrep -P "$wrapper"); do
    if [ "$(readlink "/proc/$p/exe")" = "$(readlink -f "$PACER_BIN")" ]; then cpid=$p; fi
  done
fi

# The benchmark must not take the machine's memory: the controller is stopped past this.
MAX_RSS_KB=$(( ${BENCH_MAX_RSS_MIB:-$(awk '/^MemAvailable:/ {print int($2 / 2048)}' /proc/meminfo)} * 1024 ))
# RSS (kB) and CPU ticks of the controller every second, until it exits (bounded).
(
  for _ in $(seq $((SECS + JOIN_BOUND + 120))); do
    [ -r "/proc/$cpid/stat" ] || break
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$cpid/status" 2>/dev/null) || break
    if [ "${rss:-0}" -gt "$MAX_RSS_KB" ]; then
      echo "controller stopped: RSS $((rss / 1024)) MiB passed BENCH_MAX_RSS_MIB=$((MAX_RSS_KB / 1024))" >"$OUT/rss-guard"
      kill "$cpid" 2>/dev/null || true
    fi
    ticks=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$cpid/stat" 2>/dev/null) || break
    echo "$(date +%s.%N) ${rss:-0} ${ticks:-0}"
    sleep 1
  done
) >"$OUT/samples.txt" &
sampler=$!

began=$(date +%s.%N)
rc=0
"${PIN_SIM[@]}" timeout -k 5 $((SECS + JOIN_BOUND + 60)) "$SIM_BIN" \
  --controller "127.0.0.1:$port" --workers "$WORKERS" --seconds "$SECS" \
  --session-token "$token" --test-id sim --metrics "127.0.0.1:$mport" --fail-at "$FAIL_AT" \
  >"$OUT/sim.out" 2>"$OUT/sim.err" || rc=$?
# The controller ends once every worker has finished (bounded: then it is stopped).
for _ in $(seq 300); do kill -0 "$wrapper" 2>/dev/null || break; sleep 0.1; done
kill "$wrapper" 2>/dev/null || true
wait "$wrapper" 2>/dev/null || true
wait "$sampler" 2>/dev/null || true
if [ -e "$OUT/rss-guard" ]; then cat "$OUT/rss-guard"; fi
cat "$OUT/sim.out"
if [ "$rc" = 1 ]; then
  # Workers refused or lost by the controller: a result (the simulator names them), not a
  # broken benchmark; `make bench` goes on.
  echo "controller-scale: $(sed -n 's/.* failed=\([0-9]*\).*/\1/p' "$OUT/sim.out") simulated workers failed (see above)"
  rc=0
elif [ "$rc" != 0 ]; then
  echo "controller-scale: the simulator exited $rc; its stderr and the controller's:" >&2
  tail -n 5 "$OUT/sim.err" "$OUT/controller.err" >&2 || true
fi

python3 - "$OUT/samples.txt" "$OUT/sim.out" "$began" "$FAIL_AT" "$(getconf CLK_TCK)" <<'EOF'
import re, statistics, sys
samples_path, sim_path, began, fail_at, tck = sys.argv[1:]
began, fail_at, tck = float(began), float(fail_at), float(tck)
rows = []
for line in open(samples_path):
    parts = line.split()
    if len(parts) == 3:
        rows.append((float(parts[0]) - began, int(parts[1]) / 1024.0, float(parts[2]) / tck))
sim = open(sim_path).read()
m = re.search(r"join_s=([0-9.]+)", sim)
join = float(m.group(1)) if m else 0.0
if not rows:
    print("controller: no samples"); sys.exit(0)
peak = max(r[1] for r in rows)
# Steady: the run between 5 s after the start and the failing second (joining and the end apart).
run = [r for r in rows if join + 5 <= r[0] <= join + fail_at - 1]
steady = statistics.median(r[1] for r in run) if run else float("nan")
if len(run) >= 2:
    share = (run[-1][2] - run[0][2]) / (run[-1][0] - run[0][0])
else:
    share = float("nan")
whole = rows[-1][2] / rows[-1][0] if rows[-1][0] > 0 else float("nan")
joined = [r for r in rows if r[0] <= join]
join_cpu = joined[-1][2] if joined else float("nan")
print(f"controller RSS: peak {peak:.0f} MiB, steady (median while running) {steady:.0f} MiB, "
      f"at the end {rows[-1][1]:.0f} MiB")
print(f"controller CPU: {share:.2f} of a core while running ({len(run)} s), "
      f"{join_cpu:.1f} CPU-s for the {join:.0f} s of joining, {whole:.2f} of a core over everything")
print(f"RESULT rss_peak_mib={peak:.0f} rss_steady_mib={steady:.0f} cpu_share={share:.3f} join_cpu_s={join_cpu:.1f}")
EOF
grep -E "abort|panicked" "$OUT/controller.err" | head -3 || true
exit "$rc"
