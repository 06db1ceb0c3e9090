"""Authentication with third-party clients: paho-mqtt and mosquitto_pub/mosquitto_sub against a
listener with Bulwark's secure defaults (password store, no anonymous access).

run.sh creates the user MQTT_USER with `bulwark user add` and exports MQTT_AUTH_PORT,
MQTT_USER, MQTT_PASSWORD and MQTT_AUDIT (the audit file). Without them (BROKER=mosquitto) the
tests are skipped.

Refused logins come from their own loopback addresses (127.0.0.2 and up): failed logins are
counted per source address, and a few from 127.0.0.1 would slow down the rest of the suite
(that backoff is tested in crates/bulwark-server/tests/auth.rs).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import time

import pytest

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from helpers import HOST, TIMEOUT, Client, MosqSub, V311, V5, both_versions, mosquitto_pub

AUTH_PORT = int(os.environ.get("MQTT_AUTH_PORT", "0"))
USER = os.environ.get("MQTT_USER", "")
PASSWORD = os.environ.get("MQTT_PASSWORD", "")
AUDIT = os.environ.get("MQTT_AUDIT", "")
JWT_SECRET = os.environ.get("MQTT_JWT_SECRET", "").encode()

pytestmark = pytest.mark.skipif(AUTH_PORT == 0, reason="no password listener (MQTT_AUTH_PORT unset)")


_next_address = iter(range(2, 250))


def refused_code(version: int, **kwargs) -> int:
    """The CONNACK's refusal as paho reports it: paho maps 3.1.1 return codes to the 5.0 reason
    codes of the same meaning (4 to 0x86, 5 to 0x87). Each call from a fresh source address."""
    c = Client(version, port=AUTH_PORT, bind_address=f"127.0.0.{next(_next_address)}", **kwargs)
    try:
        c.connect(expect_success=False)
        assert c.connack_rc.is_failure, f"accepted: {c.connack_rc}"
        return c.connack_rc.value
    finally:
        c.close()


@both_versions
def test_the_right_password_connects_and_messages_flow(topic, version):
    sub = Client(version, port=AUTH_PORT, username=USER, password=PASSWORD).connect()
    pub = Client(version, port=AUTH_PORT, username=USER, password=PASSWORD).connect()
    try:
        sub.subscribe(topic, qos=1)
        pub.publish(topic, b"authenticated", qos=1)
        assert sub.wait_messages(1, topic)[0].payload == b"authenticated"
    finally:
        sub.close()
        pub.close()


def test_anonymous_clients_are_refused():
    # 3.1.1 return code 5 and 5.0 reason code 0x87: not authorized.
    assert refused_code(V311) == 0x87
    assert refused_code(V5) == 0x87


@pytest.mark.parametrize("password", ["wrong-password-123", ""], ids=["wrong", "empty"])
def test_wrong_and_empty_passwords_are_refused(password):
    # 3.1.1 return code 4 and 5.0 reason code 0x86: bad user name or password.
    assert refused_code(V311, username=USER, password=password) == 0x86
    assert refused_code(V5, username=USER, password=password) == 0x86


def test_an_unknown_user_gets_the_same_answer_as_a_wrong_password():
    assert refused_code(V5, username="nobody-here", password=PASSWORD) == 0x86
    assert refused_code(V311, username="nobody-here", password=PASSWORD) == 0x86


@both_versions
def test_mosquitto_clients_with_a_password(topic, version):
    sub = MosqSub(version, topic, qos=1, port=AUTH_PORT, args=["-u", USER, "-P", PASSWORD])
    sub.wait_subscribed()
    mosquitto_pub(version, topic, "-q", "1", "-m", "via cli", "-u", USER, "-P", PASSWORD,
                  port=AUTH_PORT)
    rc, msgs = sub.result()
    assert rc == 0, sub.output()
    assert [m.payload for m in msgs] == [b"via cli"]


def test_mosquitto_pub_with_a_wrong_password_fails():
    r = subprocess.run(
        ["mosquitto_pub", "-h", HOST, "-p", str(AUTH_PORT), "-t", "x", "-m", "y",
         "-u", USER, "-P", "not-the-password"],
        capture_output=True, timeout=15,
    )
    assert r.returncode != 0, r


def test_logins_are_in_the_audit_file():
    Client(V5, port=AUTH_PORT, username=USER, password=PASSWORD).connect().close()
    refused_code(V5, username=USER, password="wrong-password-456")
    deadline = time.monotonic() + TIMEOUT
    while True:
        with open(AUDIT, encoding="utf-8") as f:
            events = [json.loads(line) for line in f if line.strip()]
        kinds = {(e["kind"], e.get("username"), e.get("listener")) for e in events}
        if ("auth_success", USER, "secure") in kinds and ("auth_failure", USER, "secure") in kinds:
            break
        assert time.monotonic() < deadline, f"events missing: {events[-10:]}"
        time.sleep(0.1)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256_token(sub: str, exp_in: int = 600, aud: str = "interop") -> str:
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = b64url(json.dumps({"sub": sub, "aud": aud, "exp": int(time.time()) + exp_in}).encode())
    signing_input = f"{header}.{claims}".encode()
    signature = hmac.new(JWT_SECRET, signing_input, hashlib.sha256).digest()
    return f"{header}.{claims}.{b64url(signature)}"


def connect_props(method: str, data: bytes) -> Properties:
    props = Properties(PacketTypes.CONNECT)
    props.AuthenticationMethod = method
    props.AuthenticationData = data
    return props


@both_versions
def test_a_jwt_in_the_password_field(topic, version):
    token = hs256_token("device-7")
    c = Client(version, port=AUTH_PORT, username="device-7", password=token).connect()
    c.close()
    assert refused_code(version, username="device-7", password=hs256_token("device-7", exp_in=-120)) == 0x86
    assert refused_code(version, username="device-7", password=hs256_token("device-7", aud="other")) == 0x86


def test_paho_v5_enhanced_authentication_with_the_jwt_method():
    """MQTT 5 enhanced authentication in one step: the token as Authentication Data."""
    props = connect_props("JWT", hs256_token("device-8").encode())
    c = Client(V5, port=AUTH_PORT, connect_properties=props).connect()
    try:
        assert c.connack_props.AuthenticationMethod == "JWT"
    finally:
        c.close()
    bad = connect_props("JWT", hs256_token("device-8", exp_in=-120).encode())
    assert refused_code(V5, connect_properties=bad) == 0x86


def test_an_unknown_authentication_method_gets_0x8c():
    assert refused_code(V5, connect_properties=connect_props("KERBEROS", b"ticket")) == 0x8C
