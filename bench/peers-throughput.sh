#!/usr/bin/env bash
# Peak throughput against peers (issue 7, item 1): closed model, keep-alive, 64 connections/VUs,
# GET / of `pacer mock --static` on loopback (target on one core, client on the other).
# pacer (constant-vus), oha and wrk run in alternating rounds; prints requests/s, client CPU per
# request and the target's CPU, medians with (min-max), and pacer/peer ratios.
# BENCH_QUICK=1: 3 s runs, one round. Write-up: docs/benchmarks.md "Peers: throughput".
source "$(dirname "$0")/lib/common.sh"

SECS=${BENCH_SECS:-$([ "$BENCH_QUICK" = 1 ] && echo 3 || echo 10)}
CONC=${BENCH_CONCURRENCY:-64}

ensure_pacer
ensure_peers
start_target --static
machine_line
echo "peers: $PEER_VERSIONS"
echo "throughput: closed model, $CONC connections, ${SECS}s per run, $BENCH_ROUNDS rounds, target: pacer mock --static"

write_plan "$OUT/plan.yaml" "    executor: constant-vus
    vus: $CONC
    duration: ${SECS}s"
"$PACER" validate "$OUT/plan.yaml" >/dev/null

# record TOOL NAME REQUESTS: requests/s, CPU µs per request, target CPU % of one core.
record() {
  local tool=$1 name=$2 reqs=$3 rps=$4
  echo "$rps" >>"$OUT/$tool.rps"
  awk -v c="$(time_cpu "$name")" -v n="$reqs" 'BEGIN {print 1e6 * c / n}' >>"$OUT/$tool.cpu_us"
  awk -v t="$(cat "$OUT/$name.target_cpu")" -v e="$(time_elapsed "$name")" \
    'BEGIN {print 100 * t / e}' >>"$OUT/$tool.target_pct"
  awk -v c="$(time_cpu "$name")" -v e="$(time_elapsed "$name")" \
    'BEGIN {print 100 * c / e}' >>"$OUT/$tool.client_pct"
}

limit=$((SECS + 20))
for round in $(seq "$BENCH_ROUNDS"); do
  n="pacer-$round"
  timed "$n" "$limit" "$PACER" run "$OUT/plan.yaml" --quiet --summary-json "$OUT/$n.json"
  reqs=$(python3 "$STATS_PY" pacer_summary "$OUT/$n.json" ok)
  rps=$(awk -v n="$reqs" -v e="$(python3 "$STATS_PY" pacer_summary "$OUT/$n.json" elapsed)" 'BEGIN {print n / e}')
  record pacer "$n" "$reqs" "$rps"

  if [ -n "$OHA" ]; then
    n="oha-$round"
    timed "$n" "$limit" "$OHA" -z "${SECS}s" -c "$CONC" --no-tui --output-format json "$TARGET_URL/"
    record oha "$n" "$(python3 "$STATS_PY" oha_json "$OUT/$n.out" ok)" \
      "$(python3 "$STATS_PY" oha_json "$OUT/$n.out" rps)"
  fi
  if [ -n "$WRK" ]; then
    n="wrk-$round"
    timed "$n" "$limit" "$WRK" -t1 -c "$CONC" -d "${SECS}s" --latency "$TARGET_URL/"
    record wrk "$n" "$(python3 "$STATS_PY" wrk_out "$OUT/$n.out" requests)" \
      "$(python3 "$STATS_PY" wrk_out "$OUT/$n.out" rps)"
  fi
done

echo
echo "| tool | requests/s | client CPU µs/request | client CPU % | target CPU % | pacer/tool req/s | pacer/tool CPU per request |"
echo "|---|---|---|---|---|---|---|"
for tool in pacer oha wrk; do
  [ -f "$OUT/$tool.rps" ] || { echo "| $tool | not run (not installed) | | | | | |"; continue; }
  echo "| $tool | $(python3 "$STATS_PY" cell "$OUT/$tool.rps" 0) | $(python3 "$STATS_PY" cell "$OUT/$tool.cpu_us" 1) |" \
    "$(python3 "$STATS_PY" cell "$OUT/$tool.client_pct" 0) | $(python3 "$STATS_PY" cell "$OUT/$tool.target_pct" 0) |" \
    "$([ "$tool" = pacer ] && echo - || python3 "$STATS_PY" ratio "$OUT/pacer.rps" "$OUT/$tool.rps") |" \
    "$([ "$tool" = pacer ] && echo - || python3 "$STATS_PY" ratio "$OUT/pacer.cpu_us" "$OUT/$tool.cpu_us") |"
done
echo "| k6 | $K6_NOT_RUN | | | | | |"
