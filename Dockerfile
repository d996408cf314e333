# One image with the four services (and `borough-pki`, which makes a development PKI); the
# service is the command:
#   docker run borough borough-gateway      (the default)
#   docker run borough borough-user migrate
#
# Stages: cargo-chef plans the dependency graph, dependencies are built in their own layer
# (rebuilt only when Cargo.toml/Cargo.lock change), then our code; the runtime is Debian
# slim with the binaries, CA certificates and curl (for container health checks), as a
# non-root user. protoc comes from the protoc-bin-vendored crate: no system package.
#
# Build arguments (the defaults are what users get):
#   RUST_IMAGE     the builder's base (rust:1.95-bookworm)
#   RUNTIME_IMAGE  the runtime's base (debian:bookworm-slim)
#   BINARIES       `builder`: compile here; `prebuilt`: take the binaries from
#                  target/prebuilt/ in the build context, compiled beforehand by
#                  `cargo build --release` on a Debian bookworm host (what CI does, where
#                  no image can be pulled: scripts/compose-check.sh). The runtime stage is
#                  the same either way.
ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim
ARG BINARIES=builder

FROM ${RUST_IMAGE} AS chef
RUN cargo install cargo-chef --locked --version ^0.1
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked \
        --bin borough-user --bin borough-query --bin borough-config --bin borough-gateway \
    && cargo build --release --locked -p borough-tls --features generate --bin borough-pki \
    && mkdir -p /out \
    && cp target/release/borough-user target/release/borough-query \
          target/release/borough-config target/release/borough-gateway \
          target/release/borough-pki /out/

# (LICENSE keeps the copy valid when target/prebuilt/ is absent: builders without
# BuildKit build every stage, used or not.)
FROM scratch AS prebuilt
COPY LICENSE target/prebuil[t]/ /out/

FROM ${BINARIES} AS binaries

FROM ${RUNTIME_IMAGE} AS runtime
# ca-certificates and curl: installed unless the base has them already.
RUN if ! command -v curl >/dev/null || [ ! -s /etc/ssl/certs/ca-certificates.crt ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends ca-certificates curl \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin borough
COPY --from=binaries /out/borough-* /usr/local/bin/
COPY LICENSE /usr/share/doc/borough/LICENSE
USER 10001:10001
# Containers listen on every interface; logs are JSON lines; the config snapshot goes to
# a writable temp dir (the root filesystem may be read-only).
ENV BOROUGH_LOG_FORMAT=json \
    BOROUGH_CONFIG_SNAPSHOT=/tmp/borough-config.json
EXPOSE 8080 50051 50052 50053 9460 9461 9462 9463
CMD ["borough-gateway"]
