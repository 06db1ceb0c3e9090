#!/usr/bin/env bash
# Side-by-side benchmark of Bulwark (as users run it: password logins, ACL, durable store;
# --bulwark-bare for anonymous and in memory), Eclipse Mosquitto and rumqttd on this machine: every
# scenario against a fresh broker process pinned to one core, the loader (`bulwark bench`) on
# another, three repetitions, medians and ratios; the TLS scenarios use a CA and an ECDSA P-256
# server certificate made once per run by `bulwark cert`. Installs the peers when missing (Debian
# `mosquitto`; `cargo install rumqttd` into target/peers). Extra arguments go to
# scripts/bench_compare.py (e.g. --write to update docs/benchmarks.md, --reps 1, --only 0,3;
# the TLS scenarios are 9, 10 and 11).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null
fi
# The broker is started by the script, never by the package's service.
MOSQUITTO="$(command -v mosquitto || echo /usr/sbin/mosquitto)"

RUMQTTD="${RUMQTTD:-$(command -v rumqttd || true)}"
if [ -z "$RUMQTTD" ]; then
  RUMQTTD="$PWD/target/peers/bin/rumqttd"
  if [ ! -x "$RUMQTTD" ]; then
    # Not --locked: rumqttd 0.20's lock file pins a crate that no longer builds on current Rust.
    cargo install rumqttd --version 0.20.0 --root "$PWD/target/peers"
  fi
fi

cargo build --release -p bulwark
# 10,000 idle connections need descriptors on both sides.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

exec python3 scripts/bench_compare.py --bulwark "$PWD/target/release/bulwark" \
  --mosquitto "$MOSQUITTO" --rumqttd "$RUMQTTD" "$@"
