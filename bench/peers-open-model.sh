#!/usr/bin/env bash
# Open-model accuracy against peers (issue 7, item 2): a fixed arrival rate (1000/s and
# 10000/s) against `pacer mock` (no auth, no limits, no latency, arrival log on) on loopback.
# pacer constant-arrival-rate vs `oha -q RATE --latency-correction`; wrk has no rate mode (wrk2
# is not in Debian). For each run:
#   - requests the target received, against RATE x SECS planned;
#   - achieved rate at the target: (arrivals - 1) / (last arrival - first arrival), and its error;
#   - send lag seen by the target (the same measure for every tool): arrival k (in time order)
#     minus k/RATE, less the smallest such offset (the most punctual request has lag 0), p50
#     and p99;
#   - pacer's own send lag (summary JSON `send_lag_ms`: first send minus intended start).
# BENCH_QUICK=1: 5 s runs, one round. Write-up: docs/benchmarks.md "Peers: open model".
source "$(dirname "$0")/lib/common.sh"

SECS=${BENCH_SECS:-$([ "$BENCH_QUICK" = 1 ] && echo 5 || echo 20)}
RATES=${BENCH_RATES:-1000 10000}
CONC=1000

ensure_pacer
ensure_peers
machine_line
echo "peers: $PEER_VERSIONS"
echo "open model: ${SECS}s per run, $BENCH_ROUNDS rounds, at most $CONC in flight/connections; target: pacer mock --auth off --no-limits --latency none --record-arrivals"

fetch_arrivals() {
  python3 - "$TARGET_URL/_mock/arrivals" "$1" <<'EOF'
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=60) as r, open(sys.argv[2], "wb") as f:
    f.write(r.read())
EOF
}

start() {
  start_target --auth off --no-limits --latency none --record-arrivals --max-arrivals 5000000
}

# server_view TOOL RATE NAME: appends count, achieved rate, lag p50/p99 to TOOL-RATE.* files.
server_view() {
  local key="$1-$2" name=$3
  fetch_arrivals "$OUT/$name.arrivals.json"
  read -r count achieved p50 p99 _max < <(python3 "$STATS_PY" arrivals "$OUT/$name.arrivals.json" "$2" 0)
  echo "$count" >>"$OUT/$key.count"
  echo "$achieved" >>"$OUT/$key.achieved"
  awk -v a="$achieved" -v r="$2" 'BEGIN {print 100 * (a - r) / r}' >>"$OUT/$key.err_pct"
  echo "$p50" >>"$OUT/$key.lag50"
  echo "$p99" >>"$OUT/$key.lag99"
  awk -v c="$(time_cpu "$name")" -v n="$count" 'BEGIN {print 1e6 * c / n}' >>"$OUT/$key.cpu_us"
  rm -f "$OUT/$name.arrivals.json"
}

limit=$((SECS + 30))
for rate in $RATES; do
  write_plan "$OUT/plan-$rate.yaml" "    executor: constant-arrival-rate
    rate: $rate/s
    duration: ${SECS}s
    maxInFlight: $CONC"
  "$PACER" validate "$OUT/plan-$rate.yaml" >/dev/null
  for round in $(seq "$BENCH_ROUNDS"); do
    start
    n="pacer-$rate-$round"
    timed "$n" "$limit" "$PACER" run "$OUT/plan-$rate.yaml" --quiet --summary-json "$OUT/$n.json"
    server_view pacer "$rate" "$n"
    python3 "$STATS_PY" pacer_summary "$OUT/$n.json" lag_p50 >>"$OUT/pacer-$rate.own50"
    python3 "$STATS_PY" pacer_summary "$OUT/$n.json" lag_p99 >>"$OUT/pacer-$rate.own99"
    python3 "$STATS_PY" pacer_summary "$OUT/$n.json" dropped >>"$OUT/pacer-$rate.dropped"

    if [ -n "$OHA" ]; then
      start
      n="oha-$rate-$round"
      timed "$n" "$limit" "$OHA" -z "${SECS}s" -q "$rate" --latency-correction -c "$CONC" \
        --no-tui --output-format json "$TARGET_URL/"
      server_view oha "$rate" "$n"
    fi
  done
done
stop_target

echo
echo "| tool | rate | requests at the target (planned) | achieved rate | error | send lag p50 (target) | send lag p99 (target) | own send lag p50 / p99 | client CPU µs/request |"
echo "|---|---|---|---|---|---|---|---|---|"
for rate in $RATES; do
  planned=$((rate * SECS))
  for tool in pacer oha; do
    k="$OUT/$tool-$rate"
    [ -f "$k.count" ] || { echo "| $tool | $rate/s | not run (not installed) | | | | | | |"; continue; }
    own="not measured"
    [ "$tool" = pacer ] && own="$(python3 "$STATS_PY" cell "$k.own50" 3) / $(python3 "$STATS_PY" cell "$k.own99" 3) ms"
    echo "| $tool | $rate/s | $(python3 "$STATS_PY" cell "$k.count" 0) ($planned) | $(python3 "$STATS_PY" cell "$k.achieved" 1)/s |" \
      "$(python3 "$STATS_PY" cell "$k.err_pct" 3)% | $(python3 "$STATS_PY" cell "$k.lag50" 3) ms | $(python3 "$STATS_PY" cell "$k.lag99" 3) ms |" \
      "$own | $(python3 "$STATS_PY" cell "$k.cpu_us" 1) |"
  done
  echo "| wrk | $rate/s | not run: wrk has no rate mode (wrk2 is not in Debian) | | | | | | |"
  echo "| k6 | $rate/s | $K6_NOT_RUN | | | | | | |"
done
if [ -f "$OUT/pacer-${RATES%% *}.dropped" ]; then
  echo
  for rate in $RATES; do
    echo "pacer dropped iterations at $rate/s (maxInFlight $CONC full): $(paste -sd' ' "$OUT/pacer-$rate.dropped")"
  done
fi
