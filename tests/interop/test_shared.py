"""Shared subscriptions ($share/{group}/{filter}): each message goes to one member of the group.

Shared subscriptions are MQTT 5.0. They are tested from 3.1.1 clients as well: 3.1.1 does not
define them, but brokers commonly offer them to 3.1.1 clients too, and Bulwark is expected to.
"""

from __future__ import annotations

import time
import uuid

import pytest

from helpers import SETTLE, V311, V5, MosqSub, both_versions

N = 30


def group_name() -> str:
    return "g" + uuid.uuid4().hex[:8]


@both_versions
@pytest.mark.parametrize("qos", [0, 1], ids=["qos0", "qos1"])
def test_shared_subscription_splits_messages(clients, topic, version, qos):
    group = group_name()
    members = [clients(version), clients(version)]
    for m in members:
        m.subscribe(f"$share/{group}/{topic}", 1)
    # Control: a plain subscriber of the same topic gets every message.
    plain = clients(version)
    plain.subscribe(topic, 1)
    pub = clients(version)
    sent = [f"s{i}".encode() for i in range(N)]
    for p in sent:
        pub.publish(topic, p, qos=qos)

    assert [m.payload for m in plain.wait_messages(N, topic)] == sent
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and sum(len(m.received(topic)) for m in members) < N:
        time.sleep(0.05)
    time.sleep(SETTLE)  # room for duplicates to show up
    a = [m.payload for m in members[0].received(topic)]
    b = [m.payload for m in members[1].received(topic)]
    assert len(a) == len(set(a)) and len(b) == len(set(b)), "a member got a message twice"
    assert not set(a) & set(b), f"both members got {sorted(set(a) & set(b))}"
    assert sorted(a + b) == sorted(sent)


def test_shared_subscription_mixed_versions(clients, topic):
    """A 3.1.1 member and a 5.0 member in one group, with a mosquitto_sub member besides."""
    group = group_name()
    filt = f"$share/{group}/{topic}"
    members = [clients(V311), clients(V5)]
    for m in members:
        m.subscribe(filt, 1)
    cli = MosqSub(V5, filt, qos=1, count=N, wait_s=2)
    cli.wait_subscribed()
    pub = clients(V5)
    sent = [f"m{i}".encode() for i in range(N)]
    for p in sent:
        pub.publish(topic, p, qos=1)
    _, cli_msgs = cli.result()  # exits after -W 2 unless it got all N
    deadline = time.monotonic() + 5
    while (
        time.monotonic() < deadline
        and sum(len(m.received(topic)) for m in members) + len(cli_msgs) < N
    ):
        time.sleep(0.05)
    time.sleep(SETTLE)
    parts = [[m.payload for m in c.received(topic)] for c in members]
    parts.append([m.payload for m in cli_msgs])
    union = [p for part in parts for p in part]
    assert sorted(union) == sorted(sent), (parts, cli.output())
