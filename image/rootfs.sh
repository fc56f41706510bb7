#!/usr/bin/env bash
# The root filesystem of pacer's image, assembled from a built binary: the one list of what the
# image holds, used by `make image` (image/build.sh, on this machine) and by the Dockerfile's
# builder stage (`COPY --from=builder /rootfs/ /`), so both build the same image.
#
#   image/rootfs.sh BINARY DEST
#
# DEST gets, and nothing else (no shell, no package manager):
#   /usr/local/bin/pacer                  BINARY stripped of its line tables and symbols (42 MB
#                                         with symbols, 35 without, measured; the image stays
#                                         under 40 MB unpacked); BINARY itself keeps them, so an
#                                         address in a crash can be looked up (addr2line -e)
#   the shared libraries `ldd BINARY` names, at the paths it names (glibc, libm, libgcc_s and
#   the loader /lib64/ld-linux-x86-64.so.2 on x86_64): copied, not linked, from the machine
#   that built BINARY, so they are the versions it was linked against
#   /etc/ssl/certs/ca-certificates.crt    the build machine's CA bundle (Debian's ca-certificates;
#                                         $CA_BUNDLE to use another): rustls' platform verifier
#                                         and the Redis client read it
#   /etc/passwd, /etc/group               root, nobody and nonroot (65532), the image's USER
#   /etc/nsswitch.conf                    hosts from /etc/hosts, then DNS
# No /tmp: pacer writes only where its flags say (a report, --summary-json), never a temporary
# file, so the chart's read-only root filesystem needs no emptyDir.
set -euo pipefail

if [ $# -ne 2 ]; then
  echo "usage: $0 BINARY DEST" >&2
  exit 2
fi
binary=$1
dest=$2
here=$(cd "$(dirname "$0")" && pwd)
ca_bundle=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}

[ -x "$binary" ] || { echo "$binary: not an executable" >&2; exit 1; }
[ -s "$ca_bundle" ] || { echo "$ca_bundle: missing (apt-get install ca-certificates)" >&2; exit 1; }

rm -rf "$dest"
install -d -m 0755 "$dest/usr/local/bin" "$dest/etc/ssl/certs"
strip --strip-all -o "$dest/usr/local/bin/pacer" "$binary"
chmod 0755 "$dest/usr/local/bin/pacer"

# Every library ldd resolves, by the absolute path it prints ("libc.so.6 => /lib/... (0x...)"
# and the loader's own line "/lib64/ld-linux-x86-64.so.2 (0x...)"); linux-vdso has no file.
libs=$(ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u)
if ldd "$binary" | grep -q "not found"; then
  echo "$binary: a shared library is missing:" >&2
  ldd "$binary" >&2
  exit 1
fi
for lib in $libs; do
  install -d -m 0755 "$dest$(dirname "$lib")"
  cp -L "$lib" "$dest$lib"
  chmod 0755 "$dest$lib"
done

install -m 0644 "$ca_bundle" "$dest/etc/ssl/certs/ca-certificates.crt"
install -m 0644 "$here/etc/passwd" "$here/etc/group" "$here/etc/nsswitch.conf" "$dest/etc/"
