#!/usr/bin/env bash
# `make compose-check`: builds Borough's image from the repository's Dockerfile, the
# stand-ins of deploy/standins, and runs scripts/compose-check.py against
# `docker compose up` (see there for what it checks).
#
# What differs from a user's `docker compose up --build` (no image can be pulled here):
# - the runtime stage's base is a Debian bookworm made with debootstrap from Debian's
#   packages and `docker import`ed (RUNTIME_IMAGE), not debian:bookworm-slim;
# - the binaries are built on this (bookworm) host with `cargo build --release --locked`
#   and copied in (BINARIES=prebuilt) instead of compiled in the rust:1.95 builder stage;
# - PostgreSQL and Prometheus are stand-ins from Debian's packages, swapped in by
#   deploy/standins/compose.yml (images only); the OpenTelemetry Collector, Jaeger and
#   Grafana are not started (Debian has no package for them).
#
# Settings: BASE_IMAGE (a base to use instead of making one), COMPOSE_PROJECT_NAME
# (boroughcheck), COMPOSE (the compose command; docker-compose, else `docker compose`).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
say() { echo "compose-check: $*" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# A Docker client that builds with BuildKit (which builds only the stages the target
# needs): `docker buildx`, or a client with BuildKit built in (Debian's docker.io 20.10).
build() {
    if docker buildx version >/dev/null 2>&1; then
        docker buildx build --load "$@"
        return
    fi
    local client
    for client in $(which -a docker | awk '!seen[$0]++'); do
        if echo 'FROM scratch' | DOCKER_BUILDKIT=1 "$client" build -q - >/dev/null 2>&1; then
            DOCKER_BUILDKIT=1 "$client" build "$@"
            return
        fi
    done
    say "no Docker client here builds with BuildKit (install docker-buildx, or Debian's docker.io)"
    return 1
}

if [ -z "${COMPOSE:-}" ]; then
    if command -v docker-compose >/dev/null; then COMPOSE=docker-compose
    elif docker compose version >/dev/null 2>&1; then COMPOSE="docker compose"
    else say "neither docker-compose nor docker compose is installed"; exit 1; fi
fi
export COMPOSE COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-boroughcheck}

# 1. The base: Debian bookworm from Debian's packages (made once, then reused).
base=${BASE_IMAGE:-borough-ci/debian:bookworm}
if ! docker image inspect "$base" >/dev/null 2>&1; then
    [ -n "${BASE_IMAGE:-}" ] && { say "BASE_IMAGE=$base does not exist"; exit 1; }
    command -v debootstrap >/dev/null || {
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    }
    say "making $base with debootstrap"
    rootfs=$(mktemp -d)
    trap 'as_root rm -rf "$rootfs"' EXIT
    as_root debootstrap --variant=minbase --include=ca-certificates,curl bookworm "$rootfs" \
        http://deb.debian.org/debian >/dev/null
    as_root rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    as_root tar -C "$rootfs" -c . | docker import - "$base" >/dev/null
fi
t_base=$(date +%s)

# 2. The binaries, built here, into the build context's target/prebuilt/.
say "building the release binaries"
cargo build --release --locked --quiet \
    --bin borough-user --bin borough-query --bin borough-config --bin borough-gateway
cargo build --release --locked --quiet -p borough-tls --features generate --bin borough-pki
rm -rf target/prebuilt && mkdir -p target/prebuilt
cp target/release/borough-user target/release/borough-query target/release/borough-config \
   target/release/borough-gateway target/release/borough-pki target/prebuilt/
t_binaries=$(date +%s)

# 3. Borough's image (the Dockerfile's runtime stage) and the stand-ins.
say "building borough:local"
build -q --build-arg RUNTIME_IMAGE="$base" --build-arg BINARIES=prebuilt -t borough:local . >/dev/null
for standin in postgres prometheus; do
    build -q --build-arg BASE="$base" -t "borough-standin/$standin:local" \
        "deploy/standins/$standin" >/dev/null
done
t_images=$(date +%s)
say "base $((t_base - started))s, binaries $((t_binaries - t_base))s, images $((t_images - t_binaries))s"

# 4. The stack, driven and broken.
python3 scripts/compose-check.py
say "done in $(( $(date +%s) - started ))s"
