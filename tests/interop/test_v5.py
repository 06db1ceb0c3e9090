"""MQTT 5.0 features: topic aliases, PUBLISH properties end to end, No Local, Subscription
Identifiers."""

from __future__ import annotations

import time

from helpers import (
    SETTLE,
    V311,
    V5,
    MosqSub,
    mosquitto_pub,
    payload_all_bytes,
    props,
)
from paho.mqtt.packettypes import PacketTypes

USER = [("key", "v1"), ("other", "x"), ("key", "v2"), ("key", "v1"), ("\u00e9", "\u2603")]
EXPIRY = 3600


def full_props():
    return props(
        PayloadFormatIndicator=1,
        ContentType="application/json; charset=utf-8",
        ResponseTopic="bwinterop/replies/here",
        CorrelationData=b"\x00\x01corr\xfe\xff",
        MessageExpiryInterval=EXPIRY,
        UserProperty=list(USER),
    )


def test_topic_alias(clients, topic):
    pub = clients(V5)
    alias_max = getattr(pub.connack_props, "TopicAliasMaximum", 0)
    assert alias_max >= 1, "the server offers no topic alias (CONNACK Topic Alias Maximum)"
    sub = clients(V5)
    sub.subscribe(topic, 1)
    other = topic + "/other"
    sub.subscribe(other, 1)
    pub.publish(topic, b"with topic", qos=1, properties=props(TopicAlias=1))
    pub.publish("", b"alias only", qos=1, properties=props(TopicAlias=1))
    # Re-map the alias to another topic, then use it again.
    pub.publish(other, b"remapped", qos=1, properties=props(TopicAlias=1))
    pub.publish("", b"alias again", qos=1, properties=props(TopicAlias=1))
    got = sub.wait_messages(4)
    time.sleep(SETTLE)
    got = sub.received()
    assert sorted((m.topic, m.payload) for m in got) == sorted(
        [
            (topic, b"with topic"),
            (topic, b"alias only"),
            (other, b"remapped"),
            (other, b"alias again"),
        ]
    )
    # The subscriber allowed no aliases (no Topic Alias Maximum sent): none may be used on it.
    assert not any("TopicAlias" in m.props for m in got)


def check_props(m):
    assert m.props.get("PayloadFormatIndicator") == 1
    assert m.props.get("ContentType") == "application/json; charset=utf-8"
    assert m.props.get("ResponseTopic") == "bwinterop/replies/here"
    assert m.props.get("CorrelationData") == b"\x00\x01corr\xfe\xff"
    expiry = m.props.get("MessageExpiryInterval")
    assert expiry is not None, "Message Expiry Interval dropped"
    assert 0 < expiry <= EXPIRY
    assert m.user_props == USER


def test_publish_properties_roundtrip(clients, topic):
    sub = clients(V5)
    sub.subscribe(topic, 2)
    pub = clients(V5)
    for qos in (0, 1, 2):
        pub.publish(topic, b'{"qos": %d}' % qos, qos=qos, properties=full_props())
    got = sub.wait_messages(3, topic)
    assert [m.qos for m in got] == [0, 1, 2]
    for m in got:
        check_props(m)


def test_retained_message_keeps_properties(clients, topic, retained_cleanup):
    retained_cleanup(topic)
    pub = clients(V5)
    pub.publish(topic, b"{}", qos=1, retain=True, properties=full_props())
    sub = clients(V5)
    sub.subscribe(topic, 1)
    (m,) = sub.wait_messages(1, topic)
    assert m.retain
    check_props(m)


def test_message_without_expiry_has_none(clients, topic):
    sub = clients(V5)
    sub.subscribe(topic, 1)
    pub = clients(V5)
    pub.publish(topic, b"plain", qos=1)
    (m,) = sub.wait_messages(1, topic)
    assert "MessageExpiryInterval" not in m.props
    assert m.user_props == []


