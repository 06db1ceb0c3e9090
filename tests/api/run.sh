#!/usr/bin/env bash
# The admin API against its own OpenAPI document, with Schemathesis (property-based: examples,
# coverage, fuzzing and stateful phases, every check): a broker this script starts on free
# loopback ports with an ACL, a password store, an admin API token and a device connected with
# mosquitto_sub (so the client endpoints have a client to find, and can kick it), and
# `schemathesis run` on GET /api/v1/openapi.json with that token.
#
#   BULWARK_BIN=target/release/bulwark bash tests/api/run.sh
#
# Two runs: the GET operations while the device is connected, then every operation. Arguments
# are passed to both (--continue-on-failure, --report har, --include-operation-id ...).
# Schemathesis (pinned) is installed with pip into a virtualenv in a temporary directory that
# is removed at exit, with the broker's data; the seed and the number of examples per operation
# are fixed, so a run is reproducible (SCHEMATHESIS_SEED and SCHEMATHESIS_EXAMPLES override
# them). Exit status: 0 when schemathesis finds nothing in either run, else its status (1 for a
# failure); 2 when something this script needs is missing.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
BIN="${BULWARK_BIN:-$ROOT/target/release/bulwark}"
SCHEMATHESIS_VERSION="4.32.5"
SEED="${SCHEMATHESIS_SEED:-20240601}"
EXAMPLES="${SCHEMATHESIS_EXAMPLES:-100}"

LOG_NAME=api
# shellcheck source=../lib.sh
. "$HERE/../lib.sh"

[ -x "$BIN" ] || die "broker binary '$BIN' not found (cargo build --release, or set BULWARK_BIN)"
command -v python3 >/dev/null 2>&1 || apt_install python3
python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv
command -v mosquitto_sub >/dev/null 2>&1 || apt_install mosquitto-clients

work="$(mktemp -d "${TMPDIR:-/tmp}/bulwark-api.XXXXXX")"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

log "installing schemathesis $SCHEMATHESIS_VERSION (pip, in $work/venv)"
python3 -m venv "$work/venv"
if ! out="$("$work/venv/bin/pip" install --disable-pip-version-check --no-cache-dir -q \
  "schemathesis==$SCHEMATHESIS_VERSION" 2>&1)"; then
  printf '%s\n' "$out" >&2
  die "'pip install schemathesis==$SCHEMATHESIS_VERSION' failed (output above)"
fi

mqtt_port="$(free_port)"
admin_port="$(free_port)"
device_password="copper-Fjord-signal-19"
printf '%s\n' "$device_password" |
  "$BIN" user add sensor --password-stdin --file "$work/passwords.toml" >/dev/null
cat >"$work/acl.toml" <<'ACL'
[[rule]]
permission = "allow"
action = "all"
user = "sensor"
topics = ["sensors/#"]
ACL
# By design, and in the way of a test that sends thousands of requests from one address:
# - the admin listener's lockout ([admin] max_failures): ignored_auth sends wrong tokens, and
#   dashboard logins of users without a dashboard role count too; raised out of reach, so that
#   the run is not cut short by 429s;
# - the login guard's per-username backoff ([auth.backoff]; loopback is exempt from the
#   per-address one only): generated wrong passwords for a generated user would make
#   POST /ui/login wait up to 30 s, past --request-timeout; delays start after 1000 failures
#   instead of 5, and last 1 s at most.
cat >"$work/bulwark.toml" <<CONF
[[listener]]
name = "mqtt"
bind = "127.0.0.1:$mqtt_port"

[acl]
file = "$work/acl.toml"

[auth]
password_file = "$work/passwords.toml"
audit_file = "$work/audit.jsonl"

[auth.backoff]
after = 1000
max_delay = 1

[admin]
bind = "127.0.0.1:$admin_port"
tokens = "$work/admin-tokens.toml"
max_failures = 1000000
CONF
token="$("$BIN" admin token add schemathesis --role admin --file "$work/admin-tokens.toml" 2>/dev/null)"
[ -n "$token" ] || die "'bulwark admin token add' printed no token"
# The one DELETE /api/v1/tokens/{name} may remove (see schemathesis.toml below).
"$BIN" admin token add expendable --role viewer --file "$work/admin-tokens.toml" >/dev/null 2>&1

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
connected=0
for _ in $(seq 100); do
  if ADMIN="http://127.0.0.1:$admin_port" TOKEN="$token" CLIENT="$client_id" python3 -c '
import os, sys, urllib.request
request = urllib.request.Request(os.environ["ADMIN"] + "/api/v1/clients/" + os.environ["CLIENT"],
                                 headers={"Authorization": "Bearer " + os.environ["TOKEN"]})
