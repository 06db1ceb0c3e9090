#!/usr/bin/env bash
# The dashboard end to end in headless Chromium (Playwright's playwright-core driving Debian's
# chromium): a broker this script starts on free loopback ports with a password user in the
# group bulwark-operator, a device connected with mosquitto_sub, and dashboard.test.mjs logging
# in, finding the device, kicking it and seeing it in the live event stream.
#
#   BULWARK_BIN=target/release/bulwark bash tests/dashboard/run.sh
#
# Screenshots are kept in $ARTIFACTS (default tests/dashboard/artifacts). Exit status: the
# test's (2 when something it needs is missing).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
BIN="${BULWARK_BIN:-$ROOT/target/release/bulwark}"
ARTIFACTS="${ARTIFACTS:-$HERE/artifacts}"
CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"

LOG_NAME=dashboard
# shellcheck source=../lib.sh
. "$HERE/../lib.sh"

[ -x "$BIN" ] || die "broker binary '$BIN' not found (cargo build --release, or set BULWARK_BIN)"
[ -x "$CHROMIUM" ] || apt_install chromium
command -v mosquitto_sub >/dev/null 2>&1 || apt_install mosquitto-clients
command -v node >/dev/null 2>&1 || apt_install nodejs npm
command -v npm >/dev/null 2>&1 || apt_install npm
if [ ! -d "$HERE/node_modules/playwright-core" ]; then
  log "installing playwright-core (npm ci in $HERE)"
  if ! out="$(cd "$HERE" && npm ci --no-audit --no-fund --loglevel=error 2>&1)"; then
    printf '%s\n' "$out" >&2
    rm -rf "$HERE/node_modules"
    die "'npm ci' failed in $HERE (output above)"
  fi
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/bulwark-dashboard.XXXXXX")"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

mqtt_port="$(free_port)"
admin_port="$(free_port)"
ops_password="amber-Tundra-ledger-47"
device_password="copper-Fjord-signal-19"
printf '%s\n' "$ops_password" |
  "$BIN" user add ops --group bulwark-operator --password-stdin --file "$work/passwords.toml" >/dev/null
printf '%s\n' "$device_password" |
  "$BIN" user add sensor --password-stdin --file "$work/passwords.toml" >/dev/null
cat >"$work/acl.toml" <<'ACL'
[[rule]]
permission = "allow"
action = "all"
user = "sensor"
topics = ["sensors/#"]
ACL
cat >"$work/bulwark.toml" <<CONF
[[listener]]
name = "mqtt"
bind = "127.0.0.1:$mqtt_port"

[acl]
file = "$work/acl.toml"

[auth]
password_file = "$work/passwords.toml"
audit_file = "$work/audit.jsonl"

[admin]
bind = "127.0.0.1:$admin_port"
tokens = "$work/admin-tokens.toml"
CONF

"$BIN" serve --config "$work/bulwark.toml" --data-dir "$work/data" >"$work/broker.log" 2>&1 &
pids+=("$!")
up=0
for _ in $(seq 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$admin_port") 2>/dev/null && (exec 3<>"/dev/tcp/127.0.0.1/$mqtt_port") 2>/dev/null; then
    up=1; break
  fi
  sleep 0.1
done
[ "$up" -eq 1 ] || { cat "$work/broker.log" >&2; die "the broker did not start"; }

client_id="sensor-$$"
mosquitto_sub -h 127.0.0.1 -p "$mqtt_port" -V mqttv5 -u sensor -P "$device_password" \
  -i "$client_id" -t 'sensors/#' >"$work/sub.log" 2>&1 &
pids+=("$!")

status=0
ADMIN_URL="http://127.0.0.1:$admin_port" DASH_USER=ops DASH_PASSWORD="$ops_password" \
  CLIENT_ID="$client_id" ARTIFACTS="$ARTIFACTS" CHROMIUM="$CHROMIUM" \
  timeout 180 node "$HERE/dashboard.test.mjs" || status=$?
if [ "$status" -ne 0 ]; then
  log "failed (status $status); the broker's log:"
  tail -n 50 "$work/broker.log" >&2
fi
exit "$status"
