#!/usr/bin/env bash
# Every core (issue 23, item 4): how one `pacer run` uses more than one core. This machine has
# 2 cores and the target (`pacer mock --static`) needs most of one, so a client on 2 cores
# cannot be shown at 2x here with a loopback target; the script measures what can be measured
# honestly, each figure a median of alternating rounds:
#   (a) closed model, 64 VUs, keep-alive (bench/peers-throughput.sh's plan): requests/s and
#       client CPU per request with the client pinned to 1 core (one runtime thread: tokio
#       sizes its workers by the cores the process may use) and to both cores (two threads,
#       one of them sharing the target's core);
#   (b) the cost of running on 2 threads, apart from having 2 cores: the client pinned to one
#       core with TOKIO_WORKER_THREADS=1 and =2 (CPU per request: cross-thread wake-ups,
#       work stealing, contention on shared locks), and, exact whatever the load, instructions
#       per request under valgrind's callgrind at 1 and 2 threads (bench/lib/ir.sh);
#   (c) the open model on 2 threads: constant-arrival-rate at CORES_RATE/s with the client
#       unpinned (both cores), its achieved rate at the target (pacer mock's arrival log) and
#       send lag, against the same run pinned to one core;
#   (d) a worker whose own work dominates, so a second core can show: the user story's
#       analytics query (templated JSON POST, JSON checks and an extract) against a target
#       that only sends a realistic page (`pacer mock --static --static-body`, CORES_PAGE
#       conversations, default 25: 93 KB), with its pointers only and with a check that the
#       whole answer is JSON: requests/s on 1 core against 2 (one shared with the target), and
#       the open model at CORES_HEAVY_RATE/s (default 3500), more than one core of client.
# BENCH_QUICK=1: 3 s runs, one round, small callgrind runs. CORES_IR=0 skips the callgrind part.
# Write-up: docs/benchmarks.md "Cores".
source "$(dirname "$0")/lib/common.sh"

SECS=${BENCH_SECS:-$([ "$BENCH_QUICK" = 1 ] && echo 3 || echo 10)}
OPEN_SECS=${BENCH_OPEN_SECS:-$([ "$BENCH_QUICK" = 1 ] && echo 5 || echo 20)}
RATE=${CORES_RATE:-10000}
CONC=64
CORES_IR=${CORES_IR:-1}

ensure_pacer
[ "$(nproc)" -ge 2 ] || { echo "cores: needs at least 2 cores" >&2; exit 0; }
machine_line
echo "cores: closed model $CONC VUs ${SECS}s, $BENCH_ROUNDS rounds; open model $RATE/s ${OPEN_SECS}s; target pinned to cpu $SERVER_CPU"

write_plan "$OUT/closed.yaml" "    executor: constant-vus
    vus: $CONC
    duration: ${SECS}s"
write_plan "$OUT/open.yaml" "    executor: constant-arrival-rate
    rate: $RATE/s
    duration: ${OPEN_SECS}s
    maxInFlight: 1000"
"$PACER" validate "$OUT/closed.yaml" >/dev/null
"$PACER" validate "$OUT/open.yaml" >/dev/null

# closed CASE CPUS THREADS: one closed-model run with the client on cores CPUS (taskset list),
# TOKIO_WORKER_THREADS=THREADS (empty: tokio's default, one per core the process may use).
closed() {
  local case=$1 cpus=$2 threads=$3 n
  n="$case-$round"
  PIN_CLIENT=(taskset -c "$cpus")
  if [ -n "$threads" ]; then
    timed "$n" "$((SECS + 20))" env TOKIO_WORKER_THREADS="$threads" \
      "$PACER" run "$OUT/closed.yaml" --quiet --summary-json "$OUT/$n.json"
  else
    timed "$n" "$((SECS + 20))" "$PACER" run "$OUT/closed.yaml" --quiet --summary-json "$OUT/$n.json"
  fi
  local reqs elapsed
  reqs=$(python3 "$STATS_PY" pacer_summary "$OUT/$n.json" ok)
  elapsed=$(python3 "$STATS_PY" pacer_summary "$OUT/$n.json" elapsed)
  awk -v n="$reqs" -v e="$elapsed" 'BEGIN {print n / e}' >>"$OUT/$case.rps"
  awk -v c="$(time_cpu "$n")" -v n="$reqs" 'BEGIN {print 1e6 * c / n}' >>"$OUT/$case.cpu_us"
  awk -v c="$(time_cpu "$n")" -v e="$(time_elapsed "$n")" 'BEGIN {print 100 * c / e}' >>"$OUT/$case.client_pct"
  awk -v t="$(cat "$OUT/$n.target_cpu")" -v e="$(time_elapsed "$n")" 'BEGIN {print 100 * t / e}' >>"$OUT/$case.target_pct"
}

