#!/usr/bin/env bash
# `make console-test`: the operator console in a real browser — Debian's chromium and
# chromium-driver (installed by .ci/run; `apt-get install chromium chromium-driver`),
# driven by selenium (PyPI, into target/tools) — against a stack started as `make run`
# starts it (scripts/dev-stack.sh). What it does: scripts/console-test.py. Screenshots of
# every page: target/console/.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/tools/console-venv
for tool in chromium chromedriver; do
  command -v "$tool" >/dev/null || {
    echo "console-test: $tool is missing (Debian: apt-get install chromium chromium-driver)" >&2
    exit 1
  }
done
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import selenium' 2>/dev/null; then
  echo "console-test: installing selenium into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "selenium==4.40.0"
fi
. scripts/dev-stack.sh
dev_stack_start console target/console-stack
rm -rf target/console
GATEWAY=$gateway CHROMIUM=$(command -v chromium) CHROMEDRIVER=$(command -v chromedriver) \
  "$venv/bin/python" scripts/console-test.py
