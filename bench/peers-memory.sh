#!/usr/bin/env bash
# Memory (issue 7, item 4): peak RSS at 1000 and 10000 requests in flight. The target is
# `pacer mock --latency fixed:1s` (no auth, no limits), so RATE/s arrivals keep RATE requests
# in flight: pacer constant-arrival-rate RATE/s, `oha -q RATE -c RATE`, and wrk closed model
# with RATE connections (RATE in flight at 1 s each). Peak RSS from /usr/bin/time.
# Then pacer alone at 1000/s for SOAK_SECS (default 180 s; BENCH_SOAK_SECS=600 for the
# 10-minute goal), sampling its RSS every few seconds: it must stay flat (HDR histograms, no
# raw samples). BENCH_IN_FLIGHT= (empty) runs the soak alone. BENCH_QUICK=1: 8 s runs, 20 s
# soak. Every run waits (up to 90 s) for loopback's TIME_WAIT sockets to drain first.
# BENCH_SOAK_SECS=0 skips the soak. BENCH_LATENCY=S (default 1): the target answers after S
# seconds, and a level of N in flight is N/S arrivals a second (pacer, oha) or N connections
# (wrk): BENCH_IN_FLIGHT=20000 BENCH_LATENCY=2 is 10000/s held 2 s each. Each run also reports
# the most connections the client held to the target (`ss`, sampled every second): RSS per
# connection is what the breakdown in docs/benchmarks.md ("10,000 in flight") is about.
# Write-up: docs/benchmarks.md.
source "$(dirname "$0")/lib/common.sh"

if [ "$BENCH_QUICK" = 1 ]; then
  SECS=8 SOAK_SECS=${BENCH_SOAK_SECS:-20} EVERY=2
else
  SECS=${BENCH_SECS:-30} SOAK_SECS=${BENCH_SOAK_SECS:-180} EVERY=5
fi
LEVELS=${BENCH_IN_FLIGHT-1000 10000}  # BENCH_IN_FLIGHT= (empty): the soak alone
LATENCY=${BENCH_LATENCY:-1}            # the target's fixed latency, whole seconds

ensure_pacer
ensure_peers
machine_line
echo "peers: $PEER_VERSIONS"
echo "memory: target pacer mock --auth off --no-limits --latency fixed:${LATENCY}s; ${SECS}s runs; $BENCH_ROUNDS rounds; soak ${SOAK_SECS}s; open files limit $(ulimit -n) (hard $(ulimit -Hn))"

# plan RATE SECS [IN_FLIGHT]: room for twice the requests expected in flight (RATE by default).
plan() {
  write_plan "$OUT/plan-$1-$2.yaml" "    executor: constant-arrival-rate
    rate: $1/s
    duration: ${2}s
    maxInFlight: $((${3:-$1} * 2))"
  "$PACER" validate "$OUT/plan-$1-$2.yaml" >/dev/null
}

# Every run starts with loopback's ephemeral ports free: a run leaves up to 2 x RATE sockets in
# TIME_WAIT for 60 s, and a client connecting while 20000 of the 28000 ports are taken spends
# its core in the kernel's port search (__inet_hash_connect), whichever tool it is.
drain_time_wait() {
  local n waited=0
  while n=$(ss -Htan state time-wait | wc -l) && [ "$n" -gt 1000 ] && [ "$waited" -lt 90 ]; do
    sleep 5
    waited=$((waited + 5))
  done
}
start() {
  drain_time_wait
  start_target --auth off --no-limits --latency "fixed:${LATENCY}s"
}

# sample_conns NAME: in the background, the most established connections to the target seen
# (sampled every second until stop_sampling), written to $OUT/NAME.conns.
SAMPLER_PID=""
sample_conns() {
  local file="$OUT/$1.conns" port=$TARGET_PORT
  echo 0 >"$file"
  (
    most=0
    for _ in $(seq $((limit + 10))); do
      n=$(ss -Htn state established "( dport = :$port )" | wc -l)
      if [ "$n" -gt "$most" ]; then most=$n && echo "$most" >"$file"; fi
      sleep 1
    done
  ) &
  SAMPLER_PID=$!
}
stop_sampling() {
  kill "$SAMPLER_PID" 2>/dev/null || true
  wait "$SAMPLER_PID" 2>/dev/null || true
}

