# pacer: the front door. `make demo` and `make test` work on a fresh machine.
SHELL := /bin/bash
CARGO ?= cargo
PACER := target/debug/pacer
DEMO_PORT ?= 18080

.PHONY: all build demo test test-unit lint fmt deps bench clean help report-shot

help:
	@echo "make demo   - build, start the mock API, run examples/user-story.yaml, show the summary"
	@echo "make test   - install what is missing, then run the whole test suite"
	@echo "make lint   - cargo fmt --check and clippy -D warnings"
	@echo "make bench  - benchmarks against peers (see docs/benchmarks.md)"
	@echo "make report-shot - a short run against pacer mock, its HTML report, a screenshot in docs/report.png"

all: build

deps:
	@bash tests/scripts/ensure-deps.sh

build: deps
	$(CARGO) build -p pacer-cli

# The main job: the mock API and the user-story plan through `pacer run`, embedded
# (no Redis, no cluster). The mock runs on loopback and is stopped at the end.
demo: build
	@bash tests/scripts/demo.sh $(DEMO_PORT)

test: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) build -p pacer-cli
	$(CARGO) test --workspace --no-fail-fast
	$(CARGO) clippy --workspace --all-targets -- -D warnings

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

# A real short run against `pacer mock` rendered with --report, screenshotted by headless
# Chromium (installed with apt-get when missing) into docs/report.png.
report-shot: deps
	@bash tests/scripts/report-shot.sh

bench: deps
	@bash bench/run.sh

clean:
	$(CARGO) clean
