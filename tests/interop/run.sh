#!/usr/bin/env bash
# Interoperability suite: third-party MQTT clients (paho-mqtt, mosquitto_pub/mosquitto_sub,
# openssl s_client) against a broker this script starts on free loopback ports (plain TCP, and
# for Bulwark also TLS, WebSocket and WebSocket over TLS, with certificates from `bulwark cert`).
#
#   bash tests/interop/run.sh                      # Bulwark: $BULWARK_BIN (target/release/bulwark)
#   BROKER=mosquitto bash tests/interop/run.sh     # Debian's mosquitto, to validate the suite
#
# Extra arguments go to pytest (e.g. -k retained, -x). Exit status: pytest's.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
BROKER="${BROKER:-bulwark}"
PYTHON="${PYTHON:-python3}"
START_TIMEOUT_S="${START_TIMEOUT_S:-20}"
SUITE_TIMEOUT_S="${SUITE_TIMEOUT_S:-300}"

LOG_NAME=interop
# shellcheck source=../lib.sh
. "$HERE/../lib.sh"

# ---- what the suite needs ----
if ! command -v mosquitto_pub >/dev/null 2>&1 || ! command -v mosquitto_sub >/dev/null 2>&1; then
  apt_install mosquitto-clients
fi
command -v timeout >/dev/null 2>&1 || die "coreutils' timeout not found"
command -v stdbuf >/dev/null 2>&1 || die "coreutils' stdbuf not found"

if ! "$PYTHON" -c 'import sys, paho.mqtt; sys.exit(paho.mqtt.__version__.split(".")[0] != "2")' \
  2>/dev/null; then
  log "installing paho-mqtt 2.x"
  "$PYTHON" -m pip install -q 'paho-mqtt>=2,<3'
fi
if ! "$PYTHON" -c 'import pytest' 2>/dev/null; then
  log "installing pytest"
  "$PYTHON" -m pip install -q pytest
fi
# MQTT.js under Node.js (test_mqttjs.py, against Bulwark's WebSocket listeners): the `mqtt`
# package pinned in mqttjs/package-lock.json.
if [ "$BROKER" = bulwark ]; then
  command -v node >/dev/null 2>&1 || apt_install nodejs npm
  node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 18 ? 0 : 1)' ||
    die "MQTT.js needs Node.js 18 or later; found $(node --version)"
  mqttjs="$HERE/mqttjs"
  if [ ! -d "$mqttjs/node_modules" ]; then
    command -v npm >/dev/null 2>&1 || apt_install npm
    log "installing MQTT.js (npm ci in $mqttjs)"
    if ! npm_out="$(cd "$mqttjs" && npm ci --no-audit --no-fund --loglevel=error 2>&1)"; then
      printf '%s\n' "$npm_out" >&2
      rm -rf "$mqttjs/node_modules"  # so that the next run tries again
      die "'npm ci' failed in $mqttjs (output above)"
    fi
  fi
fi

# ---- the broker ----
work="$(mktemp -d "${TMPDIR:-/tmp}/bulwark-interop.XXXXXX")"
broker_pid=""
cleanup() {
  if [ -n "$broker_pid" ] && kill -0 "$broker_pid" 2>/dev/null; then
    kill "$broker_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$broker_pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$broker_pid" 2>/dev/null || true
    wait "$broker_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

port="$("$PYTHON" -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
cfg="$work/broker.conf"
broker_log="$work/broker.log"

case "$BROKER" in
  bulwark)
    bin="${BULWARK_BIN:-$ROOT/target/release/bulwark}"
    [ -x "$bin" ] || die "broker binary '$bin' not found or not executable (build it with 'cargo build --release', or set BULWARK_BIN)"
    # A TLS listener beside it, with certificates made by `bulwark cert` (test_tls.py).
    tls_port="$("$PYTHON" -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
    pki="$work/pki"
    "$bin" cert ca --out "$pki" >/dev/null
    "$bin" cert server --name localhost --name 127.0.0.1 --ca-dir "$pki" --out "$pki" >/dev/null
    "$bin" cert client --cn interop-device --ca-dir "$pki" --out "$pki" >/dev/null
    ws_port="$("$PYTHON" -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
    wss_port="$("$PYTHON" -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
    export MQTT_WS_PORT="$ws_port" MQTT_WSS_PORT="$wss_port"
    export MQTT_TLS_PORT="$tls_port" MQTT_CA="$pki/ca.pem"
    export MQTT_CLIENT_CERT="$pki/interop-device.pem" MQTT_CLIENT_KEY="$pki/interop-device.key"
    # A listener with the secure default (passwords, no anonymous access) for test_auth.py,
    # and a user made by `bulwark user add`. The protocol tests use listeners that let
    # anonymous clients in, as they do on Mosquitto with allow_anonymous.
    auth_port="$("$PYTHON" -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
    interop_password="violet-Lantern-harbour-2026"
    printf '%s\n' "$interop_password" |
      "$bin" user add interop --password-stdin --file "$work/passwords.toml" >/dev/null
    export MQTT_AUTH_PORT="$auth_port" MQTT_USER="interop" MQTT_PASSWORD="$interop_password"
    export MQTT_AUDIT="$work/audit.jsonl"
    # JWT (HS256) for test_auth.py's token tests.
    jwt_secret="interop shared secret for HS256 tokens, 48 bytes"
    printf '%s' "$jwt_secret" >"$work/jwt.secret"
    export MQTT_JWT_SECRET="$jwt_secret"
    # The ACL: the protocol tests may use any topic on the listeners that let anonymous
    # clients in; on the secure listener the user has the rules test_acl.py checks.
    cat >"$work/acl.toml" <<'EOF'
