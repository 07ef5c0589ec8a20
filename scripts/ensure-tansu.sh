#!/usr/bin/env bash
# Prints the path of a usable tansu 0.6.0 binary (the Kafka-protocol broker the integration tests
# run), installing it with cargo when none is found. Idempotent: an existing binary is reused.
# Install progress goes to stderr; stdout carries only the path.
set -euo pipefail

readonly version="0.6.0"
readonly features="dynostore,libsql" # memory:// and sqlite:// storage engines
cargo_home="${CARGO_HOME:-$HOME/.cargo}"

# tansu's clap CLI prints "tansu 0.6.0" for --version.
has_version() {
  [[ -x "$1" ]] && "$1" --version 2>/dev/null | grep -qw "$version"
}

# cargo records the features of what it installed; a tansu built without the storage engines
# the tests use would only fail later, at broker start.
cargo_installed_with_features() {
  local record
  record="$(grep -o "\"tansu $version [^}]*}" "$cargo_home/.crates2.json" 2>/dev/null)" || return 1
  [[ "$record" == *'"dynostore"'* && "$record" == *'"libsql"'* ]]
}

if [[ -n "${TANSU_BIN:-}" ]]; then
  if has_version "$TANSU_BIN"; then
    echo "$TANSU_BIN"
    exit 0
  fi
  echo "TANSU_BIN=$TANSU_BIN is not a tansu $version binary; looking elsewhere" >&2
fi

installed="$cargo_home/bin/tansu"
if has_version "$installed" && cargo_installed_with_features; then
  echo "$installed"
  exit 0
fi

on_path="$(command -v tansu || true)"
if [[ -n "$on_path" && "$on_path" != "$installed" ]] && has_version "$on_path"; then
  echo "$on_path"
  exit 0
fi

echo "installing tansu $version (a release build: several minutes)..." >&2
cargo install tansu --version "$version" --locked --features "$features" >&2
if ! has_version "$installed"; then
  echo "cargo installed tansu $version but $installed does not run" >&2
  exit 1
fi
echo "$installed"
