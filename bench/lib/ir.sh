#!/usr/bin/env bash
# By hand (not part of `make bench`): instructions per request of pacer's hot path, counted by
# valgrind's callgrind, so exact whatever else the shared machine runs (CPU time is not, and
# this machine's perf has no hardware counters). `pacer run` sends a `shared-iterations` plan
# (IR_VUS VUs, keep-alive, GET / of `pacer mock --static` on loopback) twice, with IR_SMALL and
# IR_LARGE requests; instructions per request = (Ir(large) - Ir(small)) / (large - small), so
# start-up and shutdown cancel out. Prints that figure and the top of callgrind_annotate for
# the large run (inclusive, then self).
#   bash bench/lib/ir.sh                    # PACER_BIN=... to count another build
#   IR_THREADS=1 bash bench/lib/ir.sh       # the runtime on one worker thread (TOKIO_WORKER_THREADS)
source "$(dirname "$0")/common.sh"

command -v valgrind >/dev/null || { echo "ir: valgrind is missing" >&2; exit 1; }
SMALL=${IR_SMALL:-2000}
LARGE=${IR_LARGE:-12000}
VUS=${IR_VUS:-64}

ensure_pacer
start_target --static
machine_line
echo "build: $("$PACER" --version 2>/dev/null | head -1); $VUS VUs; $SMALL and $LARGE requests"

# count N: total instructions (Ir) of `pacer run` sending N requests; keeps $OUT/cg.N.
count() {
  local n=$1
  write_plan "$OUT/plan.$n.yaml" "    executor: shared-iterations
    vus: $VUS
    iterations: $n
    maxDuration: 600s"
  ${IR_THREADS:+env TOKIO_WORKER_THREADS=$IR_THREADS} valgrind --tool=callgrind \
    --callgrind-out-file="$OUT/cg.$n" "$PACER" run "$OUT/plan.$n.yaml" --quiet \
    --summary-json "$OUT/summary.$n.json" >/dev/null 2>"$OUT/cg.$n.err"
  local ok
  ok=$(python3 "$STATS_PY" pacer_summary "$OUT/summary.$n.json" ok)
  [ "$ok" = "$n" ] || { echo "ir: $ok of $n requests succeeded" >&2; exit 1; }
  awk '/^totals:|^summary:/ {print $2; exit}' "$OUT/cg.$n"
}

small=$(count "$SMALL")
large=$(count "$LARGE")
echo "Ir: $small ($SMALL requests), $large ($LARGE requests)"
awk -v a="$small" -v b="$large" -v m="$SMALL" -v n="$LARGE" \
  'BEGIN {printf "Ir per request: %.0f\n", (b - a) / (n - m)}'
if [ "${IR_ANNOTATE:-1}" = 1 ]; then
  echo "== inclusive, top 45 (large run)"
  callgrind_annotate --inclusive=yes "$OUT/cg.$LARGE" 2>/dev/null | sed -n '/^Ir/,$p' | sed -n 3,47p
  echo "== self, top 35 (large run)"
  callgrind_annotate "$OUT/cg.$LARGE" 2>/dev/null | sed -n '/^Ir/,$p' | sed -n 3,37p
fi
