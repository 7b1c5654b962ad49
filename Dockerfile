# The Starling image: one executable, `starling`, for every target
# (`starling serve --target connection-manager|session-router|presence|storage`,
# or all of them in one process by default) and the operator commands.
#
#   docker build -t starling:0.1.0 .
#
# Stage 1 builds the release binary with the workspace's locked dependencies.
# Stage 2 is distroless: glibc and libgcc only, no shell, no package manager,
# running as the unprivileged user 65532. The binary links nothing else
# (rustls with ring for TLS, SQLite compiled in); it makes no outbound TLS
# connection, so it needs no CA certificates.
#
# Machines without access to an image registry build the same image from
# `scratch` with the already-built binary: scripts/build-image.sh (buildah).
# Both images share one contract, which the Helm chart (charts/starling)
# relies on: the entrypoint /usr/local/bin/starling, the command `serve`,
# the user 65532:65532, the data directory /var/lib/starling (writable by
# that user; mount a volume there with a read-only root filesystem) and the
# ports below.

# The toolchain the project is built and tested with.
ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p starling \
    && install -D -m 0755 target/release/starling /out/usr/local/bin/starling \
    && install -d -m 0755 -o 65532 -g 65532 /out/var/lib/starling

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ /
USER 65532:65532
WORKDIR /var/lib/starling
ENV STARLING_DATA_DIR=/var/lib/starling
# c2s (STARTTLS), c2s direct TLS (XEP-0368), HTTP (health, metrics,
# WebSocket, BOSH), gRPC between the services (cluster.grpc in the chart).
EXPOSE 5222 5223 5280 7000
ENTRYPOINT ["/usr/local/bin/starling"]
CMD ["serve"]
