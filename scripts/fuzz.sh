#!/usr/bin/env bash
# `make fuzz`: schemathesis (from PyPI, into target/tools) against a stack started as
# `make run` starts it (borough-dev run), on ports of its own (offset 100: beside a
# running `make run`; 200, then 300, if one of them is taken) and a data directory of its own (target/fuzz, fresh each time).
#
# Every operation of /openapi.json (but the never-ending watches), generated examples,
# the coverage phase and stateful sequences along the document's links; checks: no 5xx,
# documented status, content type, headers and body, credentials enforced. Fails when
# schemathesis finds anything, or when fewer than FUZZ_MIN_REQUESTS requests were
# answered.
#
# FUZZ_MAX_EXAMPLES (100 per operation), FUZZ_SECONDS (280: the whole run's bound),
# FUZZ_MIN_REQUESTS (2000), FUZZ_WORKERS (2).
set -euo pipefail
cd "$(dirname "$0")/.."

max_examples=${FUZZ_MAX_EXAMPLES:-100}
seconds=${FUZZ_SECONDS:-280}
min_requests=${FUZZ_MIN_REQUESTS:-2000}
workers=${FUZZ_WORKERS:-2}
data=target/fuzz
venv=target/tools/fuzz-venv

if [ ! -x "$venv/bin/st" ]; then
  echo "fuzz: installing schemathesis into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==4.32.5"
fi

cargo build --quiet --bin borough-config --bin borough-user --bin borough-query \
  --bin borough-gateway --bin borough-dev

export BOROUGH_ADMIN_TOKEN
BOROUGH_ADMIN_TOKEN="fuzz-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
stack=
stop() {
  if [ -n "$stack" ]; then
    kill -TERM "$stack" 2>/dev/null || true
    wait "$stack" 2>/dev/null || true
  fi
}
trap stop EXIT

# Starts the stack with every port moved by $1; 0 once it serves, 1 if it exited, 2 if
# it exited because a port was taken (all of them sit in the kernel's ephemeral range,
# where any client socket may hold one for a while).
start_stack() {
  offset=$1
  gateway="http://127.0.0.1:$((8080 + offset))"
  gateway_admin="http://127.0.0.1:$((9460 + offset))"
  rm -rf "$data"
  mkdir -p "$data"
  # The fuzzer is one busy client: its tenant's rate limit and its failed-authentication
  # budget are raised (both are tested elsewhere); everything else is as shipped.
  BOROUGH_DEV_DATA="$data" BOROUGH_DEV_PG_PORT=$((55432 + offset)) BOROUGH_DEV_PORT_OFFSET=$offset \
    BOROUGH_RATE_LIMIT_RPS=100000 BOROUGH_RATE_LIMIT_BURST=100000 \
    BOROUGH_AUTH_FAILURE_BURST=1000000 RUST_LOG=warn \
    ./target/debug/borough-dev run > "$data/stack.log" 2>&1 &
  stack=$!
  for _ in $(seq 1 600); do
    if [ -s "$data/demo-api-key" ] && curl -sf "$gateway_admin/readyz" > /dev/null; then
      return 0
    fi
    if ! kill -0 "$stack" 2>/dev/null; then
      wait "$stack" 2>/dev/null || true
      stack=
      if grep -q "Address already in use" "$data/stack.log"; then
        return 2
      fi
      return 1
    fi
    sleep 0.2
  done
  return 1
}

started=1
for offset in 100 200 300; do
  start_stack "$offset" && { started=0; break; } || started=$?
  if [ "$started" -eq 2 ]; then
    echo "fuzz: a port of offset $offset was taken; trying offset $((offset + 100))" >&2
    continue
  fi
  break
done
if [ "$started" -ne 0 ]; then
  echo "fuzz: the stack did not start:" >&2
  tail -30 "$data/stack.log" >&2
  exit 1
fi
export BOROUGH_API_KEY
BOROUGH_API_KEY=$(cat "$data/demo-api-key")
curl -sf "$gateway/openapi.json" > "$data/openapi.json"

echo "fuzz: schemathesis against $gateway ($max_examples examples per operation, at most ${seconds}s)"
status=0
PYTHONPATH=scripts/fuzz SCHEMATHESIS_HOOKS=hooks \
timeout --signal=INT "$seconds" "$venv/bin/st" --config-file scripts/fuzz/schemathesis.toml \
  run "$data/openapi.json" --url "$gateway" \
  --max-examples "$max_examples" --workers "$workers" \
  --phases examples,coverage,fuzzing,stateful \
  --request-timeout 15 --no-color \
  --report junit --report-dir "$data/report" || status=$?

answered=$(curl -sf "$gateway_admin/metrics" |
  awk '/^borough_http_requests_total\{/ { sum += $NF } END { printf "%d", sum }')
echo "fuzz: the gateway answered $answered requests"
# A run whose only problems are hypothesis' own internal error ("AST constructor recursion
# depth mismatch", raised while it describes one of its lambdas: a bug of the tool, met at
# random since 2026-11-29) found nothing in the gateway: say so and go on. A failed check,
# or any other error, still fails the run.
tool_bug_only() {
  python3 - "$data/report" <<'PY'
import pathlib, sys, xml.etree.ElementTree as ET
reports = sorted(pathlib.Path(sys.argv[1]).glob("junit-*.xml"), key=lambda p: p.stat().st_mtime)
if not reports:
    sys.exit(1)
root = ET.parse(reports[-1]).getroot()
failures = root.findall(".//failure")
errors = root.findall(".//error")
bug = "AST constructor recursion depth mismatch"
only_bug = not failures and errors and all(bug in ((e.get("message") or "") + (e.text or "")) for e in errors)
sys.exit(0 if only_bug else 1)
PY
}
if [ "$status" -ne 0 ] && tool_bug_only; then
  echo "fuzz: schemathesis stopped on hypothesis' internal AST error only (a tool bug); no check failed" >&2
  status=0
fi
if [ "$status" -ne 0 ]; then
  echo "fuzz: schemathesis failed (exit $status); report in $data/report, stack log in $data/stack.log" >&2
  exit "$status"
fi
if [ "$answered" -lt "$min_requests" ]; then
  echo "fuzz: only $answered requests (at least $min_requests wanted)" >&2
  exit 1
fi
echo "fuzz: passed"
