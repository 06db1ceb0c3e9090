"""Publish / subscribe at QoS 0, 1 and 2, across protocol versions and across client libraries."""

from __future__ import annotations

import time

import pytest

from helpers import (
    SETTLE,
    V311,
    V5,
    MosqSub,
    both_versions,
    mosquitto_pub,
    payload_all_bytes,
    unique_topic,
)

QOS = pytest.mark.parametrize("qos", [0, 1, 2], ids=["qos0", "qos1", "qos2"])
CROSS = pytest.mark.parametrize(
    "pub_version,sub_version", [(V311, V5), (V5, V311)], ids=["v311-to-v5", "v5-to-v311"]
)


@both_versions
@QOS
def test_paho_qos_roundtrip(clients, topic, version, qos):
    """Messages arrive at the QoS they were published with (subscription QoS 2), bytes intact,
    in order, on the exact topic, without the retain flag."""
    sub = clients(version)
    assert sub.subscribe(topic, 2) == 2
    pub = clients(version)
    payloads = [payload_all_bytes(), b"", b"\x00", "h\u00e9llo \u2603".encode()]
    for p in payloads:
        pub.publish(topic, p, qos=qos)
    got = sub.wait_messages(len(payloads), topic)
    assert [m.payload for m in got] == payloads
    assert all(m.qos == qos for m in got), [m.qos for m in got]
    assert not any(m.retain for m in got)


@CROSS
@QOS
def test_paho_cross_version(clients, topic, pub_version, sub_version, qos):
    """A 3.1.1 publisher reaches a 5.0 subscriber, and the reverse."""
    sub = clients(sub_version)
    sub.subscribe(topic, 2)
    pub = clients(pub_version)
    pub.publish(topic, payload_all_bytes(), qos=qos)
    (m,) = sub.wait_messages(1, topic)
    assert m.payload == payload_all_bytes()
    assert m.qos == qos
    assert m.topic == topic


@both_versions
@pytest.mark.parametrize("sub_qos", [0, 1], ids=["sub0", "sub1"])
def test_qos_downgrade(clients, topic, version, sub_qos):
    """A QoS 2 publication is delivered at the subscription's lower maximum QoS."""
    sub = clients(version)
    assert sub.subscribe(topic, sub_qos) == sub_qos
    pub = clients(version)
    pub.publish(topic, b"downgrade-me", qos=2)
    (m,) = sub.wait_messages(1, topic)
    assert m.payload == b"downgrade-me"
    assert m.qos == sub_qos


@both_versions
def test_wildcard_subscriptions(clients, version):
    """`+` matches one level, `#` the parent and every level below it."""
    base = unique_topic("w")
    sub = clients(version)
    sub.subscribe(f"{base}/+/leaf", 1)
    sub.subscribe(f"{base}/multi/#", 1)
    pub = clients(version)
    for t in [f"{base}/a/leaf", f"{base}/a/b/leaf", f"{base}/multi", f"{base}/multi/x/y"]:
        pub.publish(t, t.encode(), qos=1)
    pub.publish(f"{base}/multi/end", b"end", qos=1)
    sub.wait_messages(4)
    time.sleep(SETTLE)  # room for a wrong extra delivery
    topics = sorted(m.topic for m in sub.received())
    assert topics == sorted(
        [f"{base}/a/leaf", f"{base}/multi", f"{base}/multi/x/y", f"{base}/multi/end"]
    )


@both_versions
@QOS
def test_mosquitto_pub_to_paho(clients, topic, tmp_path, version, qos):
    """mosquitto_pub (payload from a file, every byte value) reaches a paho subscriber."""
    sub = clients(version)
    sub.subscribe(topic, 2)
    f = tmp_path / "payload.bin"
    f.write_bytes(payload_all_bytes())
    mosquitto_pub(version, topic, "-q", str(qos), "-f", str(f))
    (m,) = sub.wait_messages(1, topic)
    assert m.payload == payload_all_bytes()
    assert m.qos == qos


