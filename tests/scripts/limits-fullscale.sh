#!/usr/bin/env bash
# The rate-limit measurements of docs/rate-limiting.md at full scale (the test suite runs them
# scaled down): pacer offered 3x a per-token limit of 600 per 10 s for 40 s, and a 2-minute run
# at 100 requests/s over 64 in flight with a 60 s token lifetime. All traffic on loopback.
# Usage: tests/scripts/limits-fullscale.sh [pacer-binary]   (about 3 minutes)
set -euo pipefail
pacer="${1:-target/debug/pacer}"
port=18190
work=$(mktemp -d)
cleanup() { kill "${mock:-0}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

start_mock() {
  "$pacer" mock --listen "127.0.0.1:$port" "$@" >"$work/mock.log" 2>&1 &
  mock=$!
  for _ in $(seq 1 50); do grep -q listening "$work/mock.log" && return; sleep 0.1; done
  echo "mock did not start"; cat "$work/mock.log"; exit 1
}
stats() { python3 -c 'import json,sys,urllib.request; print(urllib.request.urlopen("http://127.0.0.1:'$port'/_mock/stats").read().decode())'; }

echo "== 1. offered 3x a per-token limit of 600 per 10 s, for 40 s"
start_mock --limit per-token:token:600/10s --latency uniform:5ms:50ms
cat >"$work/plan.yaml" <<YAML
name: per-token-3x
target: http://127.0.0.1:$port
auth: [{name: demo, type: oauth2-clientCredentials, tokenUrl: /oauth/token, clientId: pacer-demo, clientSecret: demo-secret}]
limits: [{name: per-token, limit: 600/10s, burst: 5}]
retry: {maxAttempts: 3}
scenarios:
  - {name: s, executor: constant-arrival-rate, rate: 180/s, duration: 40s, maxInFlight: 10000, gracefulStop: 1s, auth: demo,
     requests: [{name: q, method: POST, path: /api/v2/analytics/conversations/details/query, json: {paging: {pageSize: 25}}}]}
YAML
"$pacer" run -q "$work/plan.yaml" --summary-json "$work/s1.json" >"$work/out1.txt" || true
stats >"$work/stats1.json"
python3 - "$work/stats1.json" "$work/s1.json" <<'PY'
import json, sys
st = json.load(open(sys.argv[1])); s = json.load(open(sys.argv[2]))
lim = [l for l in st["limits"] if l["name"] == "per-token"][0]
secs = s["elapsed_secs"]
sent = s["totals"]["http_reqs"]
allowed = 600 * secs / 10   # what the limit allows over the time pacer sent (graceful stop included)
print(f"accepted {lim['accepted']} of the {allowed:.0f} the limit allows in {secs:.1f} s = {100*lim['accepted']/allowed:.1f}%")
print(f"429s {lim['rejected']} of {lim['accepted']+lim['rejected']} = {100*lim['rejected']/max(1,lim['accepted']+lim['rejected']):.2f}%")
print(f"most requests offered in any 10 s window: {lim['maxOfferedInWindow']} (limit 600)")
print(f"pacer: {sent} requests in {secs:.1f}s, pacing {s['limits'][0]['pacing_rate']:.2f}/s, margin {100*s['limits'][0]['margin']:.1f}%")
PY
kill $mock; wait $mock 2>/dev/null || true

echo "== 2. token lifetime 60 s, refresh 10 s ahead, 100 requests/s for 2 minutes, 64 in flight"
start_mock --no-limits --token-lifetime 60s --latency uniform:5ms:50ms
cat >"$work/plan2.yaml" <<YAML
name: token-refresh
target: http://127.0.0.1:$port
auth: [{name: demo, type: oauth2-clientCredentials, tokenUrl: /oauth/token, clientId: pacer-demo, clientSecret: demo-secret, refreshBefore: 10s}]
scenarios:
  - {name: s, executor: constant-arrival-rate, rate: 100/s, duration: 2m, maxInFlight: 64, auth: demo,
     requests: [{name: me, path: /api/v2/users/me, expect: {status: [200]}}]}
YAML
"$pacer" run -q "$work/plan2.yaml" --summary-json "$work/s2.json" >"$work/out2.txt" || true
stats >"$work/stats2.json"
python3 - "$work/stats2.json" "$work/s2.json" <<'PY'
import json, sys
st = json.load(open(sys.argv[1])); s = json.load(open(sys.argv[2]))
print(f"tokens issued by the mock: {st['tokens']['issued']} (expected 3: the first and two refreshes)")
print(f"requests {s['totals']['http_reqs']}, failed {s['totals']['failed']}, 401s {s['totals']['status'].get('401', 0)}, dropped {s['scenario_totals']['dropped_iterations']}")
PY
