"""Will messages: published when the connection is lost, not after a normal DISCONNECT, and, in
MQTT 5.0, after a DISCONNECT with reason code 0x04 (Disconnect with Will Message)."""

from __future__ import annotations

import time

import pytest

from helpers import (
    V5,
    RawClient,
    both_versions,
    disconnect_reason,
    payload_all_bytes,
    props,
    unique_id,
)
from paho.mqtt.packettypes import PacketTypes

# How long to listen for a Will that must not come, after the connection is over.
NO_WILL_WAIT = 1.0

KINDS = pytest.mark.parametrize("kind", ["raw", "paho"])


def connect_with_will(clients, version, kind, will_topic, will_payload, qos=1, retain=False):
    """A client with a Will, connected; `kind` is a raw socket client or paho."""
    if kind == "raw":
        c = RawClient(version)
        rc = c.connect(
            unique_id(),
            will_topic=will_topic,
            will_payload=will_payload,
            will_qos=qos,
            will_retain=retain,
        )
        assert rc == 0, f"CONNACK code {rc}"
        return c
    return clients(
        version, will=dict(topic=will_topic, payload=will_payload, qos=qos, retain=retain)
    )


def drop(conn):
    if isinstance(conn, RawClient):
        conn.drop()
    else:
        conn.abort()


@both_versions
@KINDS
def test_will_on_connection_lost(clients, topic, version, kind):
    watcher = clients(version)
    watcher.subscribe(topic, 1)
    conn = connect_with_will(clients, version, kind, topic, payload_all_bytes())
    drop(conn)
    (m,) = watcher.wait_messages(1, topic)
    assert m.payload == payload_all_bytes()
    assert m.qos == 1
    assert not m.retain


@both_versions
@KINDS
def test_no_will_after_disconnect(clients, topic, version, kind):
    watcher = clients(version)
    watcher.subscribe(topic, 1)
    conn = connect_with_will(clients, version, kind, topic, b"must not be published")
    conn.disconnect()
    time.sleep(NO_WILL_WAIT)
    assert watcher.received(topic) == []


@KINDS
def test_v5_will_on_disconnect_with_will_message(clients, topic, kind):
    watcher = clients(V5)
    watcher.subscribe(topic, 1)
    conn = connect_with_will(clients, V5, kind, topic, b"reason 0x04")
    if kind == "raw":
        conn.disconnect(reason=0x04)
    else:
        conn.disconnect(reason=disconnect_reason(0x04))
    (m,) = watcher.wait_messages(1, topic)
    assert m.payload == b"reason 0x04"


@both_versions
def test_will_retained(clients, topic, retained_cleanup, version):
    """A Will with the retain flag becomes the topic's retained message."""
    retained_cleanup(topic)
    conn = connect_with_will(clients, version, "raw", topic, b"gone", retain=True)
    conn.drop()
    later = clients(version)
    later.subscribe(topic, 1)
    (m,) = later.wait_messages(1, topic)
    assert (m.payload, m.retain) == (b"gone", True)


def test_v5_will_properties(clients, topic):
    """Will properties reach the subscriber; user properties in order, duplicates kept."""
    watcher = clients(V5)
    watcher.subscribe(topic, 1)
    user = [("k", "1"), ("other", "x"), ("k", "2"), ("k", "1")]
    will_props = props(
        PacketTypes.WILLMESSAGE,
        PayloadFormatIndicator=1,
        ContentType="text/plain",
        ResponseTopic=topic + "/reply",
        CorrelationData=b"\x00corr\xff",
        UserProperty=user,
    )
    c = clients(
        V5, will=dict(topic=topic, payload="bye", qos=1, properties=will_props)
    )
    c.abort()
    (m,) = watcher.wait_messages(1, topic)
    assert m.payload == b"bye"
    assert m.props.get("PayloadFormatIndicator") == 1
    assert m.props.get("ContentType") == "text/plain"
    assert m.props.get("ResponseTopic") == topic + "/reply"
    assert m.props.get("CorrelationData") == b"\x00corr\xff"
    assert m.user_props == user
