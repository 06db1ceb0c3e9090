"""Retained messages: set, replace, delete, Retain Handling and Retain As Published."""

from __future__ import annotations

import time

from helpers import SETTLE, V5, MosqSub, both_versions, mosquitto_pub


def fresh_subscriber_sees(clients, version, topic, marker_pub, **sub_opts):
    """Subscribe a new client to `topic`, then publish a non-retained marker to it.

    Returns what arrived before the marker, plus the marker itself (asserted to be last and not
    retained). Retained messages are sent on subscription, so anything retained precedes it.
    """
    sub = clients(version)
    sub.subscribe(topic, 1, **sub_opts)
    marker = b"marker"
    marker_pub.publish(topic, marker, qos=1)
    sub.wait_for(lambda m: m.payload == marker, "marker")
    time.sleep(SETTLE)
    got = sub.received(topic)
    assert got[-1].payload == marker and not got[-1].retain, got
    return got[:-1]


@both_versions
def test_retained_set_replace_delete(clients, topic, retained_cleanup, version):
    retained_cleanup(topic)
    pub = clients(version)
    pub.publish(topic, b"first", qos=1, retain=True)
    pub.publish(topic, b"second", qos=1, retain=True)

    # A later subscriber gets the latest retained message only, with the retain flag set.
    sub = clients(version)
    sub.subscribe(topic, 1)
    (m,) = sub.wait_messages(1, topic)
    assert m.payload == b"second"
    assert m.retain
    time.sleep(SETTLE)
    assert len(sub.received(topic)) == 1, sub.received(topic)

    # An empty retained payload deletes it (and is not stored itself).
    pub.publish(topic, b"", qos=1, retain=True)
    assert fresh_subscriber_sees(clients, version, topic, pub) == []


@both_versions
def test_retained_delivered_at_subscription_qos(clients, topic, retained_cleanup, version):
    """A retained QoS 2 message is delivered at the new subscription's lower QoS."""
    retained_cleanup(topic)
    pub = clients(version)
    pub.publish(topic, b"keep", qos=2, retain=True)
    sub = clients(version)
    sub.subscribe(topic, 1)
    (m,) = sub.wait_messages(1, topic)
    assert (m.payload, m.qos, m.retain) == (b"keep", 1, True)


@both_versions
def test_retained_with_mosquitto_cli(clients, topic, retained_cleanup, version):
    """mosquitto_pub -r sets, mosquitto_sub sees the retain flag, mosquitto_pub -r -n deletes."""
    retained_cleanup(topic)
    mosquitto_pub(version, topic, "-r", "-q", "1", "-m", "cli-retained")
    ms = MosqSub(version, topic, qos=1, count=1)
    rc, msgs = ms.result()
    assert rc == 0, ms.output()
    assert [(m.payload, m.retain) for m in msgs] == [(b"cli-retained", True)], ms.output()

    mosquitto_pub(version, topic, "-r", "-q", "1", "-n")
    ms = MosqSub(version, topic, qos=1, count=1)
    ms.wait_subscribed()
    mosquitto_pub(version, topic, "-q", "1", "-m", "live")
    rc, msgs = ms.result()
    assert rc == 0, ms.output()
    assert [(m.payload, m.retain) for m in msgs] == [(b"live", False)], ms.output()


@both_versions
def test_live_delivery_of_retained_publish_clears_flag(clients, topic, retained_cleanup, version):
    """3.1.1 MQTT-3.3.1-9 / 5.0 Retain As Published 0: an existing subscriber gets the message
    with retain 0; a new subscriber gets it with retain 1."""
    retained_cleanup(topic)
    sub = clients(version)
    sub.subscribe(topic, 1)
    pub = clients(version)
    pub.publish(topic, b"r", qos=1, retain=True)
    (m,) = sub.wait_messages(1, topic)
    assert m.payload == b"r"
    assert not m.retain
    later = clients(version)
    later.subscribe(topic, 1)
    (m,) = later.wait_messages(1, topic)
    assert m.retain


def test_v5_retain_as_published(clients, topic, retained_cleanup):
    """Retain As Published 1 keeps the retain flag on live delivery."""
    retained_cleanup(topic)
    sub = clients(V5)
    sub.subscribe(topic, 1, retain_as_published=True)
    pub = clients(V5)
    pub.publish(topic, b"rap", qos=1, retain=True)
    pub.publish(topic, b"plain", qos=1, retain=False)
    got = sub.wait_messages(2, topic)
    assert [(m.payload, m.retain) for m in got] == [(b"rap", True), (b"plain", False)]


def test_v5_retain_handling_2_sends_none(clients, topic, retained_cleanup):
    retained_cleanup(topic)
    pub = clients(V5)
    pub.publish(topic, b"stored", qos=1, retain=True)
    # Control: Retain Handling 0 (the default) gets it.
    control = fresh_subscriber_sees(clients, V5, topic, pub, retain_handling=0)
    assert [(m.payload, m.retain) for m in control] == [(b"stored", True)]
    assert fresh_subscriber_sees(clients, V5, topic, pub, retain_handling=2) == []


def test_v5_retain_handling_1_only_for_new_subscription(clients, topic, retained_cleanup):
    retained_cleanup(topic)
    pub = clients(V5)
    pub.publish(topic, b"stored", qos=1, retain=True)
    sub = clients(V5)
    sub.subscribe(topic, 1, retain_handling=1)
    (m,) = sub.wait_messages(1, topic)
    assert (m.payload, m.retain) == (b"stored", True)
    # The same subscription again: it exists already, so no retained message this time.
    sub.subscribe(topic, 1, retain_handling=1)
    pub.publish(topic, b"marker", qos=1)
    sub.wait_for(lambda m: m.payload == b"marker", "marker")
    time.sleep(SETTLE)
    assert [m.payload for m in sub.received(topic)] == [b"stored", b"marker"]
