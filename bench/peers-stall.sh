#!/usr/bin/env bash
# Latency truthfulness (issue 7, item 3): `pacer mock --stall 10s:1s` holds every response
# during [10,11) s and [20,21) s after it starts; each tool runs 29 s from a fresh target at a
# fixed 1000 requests/s (wrk: closed model, no rate mode) and reports its p99 and max latency.
# A tool that measures from the intended send shows the stalls in p99: 2 of 29 s stalled means
# 6.9% of requests waited up to 1 s, so the true p99 is about 0.85 s; a tool with coordinated
# omission shows a p99 of a few ms and only its max reveals the stall.
# BENCH_QUICK=1: --stall 5s:1s over 12 s, one round. Write-up: docs/benchmarks.md.
source "$(dirname "$0")/lib/common.sh"

if [ "$BENCH_QUICK" = 1 ]; then EVERY=5 SECS=12; else EVERY=10 SECS=29; fi
RATE=1000
CONC=64

ensure_pacer
ensure_peers
machine_line
echo "peers: $PEER_VERSIONS"
echo "stall: target pacer mock --auth off --no-limits --latency none --stall ${EVERY}s:1s; ${SECS}s runs at $RATE/s, $BENCH_ROUNDS rounds"
expected=$(awk -v s="$SECS" -v e="$EVERY" 'BEGIN { f = int((s - 0.5) / e) / s; printf "%.0f", 1000 * (1 - 0.01 / f) }')
echo "an honest p99 is about $expected ms (the stalled share of arrivals waits 0-1000 ms)"

write_plan "$OUT/plan.yaml" "    executor: constant-arrival-rate
    rate: $RATE/s
    duration: ${SECS}s
    maxInFlight: 5000"
"$PACER" validate "$OUT/plan.yaml" >/dev/null

start() { start_target --auth off --no-limits --latency none --stall "${EVERY}s:1s"; }
keep() { echo "$3" >>"$OUT/$1.$2"; }

limit=$((SECS + 30))
for round in $(seq "$BENCH_ROUNDS"); do
  start
  n="pacer-$round"
  timed "$n" "$limit" "$PACER" run "$OUT/plan.yaml" --quiet --summary-json "$OUT/$n.json"
  for f in p50 p99 max; do keep pacer "$f" "$(python3 "$STATS_PY" pacer_summary "$OUT/$n.json" "dur_$f")"; done

  if [ -n "$OHA" ]; then
    for mode in corrected uncorrected; do
      start
      n="oha-$mode-$round"
      flag=()
      [ "$mode" = corrected ] && flag=(--latency-correction)
      timed "$n" "$limit" "$OHA" -z "${SECS}s" -q "$RATE" "${flag[@]}" -c "$CONC" \
        --no-tui --output-format json "$TARGET_URL/"
      for f in p50 p99 max; do keep "oha-$mode" "$f" "$(python3 "$STATS_PY" oha_json "$OUT/$n.out" "$f")"; done
    done
  fi
  if [ -n "$WRK" ]; then
    start
    n="wrk-$round"
    timed "$n" "$limit" "$WRK" -t1 -c "$CONC" -d "${SECS}s" --latency "$TARGET_URL/"
    for f in p50 p99 max; do keep wrk "$f" "$(python3 "$STATS_PY" wrk_out "$OUT/$n.out" "$f")"; done
  fi
done
stop_target

echo
echo "| tool | model | p50 ms | p99 ms | max ms | p99 shows the stall |"
echo "|---|---|---|---|---|---|"
row() {
  local tool=$1 label=$2 model=$3
  [ -f "$OUT/$tool.p99" ] || { echo "| $label | $model | not run (not installed) | | | |"; return; }
  local shows
  shows=$(python3 - "$OUT/$tool.p99" <<'EOF'
import statistics, sys
print("yes" if statistics.median(float(x) for x in open(sys.argv[1]).read().split()) >= 500 else "no")
EOF
)
  echo "| $label | $model | $(python3 "$STATS_PY" cell "$OUT/$tool.p50" 2) | $(python3 "$STATS_PY" cell "$OUT/$tool.p99" 1) | $(python3 "$STATS_PY" cell "$OUT/$tool.max" 0) | $shows |"
}
row pacer "pacer constant-arrival-rate" "open, $RATE/s, from intended start"
row oha-corrected "oha -q $RATE --latency-correction" "rate-limited, $CONC connections, corrected"
row oha-uncorrected "oha -q $RATE" "rate-limited, $CONC connections"
row wrk "wrk -c $CONC" "closed, $CONC connections (no rate mode)"
echo "| k6 | | $K6_NOT_RUN | | | |"
