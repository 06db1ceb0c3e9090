"""MQTT over WebSocket (ws and wss) with paho-mqtt's websockets transport.

run.sh exports MQTT_WS_PORT and MQTT_WSS_PORT (and MQTT_CA) when it tests Bulwark; without them
(BROKER=mosquitto) the tests are skipped.
"""

from __future__ import annotations

import os
import ssl

import pytest

from helpers import Client, MosqSub, both_versions

WS_PORT = int(os.environ.get("MQTT_WS_PORT", "0"))
WSS_PORT = int(os.environ.get("MQTT_WSS_PORT", "0"))
CA = os.environ.get("MQTT_CA", "")

pytestmark = pytest.mark.skipif(WS_PORT == 0, reason="no WebSocket listener (MQTT_WS_PORT unset)")


def ws_client(version: int, secure: bool) -> Client:
    if secure:
        return Client(
            version, port=WSS_PORT, transport="websockets",
            tls={"ca_certs": CA, "tls_version": ssl.PROTOCOL_TLS_CLIENT},
        )
    return Client(version, port=WS_PORT, transport="websockets")


@both_versions
@pytest.mark.parametrize("secure", [False, True], ids=["ws", "wss"])
def test_paho_over_websocket(topic, version, secure):
    """paho over ws/wss publishes to a paho subscriber over ws/wss and to mosquitto_sub over TCP."""
    tcp_sub = MosqSub(version, topic, qos=1)
    tcp_sub.wait_subscribed()
    sub = ws_client(version, secure).connect()
    pub = ws_client(version, secure).connect()
    try:
        sub.subscribe(topic, qos=1)
        payload = bytes(range(256)) * 8  # 2 KiB, every byte value: binary frames
        pub.publish(topic, payload, qos=1)
        assert sub.wait_messages(1, topic)[0].payload == payload
    finally:
        sub.close()
        pub.close()
    rc, msgs = tcp_sub.result()
    assert rc == 0, tcp_sub.output()
    assert [m.payload for m in msgs] == [payload]
