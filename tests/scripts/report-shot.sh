#!/usr/bin/env bash
# `make report-shot`: a short real run against `pacer mock` (a ramp past the server's limit, so
# the report has pacing, 429s, Retry-After pauses and rate-limit headers to show), rendered with
# `--report`, then screenshotted with headless Chromium into docs/report.png.
#
# Installs Debian's `chromium` with apt-get when it is missing. Only 127.0.0.1 is used; the mock
# is stopped at the end. Exits non-zero if the run or the screenshot fails.
set -euo pipefail
cd "$(dirname "$0")/../.."
port="${REPORT_SHOT_PORT:-18090}"
out="${REPORT_SHOT_PNG:-docs/report.png}"
pacer=target/debug/pacer

cargo build -q -p pacer-cli
if ! command -v chromium >/dev/null; then
  echo "installing chromium (Debian package)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq chromium >/dev/null
fi

work=$(mktemp -d)
profile=$(mktemp -d)
mock_pid=""
cleanup() {
  if [ -n "$mock_pid" ]; then kill "$mock_pid" 2>/dev/null || true; wait "$mock_pid" 2>/dev/null || true; fi
  rm -rf "$work" "$profile"
}
trap cleanup EXIT

# The server allows 100 requests per 5 s per token (20/s) and says so in its headers.
"$pacer" mock --listen "127.0.0.1:${port}" \
  --limit "token.rate.per.5s:token:100/5s" \
  --x-ratelimit-headers --latency "lognormal:25ms:120ms" >"$work/mock.log" 2>&1 &
mock_pid=$!
for _ in $(seq 1 50); do
  grep -q "listening" "$work/mock.log" && break
  if ! kill -0 "$mock_pid" 2>/dev/null; then echo "pacer mock failed to start:"; cat "$work/mock.log"; exit 1; fi
  sleep 0.1
done

# The plan believes the limit is 30/s: pacer paces there, the server still throttles at the end
# of its windows, and the Retry-After pauses show in the charts.
cat >"$work/plan.yaml" <<'YAML'
name: analytics-ramp
target: ${env:PACER_TARGET}
auth:
  - name: genesys
    type: oauth2-clientCredentials
    tokenUrl: /oauth/token
    clientId: pacer-demo
    clientSecret: ${env:PACER_CLIENT_SECRET}
limits:
  - { name: per-token, limit: 30/s, burst: 5 }
retry: { maxAttempts: 5, backoff: { base: 250ms, max: 5s } }
scenarios:
  - name: details-query
    executor: ramping-arrival-rate
    startRate: 5/s
    stages:
      - { target: 35/s, duration: 12s }
      - { target: 35/s, duration: 8s }
    maxInFlight: 300
    gracefulStop: 5s
    auth: genesys
    requests:
      - name: query
        method: POST
        path: /api/v2/analytics/conversations/details/query
        json: { paging: { pageSize: 25, pageNumber: "{{randInt 1 10}}" } }
        expect: { status: [200] }
thresholds:
  http_reqs_throttled: ["rate<0.05"]
  http_req_service_time: ["p(95)<500ms"]
  http_req_duration: ["p(95)<2s"]
YAML

code=0
PACER_TARGET="http://127.0.0.1:${port}" PACER_CLIENT_SECRET=demo-secret \
  "$pacer" run -q "$work/plan.yaml" --report "$work/report.html" || code=$?
if [ "$code" -ne 0 ] && [ "$code" -ne 99 ]; then
  echo "pacer run failed with exit code $code"; exit "$code"
fi
echo "== report rendered (pacer exit $code: 0 passed, 99 a threshold failed)"

mkdir -p "$(dirname "$out")"
timeout 120 chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --hide-scrollbars --user-data-dir="$profile" \
  --screenshot="$PWD/$out" --window-size=1280,2400 "file://$work/report.html" >"$work/chromium.log" 2>&1 || {
  echo "chromium failed:"; cat "$work/chromium.log"; exit 1; }
[ -s "$out" ] || { echo "no screenshot written"; exit 1; }
echo "== screenshot: $out"
