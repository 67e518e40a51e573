# syntax=docker/dockerfile:1
#
# dispatchbox container image.
#
#   docker build -t dispatchbox:local .
#
# Stage 1 builds the release binary with the official Rust image; stage 2 runs it on
# distroless (glibc, libgcc, OpenSSL, CA certificates, no shell, no package manager) as an
# unprivileged user. The binary links libssl/libcrypto (librdkafka's TLS) and libz
# (librdkafka's compression) dynamically; everything else is Rust and statically linked.

ARG RUST_VERSION=1

FROM rust:${RUST_VERSION}-bookworm AS build

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# rdkafka-sys builds librdkafka from source with its own configure script: a C/C++
# toolchain, make, perl and pkg-config, plus the OpenSSL and zlib headers (the same list as
# scripts/install-test-deps). The rust image has most of them; installing is a no-op then.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ libssl-dev make perl pkg-config zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /build

# Dependency layer: build every dependency against stub sources, so that a change in src/
# rebuilds only the dispatchbox crate. The stubs' own artifacts are deleted afterwards so
# cargo cannot mistake them for the real crate (COPY keeps the sources' old mtimes).
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > benches/relay.rs \
    && cargo build --release --locked --bin dispatchbox \
    && rm -rf src \
        target/release/dispatchbox* \
        target/release/deps/dispatchbox-* \
        target/release/deps/libdispatchbox-* \
        target/release/.fingerprint/dispatchbox-*

# The migrations are embedded in the binary (include_str!). benches/ keeps its stub: the
# manifest declares the bench target, and the binary does not need it.
COPY sql ./sql
COPY src ./src
RUN cargo build --release --locked --bin dispatchbox \
    && install -D -m 0755 target/release/dispatchbox /out/dispatchbox \
    && /out/dispatchbox --version

# libz.so.1 is not part of every distroless variant: bring the build stage's (the same
# Debian release) under its multiarch directory, so the runtime never lacks it.
RUN libz="$(dpkg -L zlib1g | grep -m1 '/libz\.so\.1$')" \
    && install -D -m 0644 "$libz" "/out/lib/$(gcc -print-multiarch)/libz.so.1"

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="dispatchbox" \
      org.opencontainers.image.description="Transactional-outbox relay for PostgreSQL: tails the WAL through a logical replication slot and delivers outbox events to Kafka, webhooks or stdout." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"

COPY --from=build /out/lib/ /usr/lib/
COPY --from=build /out/dispatchbox /usr/local/bin/dispatchbox

# distroless' "nonroot" user; numeric so that Kubernetes' runAsNonRoot can verify it.
USER 65532:65532

ENV DISPATCHBOX_HTTP_ADDR=0.0.0.0:8080 \
    DISPATCHBOX_LOG_FORMAT=json
EXPOSE 8080

# `dispatchbox healthcheck` asks GET /health on DISPATCHBOX_HTTP_ADDR and exits 0/1: no
# curl or shell in the image.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["/usr/local/bin/dispatchbox", "healthcheck"]

# Exec form: the relay is PID 1 and receives SIGTERM itself (it drains in-flight
# deliveries for up to DISPATCHBOX_SHUTDOWN_TIMEOUT, then exits 0).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/dispatchbox"]
CMD ["run"]
