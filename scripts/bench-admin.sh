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

# What an open dashboard asks, until killed: one process, keep-alive connections (a browser's
# way; a process per request would measure process start-up on a two-core machine).
dashboard() { # ADMIN_PORT
  python3 - "$1" "$token" <<'PY'
import http.client, sys, threading, time
port, token = int(sys.argv[1]), sys.argv[2]
auth = {"Authorization": f"Bearer {token}"}
def stream():
    c = http.client.HTTPConnection("127.0.0.1", port)
    c.request("GET", "/api/v1/events/stream", headers=auth)
    r = c.getresponse()
    while r.read1(4096):
        pass
threading.Thread(target=stream, daemon=True).start()
c = http.client.HTTPConnection("127.0.0.1", port)
def get(path):
    c.request("GET", path, headers=auth)
    r = c.getresponse()
    r.read()
    if r.status != 200:
        sys.exit(f"{path}: {r.status}")
n = 0
while True:
    get("/metrics")
    if n % 3 == 0:
        for path in ("/api/v1/ready", "/api/v1/clients?limit=100", "/api/v1/bans"):
            get(path)
    n += 1
    time.sleep(1)
PY
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
    # On the loader's core: the dashboard's own processes (curl) must not take the broker's
    # core, as a browser on another machine would not.
    taskset -c 1 bash -c "$(declare -f dashboard); token='$token'; dashboard $admin_port" >"$w/dashboard.log" 2>&1 &
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

SCENARIOS=${SCENARIOS:-"pairs --qos 1 -n 100|fan-in --qos 0 -n 100|latency --qos 1 -n 100 --rate 10000"}
IFS='|' read -r -a scenarios <<< "$SCENARIOS"
for scenario in "${scenarios[@]}"; do
  for _ in $(seq "$REPS"); do
    for mode in OFF ON; do
      # shellcheck disable=SC2086
      echo "$scenario | $mode | $(run "$mode" $scenario)"
    done
  done
done
