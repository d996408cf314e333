# One image with the four services (and `borough-pki`, which makes a development PKI); the
# service is the command:
#   docker run borough borough-gateway      (the default)
#   docker run borough borough-user migrate
#
# Stages: cargo-chef plans the dependency graph, dependencies are built in their own layer
# (rebuilt only when Cargo.toml/Cargo.lock change), then our code; the runtime is Debian
# slim with the binaries, CA certificates and curl (for container health checks), as a
# non-root user. protoc comes from the protoc-bin-vendored crate: no system package.
ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-bookworm AS chef
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

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin borough
COPY --from=builder /out/ /usr/local/bin/
USER 10001:10001
# Containers listen on every interface; logs are JSON lines; the config snapshot goes to
# a writable temp dir (the root filesystem may be read-only).
ENV BOROUGH_LOG_FORMAT=json \
    BOROUGH_CONFIG_SNAPSHOT=/tmp/borough-config.json
EXPOSE 8080 50051 50052 50053 9460 9461 9462 9463
CMD ["borough-gateway"]
