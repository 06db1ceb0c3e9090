"""Authorization with third-party clients: paho-mqtt and mosquitto_sub against the secure
listener, whose ACL (written by run.sh) gives the user MQTT_USER `bwacl/{username}/#`,
`bwacl/public/#` read-only, and denies `bwacl/public/secret/#` to everybody.

Without MQTT_AUTH_PORT and MQTT_ACL_PUBLIC (BROKER=mosquitto) the tests are skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid

import pytest

from helpers import HOST, SETTLE, TIMEOUT, Client, V311, V5, both_versions

AUTH_PORT = int(os.environ.get("MQTT_AUTH_PORT", "0"))
USER = os.environ.get("MQTT_USER", "")
PASSWORD = os.environ.get("MQTT_PASSWORD", "")
AUDIT = os.environ.get("MQTT_AUDIT", "")
PUBLIC = os.environ.get("MQTT_ACL_PUBLIC", "")

pytestmark = pytest.mark.skipif(
    AUTH_PORT == 0 or not PUBLIC, reason="no ACL on a password listener (MQTT_ACL_PUBLIC unset)"
)

NOT_AUTHORIZED = 0x87
FAILURE_311 = 0x80


def user(version: int) -> Client:
    return Client(version, port=AUTH_PORT, username=USER, password=PASSWORD).connect()


def own(name: str) -> str:
    return f"bwacl/{USER}/{uuid.uuid4().hex[:12]}/{name}"


@both_versions
def test_allowed_topics_flow(version):
    sub, pub = user(version), user(version)
    try:
        topic = own("t")
        sub.subscribe(topic, qos=1)
        pub.publish(topic, b"allowed", qos=1)
        assert sub.wait_messages(1, topic)[0].payload == b"allowed"
    finally:
        sub.close()
        pub.close()


@both_versions
def test_forbidden_filters_are_refused_in_the_suback(version):
    refused = NOT_AUTHORIZED if version == V5 else FAILURE_311
    c = user(version)
    try:
        for topic in ["bwacl/someone-else/#", "#", "$SYS/#", f"{PUBLIC}/secret/#",
                      f"$share/g/{PUBLIC}/secret/x", "bwacl/+/x"]:
            assert c.subscribe_code(topic) == refused, topic
        # Read-only, away from the denied subtree: granted.
        assert c.subscribe_code(f"{PUBLIC}/open/#") == 1
        # Over the denied subtree: granted with it carved out (docs/acl.md).
        assert c.subscribe_code(f"{PUBLIC}/#") == 1
    finally:
        c.close()


def test_a_denied_publish_gets_0x87_in_5_and_is_dropped_in_3_1_1():
    watcher = user(V5)
    v5, v311 = user(V5), user(V311)
    try:
        topic = f"{PUBLIC}/open/{uuid.uuid4().hex[:12]}"
        watcher.subscribe(topic, qos=1)
        assert v5.publish_code(topic, b"five") == NOT_AUTHORIZED
        # 3.1.1 has no negative acknowledgement: the PUBACK comes, the message does not.
        assert v311.publish_code(topic, b"three") == 0
        time.sleep(SETTLE)
        assert watcher.received(topic) == []
    finally:
        for c in (watcher, v5, v311):
            c.close()


def test_mosquitto_sub_reports_the_refusal():
    r = subprocess.run(
        ["mosquitto_sub", "-h", HOST, "-p", str(AUTH_PORT), "-u", USER, "-P", PASSWORD,
         "-V", "mqttv5", "-t", "bwacl/someone-else/#", "-C", "1", "-W", "5"],
        capture_output=True, timeout=15,
    )
    assert b"denied" in r.stderr.lower(), r


def test_denials_are_in_the_audit_file():
    c = user(V5)
    try:
        filter_ = f"bwacl/someone-else/{uuid.uuid4().hex[:12]}"
        assert c.subscribe_code(filter_) == NOT_AUTHORIZED
    finally:
        c.close()
    deadline = time.monotonic() + TIMEOUT
    while True:
        with open(AUDIT, encoding="utf-8") as f:
            events = [json.loads(line) for line in f if line.strip()]
        found = [e for e in events if e["kind"] == "acl_denied" and e.get("topic") == filter_]
        if found:
            assert found[0]["action"] == "subscribe"
            assert found[0]["username"] == USER
            assert found[0]["listener"] == "secure"
            break
        assert time.monotonic() < deadline, f"no acl_denied event: {events[-5:]}"
        time.sleep(0.1)
