#!/usr/bin/env bash
# Counts the gateway's user-space instructions per connect with valgrind's callgrind: the load
# harness's connect row (LOAD_IDLE_CONNS connections, 2 000 here by default) against the release
# gateway (or GATEWAY_BIN, e.g. an older commit's build) running under callgrind. The counters are
# zeroed once the gateway is ready and dumped once it holds every connection.
#
# Connects/s and CPU per connect move by ±20 % with this machine's hour; instruction counts do
# not. Use them to compare two builds' own work per connect. The kernel's part (about half of a
# connect) is not counted: compare system calls with `strace -c` for that.
#
# Prints the instructions per connect of each part of a connect, and leaves the callgrind dump
# (for `callgrind_annotate --inclusive=yes <file>`) in the directory it names.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v valgrind >/dev/null; then
  echo "installing valgrind..." >&2
  apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y valgrind >&2
fi
export TANSU_BIN="${TANSU_BIN:-$(scripts/ensure-tansu.sh)}"

conns="${LOAD_IDLE_CONNS:-2000}"
gateway="${GATEWAY_BIN:-}"
if [[ -z "$gateway" ]]; then
  cargo build --release --locked >&2
  gateway="$PWD/target/release/mesaya-realtime"
fi
out="$(mktemp -d /tmp/connect-instructions.XXXXXX)"

# The harness starts the gateway with a clean environment: LOGNAME names valgrind's control pipe
# (with HOST, which the harness sets to 127.0.0.1), so that callgrind_control finds it below.
cat >"$out/gateway" <<EOF
#!/bin/sh
export LOGNAME=callgrind
exec valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.%p" "$gateway"
EOF
chmod +x "$out/gateway"
control() { LOGNAME=callgrind HOST=127.0.0.1 callgrind_control "$@" >/dev/null 2>&1; }

connections() {
  curl -sf "127.0.0.1:$1/metrics" | awk '/^mesaya_connections/ { n += $2 } END { print n + 0 }'
}

# Zeroes the counters once the gateway is ready, dumps them once it holds $conns connections.
measure() {
  local pid="" port=""
  until pid="$(pgrep -n -f "callgrind-out-file=$out/")"; do sleep 0.2; done
  until port="$(ss -ltnp | awk -v p="pid=$pid," 'index($0, p) { sub(/.*:/, "", $4); print $4; exit }')" \
    && [[ -n "$port" ]]; do sleep 0.2; done
  until curl -sf "127.0.0.1:$port/readyz" >/dev/null; do sleep 0.2; done
  control -z "$pid"
  until (($(connections "$port") >= conns)); do
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.2
  done
  control -d "$pid"
}
measure &
measuring=$!

LOAD_IDLE_CONNS="$conns" LOAD_GATEWAY_BIN="$out/gateway" LOAD_ROWS=connect LOAD_TARGETS=gateway \
  cargo bench --bench fanout_load | grep -E "live in|connects/s"
# The harness holds the connections a few seconds after the last one: the dump is taken by then.
if kill -0 "$measuring" 2>/dev/null; then
  kill "$measuring"
  echo "the gateway never held $conns connections under callgrind; see the harness output above" >&2
  exit 1
fi

dump="$(ls "$out"/callgrind.*.1)"
echo "instructions per connect, $conns connects ($dump):"
callgrind_annotate --inclusive=yes --threshold=100 "$dump" | awk -v n="$conns" '
  BEGIN {
    parts = 9
    pattern[1] = "PROGRAM TOTALS";                 name[1] = "everything the process ran, background work (librdkafka) included"
    pattern[2] = "http::accept_loop::[{][{]closure"; name[2] = "accept"
    pattern[3] = "http::serve_http::[{][{]closure";  name[3] = "the HTTP front: read and parse the upgrade, respond, write the 101"
    pattern[4] = "TokenVerifier>::verify";           name[4] = "  of which the JWT"
    pattern[5] = "shard::adopt ";                    name[5] = "the hand-off arriving at the owning shard"
    pattern[6] = "session::start::[{][{]closure";    name[6] = "the session task: the snapshot call, its parse, the snapshot frame"
    pattern[7] = "Snapshot::parse ";                 name[7] = "  of which the snapshot parse"
    pattern[8] = "HttpSnapshotSource::connect::[{][{]closure[}][}]::[{][{]closure"; name[8] = "the API connection task (hyper): the call on the wire"
    pattern[9] = "learn_section";                    name[9] = "the ingest thread learning the section"
  }
  {
    for (i = 1; i <= parts; i++) {
      if (!(i in count) && $0 ~ pattern[i]) { gsub(",", "", $1); count[i] = $1 }
    }
  }
  END { for (i = 1; i <= parts; i++) printf "%10.0f  %s\n", count[i] / n, name[i] }
'
