#!/usr/bin/env bash
# Login rate and message throughput with the hash-chained audit trail against the plain one
# (issue 21): Bulwark as users run it (a password user, the ACL, the durable store, the audit
# trail on), one worker, broker on core 0, loader on core 1; runs alternate PLAIN, CHAINED, ...
# Every login is an auth_success record, so `churn` writes one record per connection.
# Loopback only; bounded.
#
#   bash scripts/bench-audit.sh [BIN] [REPS]
#
# Prints one line per run: scenario, mode, per second (connections or messages), errors,
# p99 latency in µs, records in the trail, events the trail's queue dropped.
set -euo pipefail
BIN=${1:-target/release/bulwark} REPS=${2:-3}
PASSWORD='violet-Harbour-lantern-93'
base=$(mktemp -d)
trap 'rm -rf "$base"' EXIT
echo "$PASSWORD" | "$BIN" user add bench --password-stdin --file "$base/passwords.toml" >/dev/null
cp "$(dirname "$0")/bench-acl.toml" "$base/acl.toml"

free_port() {
  python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'
}

run() { # MODE SCENARIO ARGS...
  local mode=$1; shift
  local w port pid format
  w=$(mktemp -d "$base/run.XXXX")
  cp "$base/passwords.toml" "$base/acl.toml" "$w/" && chmod 600 "$w"/*
  port=$(free_port)
  format=$(echo "$mode" | tr 'A-Z' 'a-z')
  printf '[[listener]]\nkind = "tcp"\nbind = "127.0.0.1:%s"\n[auth]\npassword_file = "%s"\n[acl]\nfile = "%s"\n[storage]\npath = "%s"\n[audit]\nfile = "%s"\nformat = "%s"\n' \
    "$port" "$w/passwords.toml" "$w/acl.toml" "$w/store.redb" "$w/audit/audit.jsonl" "$format" > "$w/bulwark.toml"
  # EXTRA: more configuration for every run (e.g. '[detect]\nbuiltin = false').
  printf '%b\n' "${EXTRA:-}" >> "$w/bulwark.toml"
  taskset -c 0 "$BIN" serve --config "$w/bulwark.toml" --workers 1 --log-level error > "$w/log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  local result
  result=$(taskset -c 1 timeout 180 "$BIN" bench "$@" --port "$port" --broker-pid "$pid" --username bench \
    --password "$PASSWORD" --duration 10 --no-progress --json \
    | python3 -c 'import json,sys
r = json.load(sys.stdin)
c = r.get("connect") or {}
if r.get("scenario") == "churn":
    rate, lat = c.get("per_second"), c.get("latency") or {}
else:
    rate, lat = r.get("received_per_s"), r.get("latency") or {}
print(round(rate or 0), r.get("errors"), lat.get("p99_us"))' || echo "failed")
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  local counts
  counts=$(python3 - "$w/audit" <<'PY'
import glob, json, sys
records = dropped = 0
for f in glob.glob(sys.argv[1] + "/audit*.jsonl"):
    for line in open(f, "rb"):
        records += 1
        r = json.loads(line)
        if r.get("kind") == "events_dropped":
            dropped += r.get("count", 0)
print(records, dropped)
PY
)
  echo "$result $counts"
}

SCENARIOS=${SCENARIOS:-"churn --workers 16|pairs --qos 1 -n 100"}
IFS='|' read -r -a scenarios <<< "$SCENARIOS"
for scenario in "${scenarios[@]}"; do
  for _ in $(seq "$REPS"); do
    for mode in PLAIN CHAINED; do
      # shellcheck disable=SC2086
      echo "$scenario | $mode | $(run "$mode" $scenario)"
    done
  done
done
