#!/usr/bin/env bash
# By hand (not part of `make bench`): profiles pacer's hot path in the throughput test with
# perf. `pacer mock --static` on one core, `pacer run` (constant-vus, 64 VUs, keep-alive) on the
# other under `perf record --call-graph dwarf`; prints the top of `perf report --stdio`.
#   bash bench/lib/profile.sh            # PACER_BIN=... to profile another build
#   PROFILE_SECS=10 bash bench/lib/profile.sh
# Needs perf (Debian: linux-perf) and kernel.perf_event_paranoid <= 2 (or root).
source "$(dirname "$0")/common.sh"

SECS=${PROFILE_SECS:-8}
PERF=${PERF:-$(command -v perf || echo /usr/bin/perf)}
[ -x "$PERF" ] || { echo "profile: perf is missing (apt-get install linux-perf)" >&2; exit 1; }

ensure_pacer
start_target --static
machine_line
write_plan "$OUT/plan.yaml" "    executor: constant-vus
    vus: 64
    duration: ${SECS}s"
"${PIN_CLIENT[@]}" "$PERF" record -q -F ${PROFILE_FREQ:-499} --call-graph dwarf,16384 -o "$OUT/perf.data" \
  -- "$PACER" run "$OUT/plan.yaml" --quiet --summary-json "$OUT/summary.json" >/dev/null
echo "requests/s under perf: $(python3 "$STATS_PY" pacer_summary "$OUT/summary.json" ok |
  awk -v e="$(python3 "$STATS_PY" pacer_summary "$OUT/summary.json" elapsed)" '{printf "%.0f", $1 / e}')"
echo "== self time (perf report --no-children), top 40"
"$PERF" report -i "$OUT/perf.data" --stdio --no-children --sort symbol --percent-limit 0.7 \
  2>/dev/null | grep -E '^ +[0-9]' | head -40
echo "== with children (inclusive), top 40"
"$PERF" report -i "$OUT/perf.data" --stdio --children --sort symbol --percent-limit 2 -g none \
  2>/dev/null | grep -E '^ +[0-9]' | head -40
