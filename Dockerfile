# syntax=docker/dockerfile:1
# The single pacer image. The Helm chart runs it as the controller (`pacer operator`) and as
# every LoadTest's worker pods (`pacer worker`); every other subcommand works too
# (`docker run --rm pacer run plan.yaml`, `pacer mock`, `pacer crd`).
#
#   docker build -t pacer:0.1.0 .
#
# Stage 1 builds the release binary with the Rust toolchain; stage 2 is Debian slim with CA
# certificates and the binary, running as an unprivileged user.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=trixie

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS builder
# cmake and a C toolchain: aws-lc-sys (rustls' crypto provider) builds C code.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake make g++ perl \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p pacer-cli \
 && install -m 0755 target/release/pacer /usr/local/bin/pacer

FROM debian:${DEBIAN_RELEASE}-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=builder /usr/local/bin/pacer /usr/local/bin/pacer
# The chart's pods run as non-root with a read-only root filesystem: pacer writes nothing.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/pacer"]
CMD ["--help"]
