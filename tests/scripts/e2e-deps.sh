#!/usr/bin/env bash
# `make e2e-deps`: builds, from their Go modules with the machine's Go, pinned versions of the
# tools the Kubernetes end-to-end tests need: kube-apiserver and kube-controller-manager (from
# k8s.io/kubernetes through a wrapper module that pins each staging module), etcd, and helm v4.
# `make e2e-node-deps` (this script with --node) adds what only the real-node suite
# (`make e2e-node`) needs: kubelet and kube-scheduler from the same wrapper module, and Debian's
# containerd and runc. They stay out of `make test`'s path: the kubelet alone takes ~400 CPU-s
# to build (12 min on a busy 2-core machine) for a suite `make test` does not run.
# Binaries go to $PACER_TOOLS (default ~/.cache/pacer-tools/bin), outside git. A second run is
# a no-op: each binary is rebuilt only when missing or built for another version.
set -euo pipefail

K8S_VERSION=1.35.4          # kube-apiserver, kube-controller-manager, kubelet, kube-scheduler
ETCD_VERSION=3.6.16
HELM_VERSION=4.3.1

tools="${PACER_TOOLS:-$HOME/.cache/pacer-tools}"
bin="$tools/bin"
mkdir -p "$bin"
export GOFLAGS="-mod=mod"
export GOTOOLCHAIN=local

have() { # name version: true when $bin/name exists and was built for version
  [ -x "$bin/$1" ] && [ "$(cat "$bin/$1.version" 2>/dev/null)" = "$2" ]
}

node=false
case "${1:-}" in
  --node) node=true ;;
  "") ;;
  *) echo "e2e-deps: unknown argument $1 (--node adds the real node's tools)" >&2; exit 2 ;;
esac

# The real node of `make e2e-node` (tests/src/kube/node.rs): Debian's containerd (with ctr) and
# runc, and a static libc for the pause image it builds (gcc -static).
need_apt=()
if $node; then
command -v containerd >/dev/null || need_apt+=(containerd)
command -v runc >/dev/null || [ -x /usr/sbin/runc ] || need_apt+=(runc)
[ -f /usr/lib/x86_64-linux-gnu/libc.a ] || [ -f /usr/lib/libc.a ] || need_apt+=(libc6-dev)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "e2e-deps: installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! command -v go >/dev/null; then
  echo "e2e-deps: Go is required (it builds kube-apiserver, etcd and helm from their modules)" >&2
  exit 1
fi

if ! have helm "$HELM_VERSION"; then
  echo "e2e-deps: building helm v$HELM_VERSION"
  GOBIN="$bin" go install \
    -ldflags "-X helm.sh/helm/v4/internal/version.version=v$HELM_VERSION" \
    "helm.sh/helm/v4/cmd/helm@v$HELM_VERSION"
  echo "$HELM_VERSION" > "$bin/helm.version"
fi

if ! have etcd "$ETCD_VERSION"; then
  echo "e2e-deps: building etcd v$ETCD_VERSION"
  # etcd's server module has replace directives, so `go install mod@version` refuses it:
  # build its main package from a small wrapper module instead.
  w="$tools/src/etcd-$ETCD_VERSION"; mkdir -p "$w"; cd "$w"
  if [ ! -f go.mod ]; then
    go mod init pacer-e2e-etcd >/dev/null 2>&1
    cat > main.go <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
    go get "go.etcd.io/etcd/server/v3@v$ETCD_VERSION" >/dev/null 2>&1
    go mod tidy >/dev/null
  fi
  go build -o "$bin/etcd" .
  echo "$ETCD_VERSION" > "$bin/etcd.version"
fi

# The commands built from k8s.io/kubernetes, all in one wrapper module whose tools.go lists every
# one of them (so the module is the same whichever are built); --node builds the node's too.
K8S_ALL="kube-apiserver kube-controller-manager kubelet kube-scheduler"
K8S_COMMANDS="kube-apiserver kube-controller-manager"
if $node; then K8S_COMMANDS="$K8S_ALL"; fi
k8s_missing=""
for c in $K8S_COMMANDS; do
  have "$c" "$K8S_VERSION" || k8s_missing="$k8s_missing $c"
done
if [ -n "$k8s_missing" ]; then
  echo "e2e-deps: building$k8s_missing v$K8S_VERSION (takes a while)"
  w="$tools/src/kubernetes-$K8S_VERSION"; mkdir -p "$w"; cd "$w"
  if [ ! -f go.mod ]; then
    go mod init pacer-e2e-kubernetes >/dev/null 2>&1
    go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" >/dev/null
    kmod="$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/v$K8S_VERSION.mod"
    {
      echo "require k8s.io/kubernetes v$K8S_VERSION"
      # every staging module (listed at v0.0.0) pinned to its matching v0.X.Y release
      grep -E '^\s+k8s\.io/[a-z0-9-]+ v0\.0\.0$' "$kmod" | awk -v v="0.${K8S_VERSION#1.}" \
        '{print "replace " $1 " => " $1 " v" v}'
    } >> go.mod
  fi
  # tools.go imports every command, so `go mod tidy` keeps all their dependencies; a wrapper
  # made before kubelet and kube-scheduler were added is tidied again.
  want="$(printf '//go:build tools\n\npackage tools\n\nimport (\n'
          for c in $K8S_ALL; do printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$c"; done
          printf ')\n')"
  if [ "$(cat tools.go 2>/dev/null)" != "$want" ]; then
    printf '%s\n' "$want" > tools.go
    go mod tidy >/dev/null
  fi
  ld="-X k8s.io/component-base/version.gitVersion=v$K8S_VERSION -X k8s.io/client-go/pkg/version.gitVersion=v$K8S_VERSION"
  ld="$ld -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$(echo "$K8S_VERSION" | cut -d. -f2)"
  for c in $k8s_missing; do
    start=$(date +%s)
    go build -ldflags "$ld" -o "$bin/$c" "k8s.io/kubernetes/cmd/$c"
    echo "$K8S_VERSION" > "$bin/$c.version"
    echo "e2e-deps: $c built in $(( $(date +%s) - start )) s"
  done
fi

echo "e2e-deps: ready in $bin: $(ls "$bin" | grep -v '\.version$' | tr '\n' ' ')"
