#!/usr/bin/env bash
# `make bench`: every benchmark script in bench/ in turn (each prints its results; the write-ups
# are in docs/benchmarks.md). Not tests: they take minutes and load the machine.
set -euo pipefail
cd "$(dirname "$0")"
for b in ./*.sh; do
  [ "$b" = ./run.sh ] && continue
  echo "== ${b#./}"
  bash "$b"
done
