#!/usr/bin/env bash
# `make fuzz`: schemathesis (from PyPI, into target/tools) against a stack started as
# `make run` starts it (scripts/dev-stack.sh: ports and a data directory of its own,
# target/fuzz, fresh each time).
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

. scripts/dev-stack.sh
# The fuzzer is one busy client: its tenant's rate limit and its failed-authentication
# budget are raised (both are tested elsewhere); everything else is as shipped.
dev_stack_start fuzz "$data" BOROUGH_RATE_LIMIT_RPS=100000 BOROUGH_RATE_LIMIT_BURST=100000 \
  BOROUGH_AUTH_FAILURE_BURST=1000000
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
