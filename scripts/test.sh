#!/usr/bin/env bash
# Runs the whole workspace's tests against a real tansu broker; extra arguments go to cargo test.
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

cargo test --workspace --locked "$@"
