# syntax=docker/dockerfile:1
#
# keyauth's container image: the `keyauth` binary on distroless (glibc, no shell), run as the
# non-root user 65532.
#
#   DOCKER_BUILDKIT=1 docker build -t keyauth:latest .
#   docker run --rm keyauth:latest --help
#   docker run --rm keyauth:latest gen-seal-key
#
# Production runs it with PostgreSQL (KEYAUTH_DATABASE_URL from a Secret, see deploy/). Without a
# database URL keyauth opens the default sqlite://keyauth.db, relative to the working directory:
# /home/nonroot, writable by the nonroot user (mount a volume there to keep it). Under
# Kubernetes the root filesystem is read-only and no file is written.

# The builder and the runtime must share a Debian release: the binary links the builder's glibc
# and must find one at least as new at run time (bookworm <-> distroless cc-debian12; for trixie,
# use cc-debian13 below). The toolchain must be >= the workspace's rust-version (1.94).
ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
# The whole workspace (see .dockerignore): Cargo.toml, Cargo.lock, crates/ (the migrations in
# crates/keyauth-core/migrations and the console's page, style and built script in console/
# are compiled into the binary) and proto/ (compiled by protox
# in a build script: no system protoc).
COPY . .
# Cache mounts: the crates.io registry and the target directory survive between builds, so a
# rebuild compiles only what changed. The target directory is a cache, not part of the layer:
# the binary is copied out of it in the same step.
RUN --mount=type=cache,id=keyauth-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=keyauth-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=keyauth-target,target=/src/target,sharing=locked \
    cargo build --release --locked -p keyauth --bin keyauth \
    && install -D -m 0755 target/release/keyauth /out/keyauth

FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="keyauth" \
      org.opencontainers.image.description="gRPC key authority: issues, rolls, revokes and verifies API keys; Envoy ext_authz" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"
COPY --from=build /out/keyauth /usr/local/bin/keyauth
# nonroot's home, owned by 65532 in the base image: the only writable place for the default
# SQLite file.
WORKDIR /home/nonroot
USER 65532:65532
# 50051: gRPC (KeyAuthorityService, grpc.health.v1, envoy.service.auth.v3.Authorization).
# 9090: Prometheus /metrics, when started with --metrics-listen 0.0.0.0:9090.
# 8081: the operator console and gRPC-Web (and the GitHub webhook), with --http-listen
#       0.0.0.0:8081. The console's files are compiled into the binary (its script built
#       and committed in console/dist: the image build needs no Node).
EXPOSE 50051 9090 8081
# SIGTERM (docker stop, Kubernetes): NOT_SERVING, drain in-flight calls (--shutdown-grace,
# 30s by default), exit 0. Give `docker stop` a longer timeout than that: docker stop -t 40.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/keyauth"]
CMD ["serve", "--listen", "0.0.0.0:50051"]
