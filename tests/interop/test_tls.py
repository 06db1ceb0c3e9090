"""MQTT over TLS with third-party clients: paho-mqtt, mosquitto_pub/mosquitto_sub and openssl.

run.sh starts the broker with a TLS listener (certificates made by `bulwark cert`) when it tests
Bulwark, and exports MQTT_TLS_PORT, MQTT_CA, MQTT_CLIENT_CERT and MQTT_CLIENT_KEY; the listener
asks for client certificates (client_auth = "optional") and maps the CN to the username; a client
without a certificate logs in with the password of MQTT_USER. Without those variables
(BROKER=mosquitto) the tests are skipped.
"""

from __future__ import annotations

import os
import re
import shutil
import ssl
import subprocess

import pytest

from helpers import HOST, Client, MosqSub, both_versions, mosquitto_pub

TLS_PORT = int(os.environ.get("MQTT_TLS_PORT", "0"))
CA = os.environ.get("MQTT_CA", "")
CERT = os.environ.get("MQTT_CLIENT_CERT", "")
KEY = os.environ.get("MQTT_CLIENT_KEY", "")

pytestmark = pytest.mark.skipif(TLS_PORT == 0, reason="no TLS listener (MQTT_TLS_PORT unset)")


def tls_client(version: int, *, client_cert: bool = False, **kwargs) -> Client:
    tls = {"ca_certs": CA, "tls_version": ssl.PROTOCOL_TLS_CLIENT}
    if client_cert:
        tls.update(certfile=CERT, keyfile=KEY)
    else:
        kwargs.setdefault("username", os.environ.get("MQTT_USER"))
        kwargs.setdefault("password", os.environ.get("MQTT_PASSWORD"))
    return Client(version, port=TLS_PORT, tls=tls, **kwargs)


@both_versions
@pytest.mark.parametrize("client_cert", [False, True], ids=["server-auth", "mutual"])
def test_paho_over_tls(topic, version, client_cert):
    """paho-mqtt publishes and receives over TLS, with and without a client certificate."""
    sub = tls_client(version, client_cert=client_cert).connect()
    pub = tls_client(version, client_cert=client_cert).connect()
    try:
        sub.subscribe(topic, qos=1)
        pub.publish(topic, b"over tls", qos=1)
        got = sub.wait_messages(1, topic)
        assert got[0].payload == b"over tls"
    finally:
        sub.close()
        pub.close()


@both_versions
def test_mosquitto_clients_over_tls_with_client_certificate(topic, version):
    """mosquitto_pub --cafile --cert --key reaches mosquitto_sub --cafile over TLS."""
    sub = MosqSub(
        version, topic, qos=1, port=TLS_PORT,
        args=["--cafile", CA, "-u", os.environ.get("MQTT_USER", ""),
              "-P", os.environ.get("MQTT_PASSWORD", "")],
    )
    sub.wait_subscribed()
    mosquitto_pub(
        version, topic, "-q", "1", "-m", "hello", "--cafile", CA, "--cert", CERT, "--key", KEY,
        port=TLS_PORT,
    )
    rc, msgs = sub.result()
    assert rc == 0, sub.output()
    assert [m.payload for m in msgs] == [b"hello"]


def test_a_client_not_trusting_the_ca_fails():
    """Without the CA, the client refuses the broker's certificate (nothing is sent in clear)."""
    r = subprocess.run(
        ["mosquitto_pub", "-h", HOST, "-p", str(TLS_PORT), "-t", "x", "-m", "y",
         "--capath", "/nonexistent"],
        capture_output=True, timeout=15,
    )
    assert r.returncode != 0


def openssl(*args: str) -> subprocess.CompletedProcess:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    return subprocess.run(
        ["openssl", "s_client", "-connect", f"{HOST}:{TLS_PORT}", "-CAfile", CA,
         "-servername", "localhost", *args],
        input=b"", capture_output=True, timeout=15,
    )


def handshake_ok(r: subprocess.CompletedProcess) -> bool:
    """The handshake completed: openssl prints "New, TLSv1.x, Cipher is ..." (and "(NONE)" as
    the cipher when it failed). The session details that follow may be cut short in TLS 1.3."""
    out = r.stdout.decode(errors="replace")
    return r.returncode == 0 and re.search(r"New, TLSv1\.[0-3], Cipher is (?!\(NONE\))", out) is not None


@pytest.mark.parametrize("flag", ["-tls1", "-tls1_1"])
def test_tls_10_and_11_are_refused(flag):
    r = openssl(flag)
    assert not handshake_ok(r), r.stdout.decode(errors="replace")


@pytest.mark.parametrize(
    "ciphers",
    [
        "AES128-SHA",          # RSA key exchange, CBC
        "AES256-GCM-SHA384",   # RSA key exchange, AEAD
        "ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES128-SHA",  # ECDHE, but CBC
        "DES-CBC3-SHA",
    ],
)
def test_weak_tls12_suites_are_refused(ciphers):
    r = openssl("-tls1_2", "-cipher", ciphers)
    assert not handshake_ok(r), r.stdout.decode(errors="replace")


@pytest.mark.parametrize(
    "args",
    [["-tls1_3"], ["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"],
     ["-tls1_2", "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305"]],
    ids=["tls13", "tls12-gcm", "tls12-chacha"],
)
def test_strong_versions_and_suites_are_accepted(args):
    r = openssl(*args)
    assert handshake_ok(r), r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace")
