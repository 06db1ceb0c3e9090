#!/usr/bin/env bash
# MQTT throughput and latency with the admin listener on and a dashboard open, against the same
# build without it (issue 20): Bulwark as users run it (a password user, the ACL, the durable
# store), one worker, broker on core 0, loader on core 1; runs alternate OFF, ON, OFF, ...
# "ON" is `[admin]` plus what an open dashboard does: /metrics every second, the overview and
# the client list every 3 s, and the live event stream held open. Loopback only; bounded.
#
#   bash scripts/bench-admin.sh [BIN] [REPS]
#
# Prints one line per run: scenario, mode, received/s, lost, errors, p99 latency in µs.
set -euo pipefail
BIN=${1:-target/release/bulwark} REPS=${2:-3}
PASSWORD='violet-Harbour-lantern-93'
base=$(mktemp -d)
trap 'rm -rf "$base"' EXIT
echo "$PASSWORD" | "$BIN" user add bench --password-stdin --file "$base/passwords.toml" >/dev/null
cp "$(dirname "$0")/bench-acl.toml" "$base/acl.toml"
token=$("$BIN" admin token add dash --role viewer --file "$base/tokens.toml" 2>/dev/null)

free_port() {
  python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'
}

# What an open dashboard asks, until killed.
dashboard() { # ADMIN_PORT
  local url="http://127.0.0.1:$1" auth="Authorization: Bearer $token" n=0
  curl -sN -H "$auth" "$url/api/v1/events/stream" >/dev/null 2>&1 &
  local stream=$!
  trap 'kill $stream 2>/dev/null; exit 0' TERM EXIT
  while true; do
    curl -s -H "$auth" "$url/metrics" >/dev/null
    if [ $((n % 3)) -eq 0 ]; then
      curl -s -H "$auth" "$url/api/v1/ready" >/dev/null
      curl -s -H "$auth" "$url/api/v1/clients?limit=100" >/dev/null
      curl -s -H "$auth" "$url/api/v1/bans" >/dev/null
    fi
    n=$((n + 1))
    sleep 1
  done
}

run() { # MODE SCENARIO ARGS...
  local mode=$1; shift
  local w port admin_port pid dash=""
  w=$(mktemp -d "$base/run.XXXX")
  cp "$base/passwords.toml" "$base/acl.toml" "$base/tokens.toml" "$w/" && chmod 600 "$w"/*
  port=$(free_port)
  printf '[[listener]]\nkind = "tcp"\nbind = "127.0.0.1:%s"\n[auth]\npassword_file = "%s"\n[acl]\nfile = "%s"\n[storage]\npath = "%s"\n' \
    "$port" "$w/passwords.toml" "$w/acl.toml" "$w/store.redb" > "$w/bulwark.toml"
  if [ "$mode" = ON ]; then
    admin_port=$(free_port)
    printf '[admin]\nbind = "127.0.0.1:%s"\ntokens = "%s"\n' "$admin_port" "$w/tokens.toml" >> "$w/bulwark.toml"
  fi
  taskset -c 0 "$BIN" serve --config "$w/bulwark.toml" --workers 1 --log-level error > "$w/log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  if [ "$mode" = ON ]; then
    dashboard "$admin_port" &
    dash=$!
  fi
  taskset -c 1 timeout 180 "$BIN" bench "$@" --port "$port" --broker-pid "$pid" --username bench \
    --password "$PASSWORD" --duration 10 --no-progress --json \
    | python3 -c 'import json,sys
r = json.load(sys.stdin)
print(r.get("received_per_s"), r.get("lost"), r.get("errors"), (r.get("latency") or {}).get("p99_us"))' || echo "failed"
  if [ -n "$dash" ]; then kill "$dash" 2>/dev/null || true; wait "$dash" 2>/dev/null || true; fi
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

for scenario in "pairs --qos 1 -n 100" "fan-in --qos 0 -n 100" "latency --qos 1 -n 100 --rate 10000"; do
  for _ in $(seq "$REPS"); do
    for mode in OFF ON; do
      # shellcheck disable=SC2086
      echo "$scenario | $mode | $(run "$mode" $scenario)"
    done
  done
done