start_target --static
for round in $(seq "$BENCH_ROUNDS"); do
  closed one-core "$CLIENT_CPU" ""
  closed two-cores "$SERVER_CPU,$CLIENT_CPU" ""
  closed one-core-2-threads "$CLIENT_CPU" 2
done
stop_target

echo
echo "(a, b) closed model, $CONC VUs, GET / of pacer mock --static (target on cpu $SERVER_CPU)"
echo "| client | runtime threads | requests/s | client CPU µs/request | client CPU % | target CPU % | req/s vs 1 core |"
echo "|---|---|---|---|---|---|---|"
for c in "one-core|cpu $CLIENT_CPU|1" "two-cores|cpus $SERVER_CPU,$CLIENT_CPU (one shared with the target)|2" \
  "one-core-2-threads|cpu $CLIENT_CPU|2"; do
  IFS='|' read -r case where threads <<<"$c"
  echo "| $where | $threads | $(python3 "$STATS_PY" cell "$OUT/$case.rps" 0) | $(python3 "$STATS_PY" cell "$OUT/$case.cpu_us" 1) |" \
    "$(python3 "$STATS_PY" cell "$OUT/$case.client_pct" 0) | $(python3 "$STATS_PY" cell "$OUT/$case.target_pct" 0) |" \
    "$([ "$case" = one-core ] && echo - || python3 "$STATS_PY" ratio "$OUT/$case.rps" "$OUT/one-core.rps") |"
done

# (c) the open model: 2 threads on both cores against 1 thread on one core.
fetch_arrivals() {
  python3 - "$TARGET_URL/_mock/arrivals" "$1" <<'EOF'
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=60) as r, open(sys.argv[2], "wb") as f:
    f.write(r.read())
EOF
}
open_run() {
  local case=$1 cpus=$2 n
  n="$case-$round"
  start_target --auth off --no-limits --latency none --record-arrivals --max-arrivals 5000000
  PIN_CLIENT=(taskset -c "$cpus")
  timed "$n" "$((OPEN_SECS + 30))" "$PACER" run "$OUT/open.yaml" --quiet --summary-json "$OUT/$n.json"
  fetch_arrivals "$OUT/$n.arrivals.json"
  read -r count achieved p50 p99 _max < <(python3 "$STATS_PY" arrivals "$OUT/$n.arrivals.json" "$RATE" 0)
  rm -f "$OUT/$n.arrivals.json"
  echo "$count" >>"$OUT/$case.count"
  awk -v a="$achieved" -v r="$RATE" 'BEGIN {print 100 * (a - r) / r}' >>"$OUT/$case.err_pct"
  echo "$p99" >>"$OUT/$case.lag99"
  python3 "$STATS_PY" pacer_summary "$OUT/$n.json" lag_p99 >>"$OUT/$case.own99"
  python3 "$STATS_PY" pacer_summary "$OUT/$n.json" dropped >>"$OUT/$case.dropped"
  awk -v c="$(time_cpu "$n")" -v n="$count" 'BEGIN {print 1e6 * c / n}' >>"$OUT/$case.cpu_us"
}
for round in $(seq "$BENCH_ROUNDS"); do
  open_run open-one-core "$CLIENT_CPU"
  open_run open-two-cores "$SERVER_CPU,$CLIENT_CPU"
done
stop_target

echo
echo "(c) open model, $RATE/s for ${OPEN_SECS}s (planned $((RATE * OPEN_SECS))), maxInFlight 1000"
echo "| client | requests at the target | rate error | send lag p99 (target) | pacer's own send lag p99 | dropped | client CPU µs/request |"
echo "|---|---|---|---|---|---|---|"
for c in "open-one-core|cpu $CLIENT_CPU, 1 thread" "open-two-cores|cpus $SERVER_CPU,$CLIENT_CPU, 2 threads"; do
  IFS='|' read -r case where <<<"$c"
  echo "| $where | $(python3 "$STATS_PY" cell "$OUT/$case.count" 0) | $(python3 "$STATS_PY" cell "$OUT/$case.err_pct" 3)% |" \
    "$(python3 "$STATS_PY" cell "$OUT/$case.lag99" 3) ms | $(python3 "$STATS_PY" cell "$OUT/$case.own99" 3) ms |" \
    "$(paste -sd' ' "$OUT/$case.dropped") | $(python3 "$STATS_PY" cell "$OUT/$case.cpu_us" 1) |"
