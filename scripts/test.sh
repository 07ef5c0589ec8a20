#!/usr/bin/env bash
# Runs every test: the documents' relative links, the alert rules' (promtool), the workspace's
# against a real tansu broker (extra arguments go to cargo test), then the client library's (clients/js) with Node's test runner: its
# unit tests, then its end-to-end and browser tests against the gateway binary, tansu and the
# stand-in API.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The documents' relative links (README ↔ docs/ ↔ BENCHMARKS.md ↔ clients/js ↔ deploy/): every
# linked file and heading must exist. Seconds, so it runs first.
echo "checking the Markdown files' relative links..." >&2
python3 scripts/check-doc-links.py

TANSU_BIN="$(scripts/ensure-tansu.sh)"
export TANSU_BIN
echo "using tansu at $TANSU_BIN" >&2

# clients/js/e2e/browser.test.ts drives the floor-plan page in Debian's headless Chromium.
if [[ -z "${CHROMIUM_BIN:-}" ]] && ! command -v chromium >/dev/null; then
  echo "installing chromium for the browser test..." >&2
  apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium >&2
fi

# The alert rules' unit tests, and tests/prometheus.rs (a real Prometheus scraping the gateway),
# need Debian's prometheus package: promtool and the prometheus server.
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  echo "installing prometheus for the alert and dashboard tests..." >&2
  apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y prometheus >&2
fi
# The module graph: no import circle, no arrow from transport or application to infrastructure.
python3 scripts/module-graph.py >/dev/null

echo "running the alert rules' unit tests..." >&2
promtool check rules deploy/prometheus/alerts.yml >&2
promtool test rules deploy/prometheus/alerts.test.yml

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

# The binaries the client library's end-to-end tests run (mesaya-dev --driven starts the rest).
cargo build --locked -p mesaya-realtime -p mesaya-testkit --bin mesaya-realtime --bin mesaya-dev
target_dir="$(realpath "${CARGO_TARGET_DIR:-target}")"
export MESAYA_GATEWAY_BIN="$target_dir/debug/mesaya-realtime" MESAYA_DEV_BIN="$target_dir/debug/mesaya-dev"

# The client library (clients/js): its own tests, with Node's test runner.
echo "running the client library's tests..." >&2
(cd clients/js && npm test && npm run test:e2e)
