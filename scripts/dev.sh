#!/usr/bin/env bash
# Shows the gateway at work: Kafka, the stand-in MesaYa API serving the two sections of a sample
# restaurant, the gateway, a simulator producing realistic upstream events, and a live floor-plan
# page whose URL is printed first. Ctrl-C stops everything.
#
#   scripts/dev.sh                      Kafka inside the dev command (librdkafka's mock cluster):
#                                       nothing to install
#   scripts/dev.sh --broker tansu       a real broker, tansu (installed on first use, ~15 min)
#   KAFKA_BROKERS=host:9092 scripts/dev.sh    a Kafka that already runs
#   scripts/dev.sh --rate 10            simulated events per second (default 2)
#   scripts/dev.sh --with-prometheus    also Prometheus (Debian's package: apt-get install
#                                       prometheus) scraping the admin listener, with the alert
#                                       rules loaded; its URL and a few dashboard queries printed
#
# PORT=… picks the gateway's port (8080), PAGE_PORT=… the page's (8081), ADMIN_PORT=… the gateway's
# admin listener's (8082), where /healthz, /readyz and /metrics are served (the public port answers
# them 404), as in production with ADMIN_PORT set; its URL is printed. PROMETHEUS_PORT=… picks
# Prometheus's (9090).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# tansu is the only broker to install; the others need nothing here.
if [[ " $* " == *" --broker tansu "* || " $* " == *" --broker=tansu "* ]]; then
  TANSU_BIN="$(scripts/ensure-tansu.sh)"
  export TANSU_BIN
fi

# One build for both binaries, so their shared dependencies compile once and in parallel. The dev
# profile: on a fresh machine it costs a quarter less CPU than release (docs/dev.md), it reuses
# what scripts/test.sh built, and a few events a second need no optimiser.
cargo build --locked -p mesaya-realtime -p mesaya-testkit --bin mesaya-realtime --bin mesaya-dev
target_dir="${CARGO_TARGET_DIR:-target}"
exec "$target_dir/debug/mesaya-dev" "$@" "$target_dir/debug/mesaya-realtime"