def test_v5_publish_to_v311_subscriber(clients, topic):
    """A 5.0 PUBLISH with properties still reaches a 3.1.1 subscriber, payload intact."""
    sub = clients(V311)
    sub.subscribe(topic, 1)
    pub = clients(V5)
    pub.publish(topic, payload_all_bytes(), qos=1, properties=full_props())
    (m,) = sub.wait_messages(1, topic)
    assert m.payload == payload_all_bytes()


def test_properties_to_mosquitto_sub(clients, topic):
    ms = MosqSub(V5, topic, qos=1, count=1, extra_format=["%F", "%C", "%R", "%E", "%P"])
    ms.wait_subscribed()
    pub = clients(V5)
    pub.publish(
        topic,
        b"{}",
        qos=1,
        properties=props(
            PayloadFormatIndicator=1,
            ContentType="text/plain",
            ResponseTopic="r/t",
            MessageExpiryInterval=EXPIRY,
            UserProperty=[("a", "1"), ("b", "2"), ("a", "3")],
        ),
    )
    rc, msgs = ms.result()
    assert rc == 0, ms.output()
    assert len(msgs) == 1, ms.output()
    fmt, ctype, resp, expiry, user = msgs[0].extra
    assert (fmt, ctype, resp) == ("1", "text/plain", "r/t")
    assert 0 < int(expiry) <= EXPIRY
    assert user.split() == ["a:1", "b:2", "a:3"]


def test_properties_from_mosquitto_pub(clients, topic):
    sub = clients(V5)
    sub.subscribe(topic, 1)
    mosquitto_pub(
        V5, topic, "-q", "1", "-m", "{}",
        "-D", "publish", "payload-format-indicator", "1",
        "-D", "publish", "content-type", "application/json",
        "-D", "publish", "response-topic", "reply/here",
        "-D", "publish", "correlation-data", "corr-1",
        "-D", "publish", "message-expiry-interval", str(EXPIRY),
        "-D", "publish", "user-property", "k", "1",
        "-D", "publish", "user-property", "k", "2",
    )
    (m,) = sub.wait_messages(1, topic)
    assert m.props.get("PayloadFormatIndicator") == 1
    assert m.props.get("ContentType") == "application/json"
    assert m.props.get("ResponseTopic") == "reply/here"
    assert m.props.get("CorrelationData") == b"corr-1"
    assert 0 < m.props.get("MessageExpiryInterval", 0) <= EXPIRY
    assert m.user_props == [("k", "1"), ("k", "2")]


def test_no_local(clients, topic):
    me = clients(V5)
    me.subscribe(topic, 1, no_local=True)
    # Control: an ordinary subscriber, so we know my publication was routed.
    watcher = clients(V5)
    watcher.subscribe(topic, 1)
    me.publish(topic, b"from me", qos=1)
    other = clients(V5)
    other.publish(topic, b"from other", qos=1)
    watcher.wait_messages(2, topic)
    me.wait_for(lambda m: m.payload == b"from other", "from another client")
    time.sleep(SETTLE)
    assert [m.payload for m in me.received(topic)] == [b"from other"]


def test_without_no_local_own_messages_arrive(clients, topic):
    """The converse: without No Local a client receives its own publications."""
    me = clients(V5)
    me.subscribe(topic, 1)
    me.publish(topic, b"echo", qos=1)
    (m,) = me.wait_messages(1, topic)
    assert m.payload == b"echo"


def test_subscription_identifier(clients, topic):
    sub = clients(V5)
    if getattr(sub.connack_props, "SubscriptionIdentifierAvailable", 1) == 0:
        raise AssertionError("the server declares Subscription Identifiers unavailable")
    sub.subscribe(topic, 1, properties=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=42))
    pub = clients(V5)
    pub.publish(topic, b"id", qos=1)
    (m,) = sub.wait_messages(1, topic)
    assert m.props.get("SubscriptionIdentifier") == [42]
