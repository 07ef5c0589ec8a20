#!/usr/bin/env bash
# Runs every test: the workspace's against a real tansu broker (extra arguments go to cargo test),
# then the client library's (clients/js) with Node's test runner.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

TANSU_BIN="$(scripts/ensure-tansu.sh)"
export TANSU_BIN
echo "using tansu at $TANSU_BIN" >&2

# tests/browser.rs looks at the floor-plan page in Debian's headless Chromium.
if [[ -z "${CHROMIUM_BIN:-}" ]] && ! command -v chromium >/dev/null; then
  echo "installing chromium for the browser test..." >&2
  apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium >&2
fi

# tests/compression.rs runs Python's `websockets` (pinned in a venv of its own) and Node's `ws`
# (clients/js's) against the gateway.
INTEROP_VENV="${INTEROP_VENV:-target/interop-venv}"
if [[ ! -x "$INTEROP_VENV/bin/python" ]]; then
  echo "making a Python venv for the interoperability tests..." >&2
  if ! python3 -m venv "$INTEROP_VENV" >&2; then
    apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv >&2
    python3 -m venv "$INTEROP_VENV" >&2
  fi
fi
"$INTEROP_VENV/bin/pip" install --quiet -r tests/interop/requirements.txt >&2
INTEROP_PYTHON="$(cd "$INTEROP_VENV" && pwd)/bin/python"
export INTEROP_PYTHON
(cd clients/js && npm ci --no-audit --no-fund >&2)

cargo test --workspace --locked "$@"

# The client library (clients/js): its own tests, with Node's test runner.
echo "running the client library's tests..." >&2
(cd clients/js && npm test)