try:
    urllib.request.urlopen(request, timeout=5)
except Exception:
    sys.exit(1)' 2>/dev/null; then
    connected=1; break
  fi
  sleep 0.1
done
[ "$connected" -eq 1 ] || { cat "$work/sub.log" "$work/broker.log" >&2; die "mosquitto_sub did not connect"; }
# And a stored session of a client that has gone (persistent, expiry an hour): what
# GET /api/v1/sessions lists and DELETE /api/v1/sessions/{client_id} deletes.
stored_id="stored-$$"
mosquitto_sub -h 127.0.0.1 -p "$mqtt_port" -V mqttv5 -u sensor -P "$device_password" \
  -i "$stored_id" -c -x 3600 -t 'sensors/#' -E >>"$work/sub.log" 2>&1 ||
  { cat "$work/sub.log" >&2; die "mosquitto_sub -E (a stored session) failed"; }

# GET /api/v1/clients/{client_id} always asks for the connected device: random ids are never
# connected, so would only ever get 404.
# DELETE /api/v1/sessions/{client_id} always deletes the stored session (then gets 404).
# DELETE /api/v1/tokens/{name} only ever removes "expendable": with the names it finds in
# GET /api/v1/tokens it would remove the run's own token, and every request after that
# would get 401.
# A 400 to a schema-valid request is by design, and accepted, in these operations only, where
# the document's schemas cannot say all that the server checks: DELETE /api/v1/bans and
# POST /api/v1/bans take exactly one of address, username and client_id (or username and
# client_id together), which OpenAPI 3.0 cannot say of parameters; POST /api/v1/acl/diff takes
# the text of an ACL file, which must parse; GET /api/v1/acl/explain and GET /api/v1/retained
# take a topic or filter that must follow the MQTT topic grammar (no wildcard in a publish
# topic, `#` last); GET /api/v1/subscriptions takes only the cursors it gave; POST
# /api/v1/users checks the password against the password policy (zxcvbn strength, not the
# user name).
cat >"$work/schemathesis.toml" <<CONF
[[operations]]
include-operation-id = "getClient"
parameters = { client_id = "$client_id" }

[[operations]]
include-operation-id = "deleteSession"
parameters = { client_id = "$stored_id" }

[[operations]]
include-operation-id = "removeToken"
parameters = { name = "expendable" }

[[operations]]
include-operation-id = "removeBan"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "400", "401", "403", "404", "409", "429", "5xx"]

[[operations]]
include-operation-id = "addBan"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "400", "401", "403", "404", "409", "429", "5xx"]

[[operations]]
include-operation-id = "diffAcl"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "400", "401", "403", "404", "409", "429", "5xx"]

[[operations]]
include-operation-id = "explainAcl"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "400", "401", "403", "404", "409", "429", "5xx"]

[[operations]]
include-operation-id = "listRetained"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "400", "401", "403", "404", "409", "429", "5xx"]

[[operations]]
include-operation-id = "listSubscriptions"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "400", "401", "403", "404", "409", "429", "5xx"]

[[operations]]
include-operation-id = "addUser"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "400", "401", "403", "404", "409", "429", "5xx"]
CONF

# GET /api/v1/events/stream is left out: it is an endless server-sent event stream that says
# nothing until an event happens, so every request to it would end in a timeout
# (tests/dashboard reads it). --workers 1 and --generation-database none: the same seed sends
# the same requests in the same order, and nothing is written outside $work.
schemathesis() {
  (cd "$work" && timeout 300 "$work/venv/bin/schemathesis" --config-file "$work/schemathesis.toml" run \
    "http://127.0.0.1:$admin_port/api/v1/openapi.json" \
    --header "Authorization: Bearer $token" \
    --checks all \
    --exclude-operation-id streamEvents \
    --max-examples "$EXAMPLES" \
    --seed "$SEED" \
    --workers 1 \
    --generation-database none \
    --generation-with-security-parameters false \
    --request-timeout 10 \
    --no-color \
    "$@")
}

# First the reads alone, while the device is connected: the client list and the client's
# details with a client in them. Then every operation, reads included: the generated changes
# (bans, users disabled or removed, kicks) disconnect the device sooner or later.
status=0
log "schemathesis, GET operations, with a client connected"
schemathesis --include-method GET "$@" || status=$?
log "schemathesis, every operation"
schemathesis "$@" || { s=$?; [ "$status" -ne 0 ] || status=$s; }
if [ "$status" -ne 0 ]; then
  log "failed (status $status); the broker's log:"
  tail -n 50 "$work/broker.log" >&2
fi
exit "$status"
