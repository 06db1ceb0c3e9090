#!/usr/bin/env bash
# Two Bulwark builds side by side as users run them: a password user, an ACL, the durable
# store (sync "always"), one worker, broker on core 0 and loader (the NEW build's `bench`) on
# core 1, runs alternating OLD, NEW, OLD, ... Loopback only; every run is bounded.
#
#   bash scripts/bench-ab-secure.sh OLD_BIN NEW_BIN [REPS]
#
# Prints one line per run: scenario, build, received/s (conn: bytes per idle connection), lost,
# errors, p99 latency in microseconds.
set -euo pipefail
OLD=$1 NEW=$2 REPS=${3:-3}
PASSWORD='violet-Harbour-lantern-93'
base=$(mktemp -d)
trap 'rm -rf "$base"' EXIT
echo "$PASSWORD" | "$NEW" user add bench --password-stdin --file "$base/passwords.toml" >/dev/null
cp "$(dirname "$0")/bench-acl.toml" "$base/acl.toml"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

run() { # BIN SCENARIO ARGS...
  local bin=$1; shift
  local w port pid
  w=$(mktemp -d "$base/run.XXXX")
  cp "$base/passwords.toml" "$base/acl.toml" "$w/" && chmod 600 "$w"/*
  port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
  printf '[[listener]]\nkind = "tcp"\nbind = "127.0.0.1:%s"\n[auth]\npassword_file = "%s"\n[acl]\nfile = "%s"\n[storage]\npath = "%s"\n' \
    "$port" "$w/passwords.toml" "$w/acl.toml" "$w/store.redb" > "$w/bulwark.toml"
  taskset -c 0 "$bin" serve --config "$w/bulwark.toml" --workers 1 --log-level error > "$w/log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  taskset -c 1 timeout 180 "$NEW" bench "$@" --port "$port" --broker-pid "$pid" --username bench \
    --password "$PASSWORD" --duration 5 --no-progress --json \
    | python3 -c 'import json,sys
r = json.load(sys.stdin)
figure = r.get("received_per_s") or (r.get("memory") or {}).get("per_connection_bytes")
print(figure, r.get("lost"), r.get("errors"), (r.get("latency") or {}).get("p99_us"))' || echo "failed"
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

for scenario in "pairs --qos 1 -n 100" "fan-in --qos 0 -n 100" "fan-out --qos 0 -n 1000" \
  "latency --qos 1 -n 100 --rate 10000" "conn -n 10000 --workers 32"; do
  for _ in $(seq "$REPS"); do
    for build in OLD NEW; do
      bin=$OLD; [ "$build" = NEW ] && bin=$NEW
      # shellcheck disable=SC2086
      echo "$scenario | $build | $(run "$bin" $scenario)"
    done
  done
done
