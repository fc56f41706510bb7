#!/usr/bin/env bash
# An OCI image archive of one layer written directly (tar and sha256sum, no buildah, no
# registry), for images the real-node e2e harness builds itself: the pause image every pod
# sandbox runs (tests/src/kube/node.rs). `ctr -n k8s.io images import ARCHIVE` names the image
# NAME (the io.containerd.image.name annotation).
#
#   tests/scripts/oci-archive.sh ROOTFS NAME ARCHIVE ENTRYPOINT_JSON USER
#   e.g. tests/scripts/oci-archive.sh rootfs localhost/pacer-e2e-pause:1 pause.tar '["/pause"]' 65535
#
# Files are owned by 0:0 with mtime 0, so the same ROOTFS gives the same digest.
set -euo pipefail

if [ $# -ne 5 ]; then
  echo "usage: $0 ROOTFS NAME ARCHIVE ENTRYPOINT_JSON USER" >&2
  exit 2
fi
rootfs=$1 name=$2 archive=$3 entrypoint=$4 user=$5
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/blobs/sha256"

# blob FILE: moves FILE into blobs/ under its digest; prints "DIGEST SIZE"
blob() {
  local digest size
  digest=$(sha256sum "$1" | cut -d' ' -f1)
  size=$(stat -c %s "$1")
  mv "$1" "$work/blobs/sha256/$digest"
  echo "$digest $size"
}

tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$rootfs" -cf "$work/layer" .
read -r layer layer_size < <(blob "$work/layer")
printf '{"architecture":"amd64","os":"linux","config":{"Entrypoint":%s,"User":"%s"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
  "$entrypoint" "$user" "$layer" > "$work/config"
read -r config config_size < <(blob "$work/config")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
  "$config" "$config_size" "$layer" "$layer_size" > "$work/manifest"
read -r manifest manifest_size < <(blob "$work/manifest")
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
  "$manifest" "$manifest_size" "$name" "${name##*:}" > "$work/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' > "$work/oci-layout"
tar -C "$work" -cf "$archive" oci-layout index.json blobs
