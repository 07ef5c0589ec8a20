#!/usr/bin/env bash
# Runs the whole workspace's tests against a real tansu broker; extra arguments go to cargo test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

TANSU_BIN="$(scripts/ensure-tansu.sh)"
export TANSU_BIN
echo "using tansu at $TANSU_BIN" >&2

cargo test --workspace --locked "$@"
