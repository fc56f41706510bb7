#!/usr/bin/env bash
# `make demo`: start `pacer mock` on loopback, run the user-story plan against it, show the
# summary, stop the mock. Exits with pacer's exit code.
set -uo pipefail
port="${1:-18080}"
pacer=target/debug/pacer
log=$(mktemp)
"$pacer" mock --listen "127.0.0.1:${port}" >"$log" 2>&1 &
mock=$!
trap 'kill $mock 2>/dev/null; wait $mock 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 1 50); do
  grep -q "listening" "$log" && break
  if ! kill -0 $mock 2>/dev/null; then echo "pacer mock failed to start:"; cat "$log"; exit 1; fi
  sleep 0.1
done
echo "== pacer mock on http://127.0.0.1:${port} (rate limits like a SaaS API)"
echo "== pacer run examples/user-story.yaml"
PACER_TARGET="http://127.0.0.1:${port}" "$pacer" run examples/user-story.yaml
code=$?
echo "== pacer exited with $code (0 = thresholds passed, 99 = a threshold failed)"
exit $code