[[rule]]
permission = "allow"
action = "all"
clients = "any"
listener = ["open", "tls", "ws", "wss"]
topics = ["#", "$test/#"]

[[rule]]
permission = "allow"
action = "all"
user = "interop"
listener = "secure"
topics = ["bwinterop/#", "bwacl/{username}/#"]

[[rule]]
permission = "allow"
action = "subscribe"
user = "interop"
topic = "bwacl/public/#"

[[rule]]
permission = "deny"
action = "all"
listener = "secure"
topic = "bwacl/public/secret/#"
EOF
    export MQTT_ACL_PUBLIC="bwacl/public"
    cat >"$cfg" <<EOF
[acl]
file = "$work/acl.toml"

[auth]
password_file = "$work/passwords.toml"
audit_file = "$work/audit.jsonl"

[auth.jwt]
hmac_secret_file = "$work/jwt.secret"
audiences = ["interop"]

[[listener]]
name = "open"
bind = "127.0.0.1:$port"
dangerous_allow_anonymous = true

[[listener]]
name = "secure"
bind = "127.0.0.1:$auth_port"

[[listener]]
name = "tls"
kind = "tls"
bind = "127.0.0.1:$tls_port"
[listener.tls]
cert = "$pki/server.pem"
key = "$pki/server.key"
client_auth = "optional"
client_ca = "$pki/ca.pem"

[[listener]]
name = "ws"
kind = "ws"
bind = "127.0.0.1:$ws_port"
dangerous_allow_anonymous = true

[[listener]]
name = "wss"
kind = "wss"
bind = "127.0.0.1:$wss_port"
dangerous_allow_anonymous = true
[listener.tls]
cert = "$pki/server.pem"
key = "$pki/server.key"
EOF
    cmd=("$bin" serve --config "$cfg" --data-dir "$work/data")
    ;;
  mosquitto)
    mosq="$(command -v mosquitto || true)"  # /usr/sbin may not be on a user's PATH
    if [ -z "$mosq" ] && [ -x /usr/sbin/mosquitto ]; then mosq=/usr/sbin/mosquitto; fi
    if [ -z "$mosq" ]; then
      apt_install mosquitto
      mosq="$(command -v mosquitto || echo /usr/sbin/mosquitto)"
    fi
    cat >"$cfg" <<EOF
listener $port 127.0.0.1
allow_anonymous true
persistence false
EOF
    chmod a+rx "$work"; chmod a+r "$cfg"
    cmd=("$mosq" -c "$cfg")
    ;;
  *) die "BROKER must be 'bulwark' or 'mosquitto', not '$BROKER'" ;;
esac

log "starting $BROKER on 127.0.0.1:$port: ${cmd[*]}"
"${cmd[@]}" >"$broker_log" 2>&1 &
broker_pid=$!

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }
tries=$((START_TIMEOUT_S * 10))  # one try every 0.1 s
until port_open; do
  if ! kill -0 "$broker_pid" 2>/dev/null; then
    log "the broker exited before accepting connections; its output:"
    cat "$broker_log" >&2
    exit 2
  fi
  tries=$((tries - 1))
  if [ "$tries" -le 0 ]; then
    log "the broker did not accept TCP on 127.0.0.1:$port within ${START_TIMEOUT_S}s; its output:"
    cat "$broker_log" >&2
    exit 2
  fi
  sleep 0.1
done
log "broker is up (pid $broker_pid)"

# ---- the suite ----
set +e
MQTT_HOST=127.0.0.1 MQTT_PORT="$port" PYTHONDONTWRITEBYTECODE=1 \
  timeout --kill-after=10 "$SUITE_TIMEOUT_S" \
  "$PYTHON" -m pytest -p no:cacheprovider --rootdir "$HERE" -v "$HERE" "$@"
status=$?
set -e

if [ "$status" -ne 0 ]; then
  if [ "$status" -eq 124 ]; then log "the suite ran past ${SUITE_TIMEOUT_S}s and was stopped"; fi
  if ! kill -0 "$broker_pid" 2>/dev/null; then
    log "the broker is no longer running"
  fi
  log "last lines of the broker's output:"
  tail -n 50 "$broker_log" >&2 || true
fi
exit "$status"