done

# (d) a worker whose own work dominates: the user story's analytics query, a templated JSON
# POST whose answer (a page of CORES_PAGE conversations from bench/lib/analytics-page.py)
# pacer checks and extracts from. The target only sends the same bytes (`--static-body`), so it
# needs a small share of a core. Two plans: `pointers` (status, 2 JSON checks, an extract:
# pacer parses only what they read, json_reads.rs) and `whole` (the same and a check that the
# answer is JSON, `pointer: ""`, which parses all of it, as a k6 script's `r.json()` does).
# With `whole` the client's work dominates, so 1 core against 2 (one shared with the target)
# is the worker's own scaling: closed model (requests/s), and the open model at
# CORES_HEAVY_RATE/s, more than one core of client can keep up with.
PAGE=${CORES_PAGE:-25}
HEAVY_RATE=${CORES_HEAVY_RATE:-3500}
heavy_plan() {
  local file=$1 executor=$2 whole=$3
  cat >"$file" <<EOF
name: analytics
target: \${env:BENCH_TARGET:-http://127.0.0.1:9}
http: { timeout: 60s, maxIdlePerHost: 20000 }
retry: { maxAttempts: 1 }
scenarios:
  - name: query
$executor
    requests:
      - name: details
        method: POST
        path: /api/v2/analytics/conversations/details/query
        json:
          interval: "{{isoNow -1h}}/{{isoNow}}"
          order: asc
          paging: { pageSize: 25, pageNumber: "{{randInt 1 10}}" }
          segmentFilters:
            - { type: or, predicates: [{ dimension: queueId, value: "q-{{randInt 1 50}}" }] }
        expect:
          status: [200]
          json:
$whole            - { pointer: /totalHits, exists: true }
            - { pointer: /conversations/0/participants/0/purpose, equals: customer }
        extract:
          first: { json: /conversations/0/conversationId }
EOF
  "$PACER" validate "$file" >/dev/null
}
CLOSED="    executor: constant-vus
    vus: $CONC
    duration: ${SECS}s"
WHOLE='            - { pointer: "", exists: true }
'
heavy_plan "$OUT/pointers-closed.yaml" "$CLOSED" ""
heavy_plan "$OUT/whole-closed.yaml" "$CLOSED" "$WHOLE"
heavy_plan "$OUT/whole-open.yaml" "    executor: constant-arrival-rate
    rate: $HEAVY_RATE/s
    duration: ${OPEN_SECS}s
    maxInFlight: 1000" "$WHOLE"
# heavy CASE CPUS PLAN: a run of PLAN with the client on CPUS; every check must have passed.
heavy() {
  local case=$1 cpus=$2 plan=$3 n
  n="$case-$round"
  PIN_CLIENT=(taskset -c "$cpus")
  timed "$n" "$((SECS + OPEN_SECS + 30))" "$PACER" run "$plan" --quiet --summary-json "$OUT/$n.json"
  local ok failed elapsed
  ok=$(python3 "$STATS_PY" pacer_summary "$OUT/$n.json" ok)
  failed=$(python3 "$STATS_PY" pacer_summary "$OUT/$n.json" checks_failed)
  [ "$failed" = 0 ] || { echo "cores: $n: $failed checks failed" >&2; exit 1; }
  elapsed=$(python3 "$STATS_PY" pacer_summary "$OUT/$n.json" elapsed)
  awk -v n="$ok" -v e="$elapsed" 'BEGIN {print n / e}' >>"$OUT/$case.rps"
  echo "$ok" >>"$OUT/$case.count"
  awk -v c="$(time_cpu "$n")" -v n="$ok" 'BEGIN {print 1e6 * c / n}' >>"$OUT/$case.cpu_us"
  awk -v c="$(time_cpu "$n")" -v e="$(time_elapsed "$n")" 'BEGIN {print 100 * c / e}' >>"$OUT/$case.client_pct"
  awk -v t="$(cat "$OUT/$n.target_cpu")" -v e="$(time_elapsed "$n")" 'BEGIN {print 100 * t / e}' >>"$OUT/$case.target_pct"
  python3 "$STATS_PY" pacer_summary "$OUT/$n.json" dropped >>"$OUT/$case.dropped"
  python3 "$STATS_PY" pacer_summary "$OUT/$n.json" lag_p99 >>"$OUT/$case.own99"
}
python3 "$BENCH_ROOT/bench/lib/analytics-page.py" "$PAGE" "$OUT/page.json"
start_target --static --static-body "$OUT/page.json"
for round in $(seq "$BENCH_ROUNDS"); do
  for plan in pointers whole; do
    heavy "$plan-one-core" "$CLIENT_CPU" "$OUT/$plan-closed.yaml"
    heavy "$plan-two-cores" "$SERVER_CPU,$CLIENT_CPU" "$OUT/$plan-closed.yaml"
  done
  heavy whole-open-one-core "$CLIENT_CPU" "$OUT/whole-open.yaml"
  heavy whole-open-two-cores "$SERVER_CPU,$CLIENT_CPU" "$OUT/whole-open.yaml"
done
stop_target

echo
echo "(d) closed model, $CONC VUs, the analytics query: a templated JSON POST; its answer, $PAGE"
echo "conversations in $(wc -c <"$OUT/page.json") bytes from pacer mock --static --static-body on cpu $SERVER_CPU, checked"
echo "(status, 2 JSON checks) and extracted from; \`whole\` also checks that the answer is JSON"
echo "| plan | client | requests/s | client CPU µs/request | client CPU % | target CPU % | req/s vs 1 core |"
echo "|---|---|---|---|---|---|---|"
for plan in pointers whole; do
  for c in "one-core|cpu $CLIENT_CPU" "two-cores|cpus $SERVER_CPU,$CLIENT_CPU"; do
    IFS='|' read -r case where <<<"$c"
    echo "| $plan | $where | $(python3 "$STATS_PY" cell "$OUT/$plan-$case.rps" 0) | $(python3 "$STATS_PY" cell "$OUT/$plan-$case.cpu_us" 1) |" \
      "$(python3 "$STATS_PY" cell "$OUT/$plan-$case.client_pct" 0) | $(python3 "$STATS_PY" cell "$OUT/$plan-$case.target_pct" 0) |" \
      "$([ "$case" = one-core ] && echo - || python3 "$STATS_PY" ratio "$OUT/$plan-$case.rps" "$OUT/$plan-one-core.rps") |"
  done
done
echo
echo "(d) open model, the analytics query (whole) at $HEAVY_RATE/s for ${OPEN_SECS}s" \
  "(planned $((HEAVY_RATE * OPEN_SECS))), maxInFlight 1000"
echo "| client | requests answered | dropped | pacer's own send lag p99 | client CPU % |"
echo "|---|---|---|---|---|"
for c in "whole-open-one-core|cpu $CLIENT_CPU" "whole-open-two-cores|cpus $SERVER_CPU,$CLIENT_CPU"; do
  IFS='|' read -r case where <<<"$c"
  echo "| $where | $(paste -sd' ' "$OUT/$case.count") | $(paste -sd' ' "$OUT/$case.dropped") |" \
    "$(python3 "$STATS_PY" cell "$OUT/$case.own99" 3) ms | $(python3 "$STATS_PY" cell "$OUT/$case.client_pct" 0) |"
done

# (b') instructions per request at 1 and 2 runtime threads (exact under any load).
if [ "$CORES_IR" = 1 ] && command -v valgrind >/dev/null; then
  echo
  echo "(b') instructions per request (callgrind; user space only), $CONC VUs"
  for threads in 1 2; do
    line=$(PACER_BIN="$PACER" IR_THREADS=$threads IR_ANNOTATE=0 \
      IR_SMALL="$([ "$BENCH_QUICK" = 1 ] && echo 1000 || echo 2000)" \
      IR_LARGE="$([ "$BENCH_QUICK" = 1 ] && echo 4000 || echo 12000)" \
      BENCH_OUT="$OUT/ir-$threads" bash "$BENCH_ROOT/bench/lib/ir.sh" | grep '^Ir per request')
    echo "runtime threads $threads: $line"
  done
fi
