#!/usr/bin/env bash
# Runs the gateway's main job locally: a tansu broker (installed if missing),
# the stand-in MesaYa API with a sample section, and the gateway. Prints a
# ready-to-use connect URL with a valid token. PORT=… picks the port (8080).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

TANSU_BIN="$(scripts/ensure-tansu.sh)"
export TANSU_BIN
cargo build --release --locked -p mesaya-realtime
exec cargo run --release --locked -q -p mesaya-testkit --bin mesaya-dev -- target/release/mesaya-realtime
