#!/usr/bin/env bash
# Memory (issue 7, item 4): peak RSS at 1000 and 10000 requests in flight. The target is
# `pacer mock --latency fixed:1s` (no auth, no limits), so RATE/s arrivals keep RATE requests
# in flight: pacer constant-arrival-rate RATE/s, `oha -q RATE -c RATE`, and wrk closed model
# with RATE connections (RATE in flight at 1 s each). Peak RSS from /usr/bin/time.
# Then pacer alone at 1000/s for SOAK_SECS (default 180 s; BENCH_SOAK_SECS=600 for the
# 10-minute goal), sampling its RSS every few seconds: it must stay flat (HDR histograms, no
# raw samples). BENCH_IN_FLIGHT= (empty) runs the soak alone. BENCH_QUICK=1: 8 s runs, 20 s
# soak. Every run waits (up to 90 s) for loopback's TIME_WAIT sockets to drain first.
# Write-up: docs/benchmarks.md.
source "$(dirname "$0")/lib/common.sh"

if [ "$BENCH_QUICK" = 1 ]; then
  SECS=8 SOAK_SECS=${BENCH_SOAK_SECS:-20} EVERY=2
else
  SECS=${BENCH_SECS:-30} SOAK_SECS=${BENCH_SOAK_SECS:-180} EVERY=5
fi
LEVELS=${BENCH_IN_FLIGHT-1000 10000}  # BENCH_IN_FLIGHT= (empty): the soak alone

ensure_pacer
ensure_peers
machine_line
echo "peers: $PEER_VERSIONS"
echo "memory: target pacer mock --auth off --no-limits --latency fixed:1s; ${SECS}s runs; $BENCH_ROUNDS rounds; soak ${SOAK_SECS}s"

plan() {
  write_plan "$OUT/plan-$1-$2.yaml" "    executor: constant-arrival-rate
    rate: $1/s
    duration: ${2}s
    maxInFlight: $(($1 * 2))"
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
  start_target --auth off --no-limits --latency fixed:1s
}

limit=$((SECS + 40))
for level in $LEVELS; do
  plan "$level" "$SECS"
  for round in $(seq "$BENCH_ROUNDS"); do
    start
    n="pacer-$level-$round"
    timed "$n" "$limit" "$PACER" run "$OUT/plan-$level-$SECS.yaml" --quiet --summary-json "$OUT/$n.json"
    time_rss_mb "$n" >>"$OUT/pacer-$level.rss"
    python3 "$STATS_PY" pacer_summary "$OUT/$n.json" ok | awk -v s="$SECS" '{print $1 / s}' >>"$OUT/pacer-$level.rate"
    if [ -n "$OHA" ]; then
      start
      n="oha-$level-$round"
      timed "$n" "$limit" "$OHA" -z "${SECS}s" -q "$level" -c "$level" --no-tui --output-format json "$TARGET_URL/"
      time_rss_mb "$n" >>"$OUT/oha-$level.rss"
      python3 "$STATS_PY" oha_json "$OUT/$n.out" ok | awk -v s="$SECS" '{print $1 / s}' >>"$OUT/oha-$level.rate"
    fi
    if [ -n "$WRK" ]; then
      start
      n="wrk-$level-$round"
      timed "$n" "$limit" "$WRK" -t1 -c "$level" -d "${SECS}s" --timeout 10s "$TARGET_URL/"
      time_rss_mb "$n" >>"$OUT/wrk-$level.rss"
      python3 "$STATS_PY" wrk_out "$OUT/$n.out" requests | awk -v s="$SECS" '{print $1 / s}' >>"$OUT/wrk-$level.rate"
    fi
  done
done

# Soak: pacer at 1000 in flight, RSS sampled from /proc every EVERY seconds.
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
stop_target

echo
echo "| tool | in flight | requests/s | peak RSS MB | pacer/tool RSS |"
echo "|---|---|---|---|---|"
for level in $LEVELS; do
  for tool in pacer oha wrk; do
    [ -f "$OUT/$tool-$level.rss" ] || { echo "| $tool | $level | not run (not installed) | | |"; continue; }
    echo "| $tool | $level | $(python3 "$STATS_PY" cell "$OUT/$tool-$level.rate" 0) | $(python3 "$STATS_PY" cell "$OUT/$tool-$level.rss" 1) |" \
      "$([ "$tool" = pacer ] && echo - || python3 "$STATS_PY" ratio "$OUT/pacer-$level.rss" "$OUT/$tool-$level.rss") |"
  done
  echo "| k6 | $level | $K6_NOT_RUN | | |"
done
echo
read -r first last max growth < <(python3 "$STATS_PY" rss_series "$OUT/soak.rss")
echo "pacer soak: 1000/s, 1000 in flight, ${SOAK_SECS}s, RSS every ${EVERY}s (MB): $(paste -sd' ' "$OUT/soak.rss")"
echo "| soak | first MB | last MB | max MB | growth over the second half |"
echo "|---|---|---|---|---|"
echo "| pacer ${SOAK_SECS}s at 1000 in flight | $first | $last | $max | $growth% |"
