# Borough — the commands an operator and a developer need.
#
#   make run        the whole stack locally: PostgreSQL under ./.data, user, query, gateway
#   make test       every test in the workspace (PostgreSQL from the test kit)
#   make lint       rustfmt check, clippy with warnings as errors, cargo deny (bans, licences,
#                   sources), cargo machete (unused dependencies), no import loops between
#                   files (scripts/import-loops.py)
#   make build      debug build of every binary
#   make clean-data forget the local cluster, tokens and demo tenant of `make run`
#   make bench      the performance suite side by side with its baselines (release; wrk, pgbench)
#   make bench-smoke  the same suite for one second per measurement on the debug build
#                   (that it runs end to end, not its figures; CI runs it)
#   make bench-client  the backend client's cost per call against tonic's and tower's
#                   balancers (release build)
#   make bench-config  the config service at 1,000 watchers (release build)
#   make bench-resilience  limiter accuracy, breaker open time and fast-fail p99, rolling restart
#   make bench-move  a live tenant move of 100,000 users under load (release): time to
#                   switch and to done, the writes' fence, the slowest write
#   make bench-hostile  attacks a hostile tenant can try, against the release binaries: peak
#                   memory, a calm tenant's p99, what each attack got (docs/security.md)
#   make fuzz       schemathesis against a stack started as `make run` starts it (its own
#                   ports and data), every operation of /openapi.json, at most five minutes
#   make k8s-check  validate docker-compose.yml, the kustomize overlays and the Helm chart offline
#   make console-test  the operator console in a real browser (chromium, chromium-driver):
#                   sign in, tenants, keys, config with schema, conflicts, rollback, live
#                   status, CSRF and CSP; screenshots under target/console/
#   make compose-check  build the image and run `docker compose up` for real: the README's
#                   walk-through, scaling, a query replica killed, PostgreSQL cut off, the
#                   user service restarted under writes, `down -v` (Docker engine needed)
#   make upgrade PID=<old gateway pid> [BIN=target/debug/borough-gateway] [ADMIN=127.0.0.1:9470]
#                   replace a running gateway in place (SO_REUSEPORT), rolling back on failure

CARGO ?= cargo
SERVICE_BINS := --bin borough-config --bin borough-user --bin borough-query --bin borough-gateway --bin borough-dev

.PHONY: run test lint deny machete build fmt clean-data wrk bench bench-smoke bench-client bench-config bench-resilience bench-hostile bench-move fuzz upgrade k8s-check compose-check console-test

run:
	$(CARGO) build $(SERVICE_BINS)
	$(CARGO) run --quiet --bin borough-dev -- run

# cargo-nextest runs each test in its own process (fast, isolated); plain `cargo test`
# works too when nextest is not installed.
test:
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --no-fail-fast; \
	else \
		$(CARGO) test --workspace --no-fail-fast; \
	fi

lint: deny machete
	python3 scripts/import-loops.py
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# A dependency no source file uses (cargo-machete, installed from crates.io when missing;
# a crate imported under another name is listed in its [package.metadata.cargo-machete]).
machete:
	@$(CARGO) machete --version >/dev/null 2>&1 || $(CARGO) install --locked cargo-machete
	$(CARGO) machete

# Licences, duplicate majors and sources of every dependency (deny.toml); cargo-deny is
# installed from crates.io when missing. Advisories need the RustSec database, which is
# fetched from the network: `cargo deny check advisories` where it can be (docs/security.md).
deny:
	@$(CARGO) deny --version >/dev/null 2>&1 || $(CARGO) install --locked cargo-deny
	$(CARGO) deny --log-level error check bans licenses sources

build:
	$(CARGO) build --workspace --bins

fmt:
	$(CARGO) fmt --all

clean-data:
	rm -rf .data

# Borough against its baselines: the gateway vs bare axum, REST vs direct gRPC, uncached
# reads vs pgbench -S, RLS vs a database tenant, writes, footprint (release build; about
# five minutes after the build; BENCH_SECONDS, BENCH_CONNECTIONS, BENCH_ROUNDS, BENCH_ONLY;
# target/bench/results.json).
bench: wrk
	$(CARGO) build --release --bin borough-user --bin borough-query --bin borough-config \
		--bin borough-gateway --bin borough-hello --bin borough-bench --bin borough-client-bench
	./target/release/borough-bench
	./target/release/borough-client-bench