limit=$((SECS + 40))
for level in $LEVELS; do
  rate=$((level / LATENCY))
  plan "$rate" "$SECS" "$level"
  for round in $(seq "$BENCH_ROUNDS"); do
    start
    n="pacer-$level-$round"
    sample_conns "$n"
    timed "$n" "$limit" "$PACER" run "$OUT/plan-$rate-$SECS.yaml" --quiet --summary-json "$OUT/$n.json"
    stop_sampling
    time_rss_mb "$n" >>"$OUT/pacer-$level.rss"
    cat "$OUT/$n.conns" >>"$OUT/pacer-$level.conns"
    python3 "$STATS_PY" pacer_summary "$OUT/$n.json" ok | awk -v s="$SECS" '{print $1 / s}' >>"$OUT/pacer-$level.rate"
    python3 "$STATS_PY" pacer_summary "$OUT/$n.json" dropped >>"$OUT/pacer-$level.dropped"
    if [ -n "$OHA" ]; then
      start
      n="oha-$level-$round"
      sample_conns "$n"
      timed "$n" "$limit" "$OHA" -z "${SECS}s" -q "$rate" -c "$level" --no-tui --output-format json "$TARGET_URL/"
      stop_sampling
      time_rss_mb "$n" >>"$OUT/oha-$level.rss"
      cat "$OUT/$n.conns" >>"$OUT/oha-$level.conns"
      python3 "$STATS_PY" oha_json "$OUT/$n.out" ok | awk -v s="$SECS" '{print $1 / s}' >>"$OUT/oha-$level.rate"
    fi
    if [ -n "$WRK" ]; then
      start
      n="wrk-$level-$round"
      sample_conns "$n"
      timed "$n" "$limit" "$WRK" -t1 -c "$level" -d "${SECS}s" --timeout 10s "$TARGET_URL/"
      stop_sampling
      time_rss_mb "$n" >>"$OUT/wrk-$level.rss"
      cat "$OUT/$n.conns" >>"$OUT/wrk-$level.conns"
      python3 "$STATS_PY" wrk_out "$OUT/$n.out" requests | awk -v s="$SECS" '{print $1 / s}' >>"$OUT/wrk-$level.rate"
    fi
  done
done

# Soak: pacer at 1000 in flight, RSS sampled from /proc every EVERY seconds.
if [ "$SOAK_SECS" -gt 0 ]; then
plan 1000 "$SOAK_SECS"
start
"${PIN_CLIENT[@]}" "$PACER" run "$OUT/plan-1000-$SOAK_SECS.yaml" --quiet --summary-json "$OUT/soak.json" \
  >"$OUT/soak.out" 2>&1 &
soak_pid=$!
: >"$OUT/soak.rss"
for _ in $(seq $((SOAK_SECS / EVERY + 20))); do
  sleep "$EVERY"
  rss=$(awk '/^VmRSS:/ {printf "%.1f\n", $2 / 1024}' "/proc/$soak_pid/status" 2>/dev/null) || break
  [ -n "$rss" ] && echo "$rss" >>"$OUT/soak.rss"
  kill -0 "$soak_pid" 2>/dev/null || break
done
wait "$soak_pid" || true
fi
stop_target

echo
echo "| tool | in flight | requests/s | peak RSS MB | pacer/tool RSS | most connections | KB per connection | dropped |"
echo "|---|---|---|---|---|---|---|---|"
for level in $LEVELS; do
  for tool in pacer oha wrk; do
    [ -f "$OUT/$tool-$level.rss" ] || { echo "| $tool | $level | not run (not installed) | | | | | |"; continue; }
    paste -d' ' "$OUT/$tool-$level.rss" "$OUT/$tool-$level.conns" | awk '$2 > 0 {printf "%.1f\n", $1 * 1024 / $2}' >"$OUT/$tool-$level.per_conn"
    echo "| $tool | $level | $(python3 "$STATS_PY" cell "$OUT/$tool-$level.rate" 0) | $(python3 "$STATS_PY" cell "$OUT/$tool-$level.rss" 1) |" \
      "$([ "$tool" = pacer ] && echo - || python3 "$STATS_PY" ratio "$OUT/pacer-$level.rss" "$OUT/$tool-$level.rss") |" \
      "$(python3 "$STATS_PY" cell "$OUT/$tool-$level.conns" 0) | $(python3 "$STATS_PY" cell "$OUT/$tool-$level.per_conn" 1) |" \
      "$([ "$tool" = pacer ] && python3 "$STATS_PY" cell "$OUT/pacer-$level.dropped" 0 || echo -) |"
  done
  echo "| k6 | $level | $K6_NOT_RUN | | | | | |"
done
echo
[ "$SOAK_SECS" -gt 0 ] || exit 0
read -r first last max growth < <(python3 "$STATS_PY" rss_series "$OUT/soak.rss")
echo "pacer soak: 1000/s, 1000 in flight, ${SOAK_SECS}s, RSS every ${EVERY}s (MB): $(paste -sd' ' "$OUT/soak.rss")"
echo "| soak | first MB | last MB | max MB | growth over the second half |"
echo "|---|---|---|---|---|"
echo "| pacer ${SOAK_SECS}s at 1000 in flight | $first | $last | $max | $growth% |"
