"""Persistent sessions: subscriptions and QoS 1/2 messages kept while the client is offline."""

from __future__ import annotations

import time

from helpers import SETTLE, V5, MosqSub, both_versions, mosquitto_pub, props, unique_id


def persistent(clients, version, cid, expiry=300):
    """Connect with clean session 0 (3.1.1) / clean start 0 + Session Expiry Interval (5.0)."""
    if version == V5:
        return clients(version, client_id=cid, clean=False, session_expiry=expiry)
    return clients(version, client_id=cid, clean=False)


@both_versions
def test_session_resume_with_queued_messages(clients, topic, session_cleanup, version):
    cid = unique_id()
    session_cleanup(version, cid)
    first = persistent(clients, version, cid)
    assert first.session_present is False, "a new client id cannot have a session"
    first.subscribe(topic, 1)
    first.disconnect()

    pub = clients(version)
    sent = [f"queued-{i}".encode() for i in range(5)]
    for p in sent:
        pub.publish(topic, p, qos=1)

    again = persistent(clients, version, cid)
    assert again.session_present is True
    got = again.wait_messages(len(sent), topic)
    assert [m.payload for m in got] == sent
    assert all(m.qos == 1 for m in got)
    # The subscription itself survived too: a new publication is delivered live.
    pub.publish(topic, b"live", qos=1)
    again.wait_for(lambda m: m.payload == b"live", "live")
    time.sleep(SETTLE)
    assert [m.payload for m in again.received(topic)] == sent + [b"live"]


@both_versions
def test_session_resume_with_mosquitto_sub(topic, session_cleanup, version):
    """The same with mosquitto_sub -c (and -x for 5.0): queued messages arrive in order."""
    cid = unique_id()
    session_cleanup(version, cid)
    session = ["-c"] + (["-x", "300"] if version == V5 else [])
    # -E: exit once the subscription is acknowledged.
    first = MosqSub(version, topic, qos=1, client_id=cid, args=[*session, "-E"])
    rc, _ = first.result()
    assert rc == 0, first.output()
    sent = [f"cli-queued-{i}".encode() for i in range(4)]
    for p in sent:
        mosquitto_pub(version, topic, "-q", "1", "-m", p.decode())
    again = MosqSub(version, topic, qos=1, client_id=cid, count=len(sent), args=session)
    rc, msgs = again.result()
    assert rc == 0, again.output()
    assert [m.payload for m in msgs] == sent, again.output()


@both_versions
def test_session_resume_qos2_queued(clients, topic, session_cleanup, version):
    """QoS 2 messages queued for an offline QoS 2 subscription arrive once each, at QoS 2."""
    cid = unique_id()
    session_cleanup(version, cid)
    first = persistent(clients, version, cid)
    first.subscribe(topic, 2)
    first.disconnect()
    pub = clients(version)
    for i in range(3):
        pub.publish(topic, f"q2-{i}".encode(), qos=2)
    again = persistent(clients, version, cid)
    assert again.session_present is True
    got = again.wait_messages(3, topic)
    time.sleep(SETTLE)
    got = again.received(topic)
    assert [(m.payload, m.qos) for m in got] == [(f"q2-{i}".encode(), 2) for i in range(3)]


@both_versions
def test_clean_session_discards_state(clients, topic, session_cleanup, version):
    """Reconnecting with clean session 1 / clean start 1 discards the stored session."""
    cid = unique_id()
    session_cleanup(version, cid)
    first = persistent(clients, version, cid)
    first.subscribe(topic, 1)
    first.disconnect()
    pub = clients(version)
    pub.publish(topic, b"offline", qos=1)

    clean = clients(version, client_id=cid, clean=True)
    assert clean.session_present is False
    marker = topic + "/marker"
    clean.subscribe(marker, 1)
    pub.publish(topic, b"after", qos=1)
    pub.publish(marker, b"marker", qos=1)
    clean.wait_messages(1, marker)
    time.sleep(SETTLE)
    assert clean.received(topic) == [], "old subscription or queued message survived clean start"


def test_v5_session_expiry_zero_ends_with_connection(clients, topic, session_cleanup):
    """MQTT 5.0: with no Session Expiry Interval (0) the session ends when the connection does."""
    cid = unique_id()
    session_cleanup(V5, cid)
    first = clients(V5, client_id=cid, clean=False)  # no Session Expiry Interval property
    first.subscribe(topic, 1)
    first.disconnect()
    again = clients(V5, client_id=cid, clean=False, session_expiry=60)
    assert again.session_present is False


def test_v5_queued_message_expires(clients, topic, session_cleanup):
    """MQTT-3.3.2-5: a queued message whose Message Expiry Interval passed is not delivered;
    a queued message without one is."""
    cid = unique_id()
    session_cleanup(V5, cid)
    first = clients(V5, client_id=cid, clean=False, session_expiry=300)
    first.subscribe(topic, 1)
    first.disconnect()
    pub = clients(V5)
    pub.publish(topic, b"short-lived", qos=1, properties=props(MessageExpiryInterval=1))
    pub.publish(topic, b"lasting", qos=1)
    time.sleep(2.2)
    again = clients(V5, client_id=cid, clean=False, session_expiry=300)
    assert again.session_present is True
    again.wait_for(lambda m: m.payload == b"lasting", "lasting")
    time.sleep(SETTLE)
    assert [m.payload for m in again.received(topic)] == [b"lasting"]
