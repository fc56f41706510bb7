# Sourced by the bench/peers-*.sh scripts (never run on its own: bench/run.sh runs only
# bench/*.sh). Builds pacer (release), installs the peers (bench/lib/peers.sh), starts targets
# on loopback pinned to one core, runs clients pinned to the other, and measures CPU and RSS.
#
# Environment:
#   BENCH_QUICK=1         short runs, one round: checks that the scripts work, numbers are rough
#   BENCH_ROUNDS=N        alternating rounds per tool (default 3, quick 1)
#   BENCH_OUT=DIR         keep raw outputs there (default: a temporary directory, removed)
#   PACER_BIN=PATH        a pacer binary to measure instead of building target/release/pacer
#   BENCH_PEERS=0         pacer alone: the peers (oha, wrk) are neither installed nor run
#   SERVER_CPU, CLIENT_CPU  cores to pin target and client to (default 0 and 1)

set -euo pipefail

BENCH_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$BENCH_ROOT"
# shellcheck source=bench/lib/peers.sh
source "$BENCH_ROOT/bench/lib/peers.sh"

BENCH_QUICK=${BENCH_QUICK:-0}
if [ "$BENCH_QUICK" = 1 ]; then
  BENCH_ROUNDS=${BENCH_ROUNDS:-1}
else
  BENCH_ROUNDS=${BENCH_ROUNDS:-3}
fi
CLK_TCK=$(getconf CLK_TCK)
STATS_PY="$BENCH_ROOT/bench/lib/stats.py"

# Commands to prefix (arrays, not functions: `PIN... cmd &` must leave $! the command's pid).
if [ "$(nproc)" -ge 2 ]; then
  SERVER_CPU=${SERVER_CPU:-0}
  CLIENT_CPU=${CLIENT_CPU:-1}
  PIN_SERVER=(taskset -c "$SERVER_CPU")
  PIN_CLIENT=(taskset -c "$CLIENT_CPU")
else
  SERVER_CPU=all CLIENT_CPU=all
  PIN_SERVER=(env)
  PIN_CLIENT=(env)
fi

if [ -n "${BENCH_OUT:-}" ]; then
  mkdir -p "$BENCH_OUT"
  OUT=$(cd "$BENCH_OUT" && pwd)
  KEEP_OUT=1
else
  OUT=$(mktemp -d /tmp/pacer-bench.XXXXXX)
  KEEP_OUT=0
fi

TARGET_PID=""
bench_cleanup() {
  stop_target
  if [ "$KEEP_OUT" = 0 ]; then rm -rf "$OUT"; fi
}
trap bench_cleanup EXIT
trap 'exit 130' INT TERM

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# The pacer binary under test: target/release/pacer (built here) or $PACER_BIN.
ensure_pacer() {
  if [ -n "${PACER_BIN:-}" ]; then
    PACER=$PACER_BIN
  else
    cargo build -q --release -p pacer-cli
    PACER="$BENCH_ROOT/target/release/pacer"
  fi
  [ -x "$PACER" ] || { echo "bench: no pacer binary at $PACER" >&2; exit 1; }
}

machine_line() {
  local cpu
  cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
  echo "machine: $(nproc) cores ($cpu), $(free -g | awk '/^Mem:/ {print $2}') GiB memory;" \
    "target pinned to cpu $SERVER_CPU, client to cpu $CLIENT_CPU; load average $(cut -d' ' -f1-3 /proc/loadavg);" \
    "$(date -u +%Y-%m-%dT%H:%MZ)"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_port() {
  local port=$1
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "bench: nothing listens on 127.0.0.1:$port" >&2
  return 1
}

# start_target ARGS...: `pacer mock --listen 127.0.0.1:PORT ARGS...` on the server core.
# Sets TARGET_PID, TARGET_PORT, TARGET_URL.
start_target() {
  stop_target
  TARGET_PORT=$(free_port)
  "${PIN_SERVER[@]}" "$PACER" mock --listen "127.0.0.1:$TARGET_PORT" "$@" >"$OUT/target.log" 2>&1 &
  TARGET_PID=$!
  TARGET_URL="http://127.0.0.1:$TARGET_PORT"
  export BENCH_TARGET=$TARGET_URL
  wait_port "$TARGET_PORT"
}

stop_target() {
  if [ -n "$TARGET_PID" ]; then
    kill "$TARGET_PID" 2>/dev/null || true
    wait "$TARGET_PID" 2>/dev/null || true
    TARGET_PID=""
  fi
}

# CPU time (user + system) of a process so far, in seconds.
proc_cpu_secs() {
  awk -v tck="$CLK_TCK" '{ sub(/^.*\) /, ""); print ($12 + $13) / tck }' "/proc/$1/stat"
}

# timed NAME SECS CMD...: runs CMD on the client core, bounded by SECS (then SIGINT, and KILL
# 5 s later), with /usr/bin/time. Writes $OUT/NAME.out, $OUT/NAME.err and $OUT/NAME.time
# ("elapsed user system maxrss_kb"), and NAME.target_cpu: the target's CPU seconds meanwhile.
timed() {
  local name=$1 secs=$2
  shift 2
  local before after rc=0
  before=$(proc_cpu_secs "$TARGET_PID")
  /usr/bin/time -f '%e %U %S %M' -o "$OUT/$name.time" \
    "${PIN_CLIENT[@]}" timeout -s INT -k 5 "$secs" "$@" \
    >"$OUT/$name.out" 2>"$OUT/$name.err" || rc=$?
  after=$(proc_cpu_secs "$TARGET_PID")
  echo "$before $after" | awk '{print $2 - $1}' >"$OUT/$name.target_cpu"
  # 99 is pacer's "a threshold failed", 124 timeout's; anything else is a failed run.
  if [ "$rc" != 0 ] && [ "$rc" != 99 ]; then
    echo "bench: $name exited $rc; stderr:" >&2
    tail -5 "$OUT/$name.err" >&2 || true
    return "$rc"
  fi
}

# The client's CPU seconds (user + system) and peak RSS in MB of a timed run.
time_cpu() { awk '{print $2 + $3}' "$OUT/$1.time"; }
time_rss_mb() { awk '{printf "%.1f\n", $4 / 1024}' "$OUT/$1.time"; }
time_elapsed() { awk '{print $1}' "$OUT/$1.time"; }

# A pacer plan with one GET / scenario; the executor lines come as the second argument. Its
# target is the running target (start_target exports BENCH_TARGET). No correlation id: the
# peers send the same bare GET, so every generator sends the same bytes.
write_plan() {
  local file=$1 executor=$2
  cat >"$file" <<EOF
name: bench
target: \${env:BENCH_TARGET:-http://127.0.0.1:9}
http: { timeout: 60s, maxIdlePerHost: 20000, correlationId: false }
retry: { maxAttempts: 1 }
scenarios:
  - name: get
$executor
    requests:
      - { name: get, method: GET, path: / }
EOF
}

# stats FILE: "median min max n" of the numbers in FILE (one a line).
stats() { python3 "$STATS_PY" summary "$1"; }
