# syntax=docker/dockerfile:1
# The single pacer image. The Helm chart runs it as the controller (`pacer operator`) and as
# every LoadTest's worker pods (`pacer worker`); every other subcommand works too
# (`docker run --rm pacer run plan.yaml`, `pacer mock`, `pacer crd`).
#
#   docker build -t pacer:0.1.0 .
#
# Without Docker or a registry, `make image` builds the same image with buildah (image/build.sh):
# it runs image/rootfs.sh on this machine's release build and builds this file's last stage as it
# is written (the `COPY --from=builder /rootfs/` taken from its own directory), so USER,
# ENTRYPOINT and CMD below are the image's in both ways; tests/tests/image.rs checks them on the
# built image.
#
# Stage 1 builds the release binary with the Rust toolchain and assembles the root filesystem
# (image/rootfs.sh: the binary, the shared libraries it links, CA certificates, /etc/passwd with
# the user nonroot 65532); stage 2 is that filesystem alone: no shell, no package manager.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=trixie

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS builder
# cmake and a C toolchain: aws-lc-sys (rustls' crypto provider) builds C code; ca-certificates
# for the image (image/rootfs.sh copies its bundle).
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake make g++ perl ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p pacer-cli \
 && image/rootfs.sh target/release/pacer /rootfs

FROM scratch
COPY --from=builder /rootfs/ /
# The chart's pods run as non-root (numeric, so the kubelet can check runAsNonRoot) with a
# read-only root filesystem: pacer writes nothing it is not told to.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/pacer"]
CMD ["--help"]
