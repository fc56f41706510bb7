# pacer: the front door. `make demo` and `make test` work on a fresh machine.
SHELL := /bin/bash
CARGO ?= cargo
PACER := target/debug/pacer
DEMO_PORT ?= 18080

.PHONY: all build demo test check lint fmt deps e2e-deps e2e-node-deps crds chart bench bench-fleet bench-controller clean help report-shot image image-test e2e-node

help:
	@echo "make demo   - build, start the mock API, run examples/user-story.yaml, show the summary"
	@echo "make test   - install what is missing, then run the whole test suite"
	@echo "make check  - fmt, clippy and every test that needs no Go-built tool (minutes, not half an hour)"
	@echo "make lint   - cargo fmt --check and clippy -D warnings"
	@echo "make e2e-deps - build kube-apiserver, etcd, helm for the Kubernetes e2e tests (once)"
	@echo "make e2e-node-deps - e2e-deps plus kubelet, kube-scheduler, containerd and runc for make e2e-node (once)"
	@echo "make image  - the container image without Docker or a registry: $(IMAGE), saved as $(IMAGE_ARCHIVE)"
	@echo "make image-test - make image, then run it with podman (tests/tests/image.rs)"
	@echo "make e2e-node - make image, then the chart and the image on a real node: containerd, kubelet, kube-scheduler"
	@echo "make crds   - regenerate charts/pacer/crds/ from the Rust types (pacer crd)"
	@echo "make chart  - helm lint and helm template of charts/pacer (helm from make e2e-deps)"
	@echo "make bench  - benchmarks against peers (see docs/benchmarks.md)"
	@echo "make bench-fleet - 1000 simulated workers sharing one Redis at 20k/s (docs/benchmarks.md)"
	@echo "make bench-controller - pacer controller with 1000 simulated workers, 10 min (BENCH_QUICK=1: 20 s; docs/benchmarks.md)"
	@echo "make report-shot - a short run against pacer mock, its HTML report, a screenshot in docs/report.png"

all: build

deps:
	@bash tests/scripts/ensure-deps.sh

# kube-apiserver, kube-controller-manager, etcd and helm for the Kubernetes end-to-end tests,
# built from their Go modules into ~/.cache/pacer-tools/bin (a no-op when they are there).
e2e-deps:
	@bash tests/scripts/e2e-deps.sh

e2e-node-deps:
	@bash tests/scripts/e2e-deps.sh --node

build: deps
	$(CARGO) build -p pacer-cli

# The container image without Docker or a registry (image/build.sh, buildah and podman from
# apt-get when missing): the release binary in a root filesystem of its own (image/rootfs.sh),
# the Dockerfile's last stage built by buildah, tagged $(IMAGE) in the local container storage
# and saved as the OCI archive $(IMAGE_ARCHIVE) for kind, containerd or a registry
# (docs/kubernetes.md "Install"). The name and tag are the chart's defaults (repository pacer,
# tag = appVersion = the crate version).
IMAGE_NAME := pacer
IMAGE_VERSION := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' Cargo.toml | head -n1)
IMAGE := $(IMAGE_NAME):$(IMAGE_VERSION)
IMAGE_ARCHIVE := target/image/$(IMAGE_NAME)-$(IMAGE_VERSION).oci.tar
image: deps
	@bash image/build.sh $(IMAGE_NAME) $(IMAGE_VERSION) $(IMAGE_ARCHIVE)

# The built image run with podman (tests/tests/image.rs; helm from e2e-deps for the chart's
# securityContext). Not part of `make test`: the release build alone takes minutes on 2 cores.
image-test: image e2e-deps
	PACER_IMAGE=$(IMAGE) PACER_IMAGE_ARCHIVE=$(CURDIR)/$(IMAGE_ARCHIVE) \
	  $(CARGO) test -p pacer-tests --features image --test image
	$(CARGO) clippy -p pacer-tests --features image --test image -- -D warnings

# The real-node end-to-end tests (tests/tests/node_e2e.rs, docs/testing.md "A real node"): the
# image of `make image` in containerd under the kubelet and kube-scheduler of `make e2e-node-deps`,
# the chart with hostNetwork, the user story in worker containers. Not part of `make test`: it
# needs the image's release build.
e2e-node: image e2e-node-deps
	PACER_IMAGE=$(IMAGE) PACER_IMAGE_ARCHIVE=$(CURDIR)/$(IMAGE_ARCHIVE) \
	  $(CARGO) test -p pacer-tests --features node-e2e --test node_e2e -- --test-threads=5
	$(CARGO) clippy -p pacer-tests --features node-e2e --test node_e2e -- -D warnings

# The CRDs, generated from crates/pacer-operator/src/crd.rs and ratebudget.rs (a test fails
# when stale).
crds:
	$(CARGO) run -q -p pacer-cli -- crd --kind load-test > charts/pacer/crds/loadtests.pacer.dev.yaml
	$(CARGO) run -q -p pacer-cli -- crd --kind rate-budget > charts/pacer/crds/ratebudgets.pacer.dev.yaml

# The Helm chart with the helm that `make e2e-deps` builds (tests/tests/chart.rs checks more).
HELM ?= $(or $(PACER_TOOLS),$(HOME)/.cache/pacer-tools)/bin/helm
chart: e2e-deps
	$(HELM) lint --strict charts/pacer
	$(HELM) template pacer charts/pacer --include-crds > /dev/null

# The main job: the mock API and the user-story plan through `pacer run`, embedded
# (no Redis, no cluster). The mock runs on loopback and is stopped at the end.
demo: build
	@bash tests/scripts/demo.sh $(DEMO_PORT)

test: deps e2e-deps
	$(CARGO) fmt --all -- --check
	$(CARGO) build -p pacer-cli
	$(CARGO) test --workspace --no-fail-fast
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The contributor's loop: everything `make test` runs except the tests that need the Go-built
# Kubernetes tools (k8s_*.rs and chart.rs in tests/), so a cold machine starts testing in
# minutes instead of after the 15-30 minute `make e2e-deps`. Redis still comes from `make deps`.
GO_TOOL_TESTS := $(wildcard tests/tests/k8s_*.rs) tests/tests/chart.rs
# tests/tests/image.rs needs the built image (`make image-test`; the `image` feature).
IMAGE_TESTS := tests/tests/image.rs
# tests/tests/node_e2e.rs needs the image, containerd and the kubelet (`make e2e-node`; the
# `node-e2e` feature).
NODE_TESTS := tests/tests/node_e2e.rs
E2E_NO_GO := $(patsubst tests/tests/%.rs,--test %,$(filter-out $(GO_TOOL_TESTS) $(IMAGE_TESTS) $(NODE_TESTS),$(wildcard tests/tests/*.rs)))
check: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) build -p pacer-cli
	$(CARGO) test --workspace --exclude pacer-tests --no-fail-fast
	$(CARGO) test -p pacer-tests --lib $(E2E_NO_GO) --no-fail-fast

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

# The fleet limiter under load: a throwaway redis-server, 1000 simulated workers (not a test).
bench-fleet: deps
	@bash bench/fleet-sim.sh

bench-controller: deps
	@bash bench/controller-scale.sh

clean:
	$(CARGO) clean