# wrk and h2load (nghttp2-client) come from Debian's packages, installed here when missing.
wrk:
	@{ command -v wrk && command -v h2load; } >/dev/null || { echo "bench: installing wrk and h2load"; \
		if [ "$$(id -u)" -eq 0 ]; then sudo=; else sudo=sudo; fi; \
		$$sudo apt-get update -qq && $$sudo apt-get install -y -qq wrk nghttp2-client >/dev/null; }

# The suite end to end in seconds on the debug build: every measurement for one second,
# one round (debug figures mean nothing; that it runs does).
bench-smoke: wrk
	$(CARGO) build --bin borough-user --bin borough-query --bin borough-config \
		--bin borough-gateway --bin borough-hello --bin borough-bench --bin borough-client-bench
	BENCH_SECONDS=1 BENCH_ROUNDS=1 ./target/debug/borough-bench
	BENCH_SECONDS=1 BENCH_ROUNDS=1 ./target/debug/borough-client-bench

# What the backend client costs a call against a bare tonic channel, tonic's balancer and
# tower's p2c over PeakEwma, in one process (release; BENCH_SECONDS, BENCH_ROUNDS,
# BENCH_CONNECTIONS; writes target/bench/client.json).
bench-client:
	$(CARGO) build --release --bin borough-client-bench
	./target/release/borough-client-bench

# The config service under 1,000 watchers: put->delivered latency, memory per stream,
# missed revisions (release build; about a minute).
bench-config:
	$(CARGO) build --release --bin borough-config --bin borough-config-bench
	./target/release/borough-config-bench

# Resilience under overload and faults, against the release binaries (about a minute per
# round; BENCH_ROUNDS=3, the median is reported; writes target/bench/resilience.json).
bench-resilience:
	$(CARGO) build --release --bin borough-user --bin borough-query --bin borough-gateway --bin borough-resilience-bench
	./target/release/borough-resilience-bench

# A live tenant move of 100,000 users (BENCH_USERS) under its own readers and writers,
# shared -> database -> schema, against the release binaries (BENCH_ROUNDS=3, medians;
# writes target/bench/moves.json): time to switch and to done, fence, slowest write.
bench-move:
	$(CARGO) build --release --bin borough-user --bin borough-query --bin borough-gateway --bin borough-move-bench
	./target/release/borough-move-bench

# A hostile tenant's attacks, one fresh stack each, against the release binaries
# (docs/security.md; BENCH_ONLY=import,keys for a part; writes target/bench/hostile.json).
bench-hostile:
	$(CARGO) build --release --bin borough-user --bin borough-query --bin borough-config \
		--bin borough-gateway --bin borough-hostile-bench
	./target/release/borough-hostile-bench

# Schemathesis against the gateway's OpenAPI document (scripts/fuzz.sh; FUZZ_MAX_EXAMPLES,
# FUZZ_SECONDS, FUZZ_MIN_REQUESTS). Installs schemathesis from PyPI into target/tools.
fuzz:
	scripts/fuzz.sh

# In-place gateway upgrade on this host (see scripts/upgrade-gateway.sh): the new binary
# starts beside the old one on the same port, and the old one drains once the new one is
# ready; if it never is, it is stopped and the old one keeps serving.
BIN ?= target/debug/borough-gateway
ADMIN ?= 127.0.0.1:9470
upgrade:
	@test -n "$(PID)" || { echo "usage: make upgrade PID=<pid of the running gateway> [BIN=...] [ADMIN=...]" >&2; exit 2; }
	scripts/upgrade-gateway.sh $(PID) $(BIN) $(ADMIN)

# Offline validation of docker-compose.yml, k8s/overlays/* and k8s/helm/borough against
# the Kubernetes schema (fetches kubectl, helm and kubernetes-validate into target/tools
# when they are not installed).
k8s-check:
	scripts/k8s-check.sh

# `docker compose up` with images built here (scripts/compose-check.sh says what differs
# from a user's build: no image can be pulled on CI machines).
compose-check:
	scripts/compose-check.sh

# The console in a real browser, against a stack of its own (scripts/console-test.sh).
console-test:
	scripts/console-test.sh
