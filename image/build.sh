#!/usr/bin/env bash
# `make image`: pacer's container image built on this machine, with no registry and no Docker:
# the release binary, image/rootfs.sh's root filesystem, and the Dockerfile's last stage built
# by buildah as it is written (its `COPY --from=builder /rootfs/ /` reads the rootfs made here),
# tagged docker.io/library/NAME:VERSION (what Kubernetes and podman read NAME:VERSION as) in the
# local container storage (/var/lib/containers, shared with podman)
# and saved as an OCI archive that kind, containerd (`ctr images import`) or `podman load` take.
#
#   image/build.sh NAME VERSION ARCHIVE        (the Makefile passes IMAGE_NAME, IMAGE_VERSION,
#                                               IMAGE_ARCHIVE)
#
# buildah and podman come from the distribution when missing, as `make deps` installs Redis.
set -euo pipefail

if [ $# -ne 3 ]; then
  echo "usage: $0 NAME VERSION ARCHIVE" >&2
  exit 2
fi
name=$1
version=$2
archive=$3
cd "$(dirname "$0")/.."
cargo=${CARGO:-cargo}

need_apt=()
command -v buildah >/dev/null || need_apt+=(buildah)
command -v podman >/dev/null || need_apt+=(podman)
command -v strip >/dev/null || need_apt+=(binutils)
[ -s /etc/ssl/certs/ca-certificates.crt ] || need_apt+=(ca-certificates)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

start=$(date +%s)
"$cargo" build --release --locked -p pacer-cli
built=$(date +%s)

work=target/image/build
rm -rf "$work"
mkdir -p "$work"
image/rootfs.sh target/release/pacer "$work/rootfs"

# The Dockerfile's last stage, with its one `COPY --from=builder /rootfs/ /` reading the rootfs
# just made. Anything else taken from another stage, or a RUN (there is no shell to run it),
# would make the two images differ: refuse it rather than build something else.
last_from=$(grep -n '^FROM ' Dockerfile | tail -n1 | cut -d: -f1)
if [ "$(sed -n "${last_from}p" Dockerfile)" != "FROM scratch" ]; then
  echo "Dockerfile: the last stage must be FROM scratch (image/build.sh builds it as written)" >&2
  exit 1
fi
tail -n "+$last_from" Dockerfile | sed 's|^COPY --from=builder /rootfs/ /$|COPY rootfs/ /|' \
  > "$work/Containerfile"
if grep -nE -- '--from=|^RUN ' "$work/Containerfile" >&2; then
  echo "Dockerfile: its last stage may only COPY --from=builder /rootfs/ / (see image/build.sh)" >&2
  exit 1
fi

# The image's name is the one a kubelet looks for when a pod says `pacer:VERSION`
# (docker.io/library/ is what Kubernetes adds to a name without a registry); podman finds it as
# `pacer:VERSION` too, and the archive's reference is the same.
ref="docker.io/library/$name:$version"
case "$name" in */*) ref="$name:$version" ;; esac

# The image's dates are the last commit's, so a rebuild of the same commit on the same machine
# gives the same digest.
epoch=$(git log -1 --format=%ct 2>/dev/null || echo 0)
previous=$(buildah images --noheading --format '{{.ID}}' "$ref" 2>/dev/null || true)
buildah build --quiet --pull=never --network=none --timestamp "$epoch" \
  -f "$work/Containerfile" -t "$ref" "$work" >/dev/null
# The previous build of this tag, now untagged (an image still used by a container stays).
current=$(buildah images --noheading --format '{{.ID}}' "$ref")
if [ -n "$previous" ] && [ "$previous" != "$current" ]; then
  buildah rmi "$previous" >/dev/null 2>&1 || true
fi

mkdir -p "$(dirname "$archive")"
rm -f "$archive"
buildah push --quiet "$ref" "oci-archive:$archive:$ref" >/dev/null

end=$(date +%s)
bytes=$(stat -c %s "$archive")
unpacked=$(du -sb "$work/rootfs" | cut -f1)
echo "image $ref ($name:$version for podman and Kubernetes)"
echo "archive $archive: $((bytes / 1024 / 1024)) MiB ($bytes bytes; unpacked $((unpacked / 1024 / 1024)) MiB)"
echo "release build $((built - start)) s, image $((end - built)) s"