@both_versions
@QOS
def test_paho_to_mosquitto_sub(clients, topic, version, qos):
    """A paho publication reaches mosquitto_sub (-C 1 -W 5) at its QoS, bytes intact."""
    ms = MosqSub(version, topic, qos=2, count=1)
    ms.wait_subscribed()
    pub = clients(version)
    pub.publish(topic, payload_all_bytes(), qos=qos)
    rc, msgs = ms.result()
    assert rc == 0, ms.output()
    assert len(msgs) == 1, ms.output()
    assert msgs[0].topic == topic
    assert msgs[0].payload == payload_all_bytes()
    assert msgs[0].qos == qos
    assert not msgs[0].retain


@CROSS
@pytest.mark.parametrize("qos", [1, 2], ids=["qos1", "qos2"])
def test_mosquitto_cli_cross_version(topic, tmp_path, pub_version, sub_version, qos):
    """mosquitto_pub -V mqttv311 reaches mosquitto_sub -V mqttv5, and the reverse."""
    ms = MosqSub(sub_version, topic, qos=2, count=2)
    ms.wait_subscribed()
    f = tmp_path / "payload.bin"
    f.write_bytes(payload_all_bytes())
    mosquitto_pub(pub_version, topic, "-q", str(qos), "-f", str(f))
    mosquitto_pub(pub_version, topic, "-q", str(qos), "-m", "second")
    rc, msgs = ms.result()
    assert rc == 0, ms.output()
    assert [m.payload for m in msgs] == [payload_all_bytes(), b"second"], ms.output()
    assert [m.qos for m in msgs] == [qos, qos]


@both_versions
def test_mosquitto_cli_qos_downgrade(topic, version):
    """mosquitto_pub -q 2 to a mosquitto_sub -q 1 subscription arrives at QoS 1."""
    ms = MosqSub(version, topic, qos=1, count=1)
    ms.wait_subscribed()
    mosquitto_pub(version, topic, "-q", "2", "-m", "q2-to-q1")
    rc, msgs = ms.result()
    assert rc == 0, ms.output()
    assert [(m.payload, m.qos) for m in msgs] == [(b"q2-to-q1", 1)], ms.output()


@both_versions
def test_unsubscribe_stops_delivery(clients, version):
    """After UNSUBACK, publications to the former filter are no longer delivered."""
    topic = unique_topic("unsub")
    marker = unique_topic("marker")
    sub = clients(version)
    sub.subscribe(topic, 1)
    sub.subscribe(marker, 1)
    pub = clients(version)
    pub.publish(topic, b"before", qos=1)
    sub.wait_messages(1, topic)
    sub.unsubscribe(topic)
    pub.publish(topic, b"after", qos=1)
    pub.publish(marker, b"marker", qos=1)
    sub.wait_messages(1, marker)
    time.sleep(SETTLE)  # grace for a (wrongly) late delivery
    assert [m.payload for m in sub.received(topic)] == [b"before"]


@both_versions
def test_dollar_topics_not_matched_by_wildcards(clients, version):
    """MQTT-4.7.2-1: filters starting with `#` or `+` do not match topic names starting with `$`."""
    uniq = unique_topic("x").split("/")[1]
    dollar = f"$test/{uniq}/x"
    normal = f"bwinterop/{uniq}/x"
    hash_sub = clients(version)
    hash_sub.subscribe("#", 1)
    plus_sub = clients(version)
    plus_sub.subscribe(f"+/{uniq}/x", 1)
    direct = clients(version)
    direct.subscribe(dollar, 1)
    pub = clients(version)
    pub.publish(dollar, b"dollar", qos=1)
    # Positive control: the message was accepted and routed to a subscriber that names it.
    (m,) = direct.wait_messages(1, dollar)
    assert m.payload == b"dollar"
    # Published after the `$` message: once the wildcards delivered it, the `$` one was routed too.
    pub.publish(normal, b"normal", qos=1)
    hash_sub.wait_messages(1, normal)
    plus_sub.wait_messages(1, normal)
    time.sleep(SETTLE)
    for name, c in (("#", hash_sub), (f"+/{uniq}/x", plus_sub)):
        leaked = [m for m in c.received() if m.topic.startswith("$") or m.topic == dollar]
        assert leaked == [], f"subscriber of {name!r} received $-topics: {leaked!r}"
