"""Shared helpers for the interoperability suite.

Everything here is bounded in time: every wait takes a deadline (``TIMEOUT`` seconds unless told
otherwise) and fails the test with what *was* seen when the deadline passes.

Three kinds of client are used against the broker:

* ``Client``: a thin wrapper over paho-mqtt 2.x (``CallbackAPIVersion.VERSION2``) with its own
  network-loop thread (no automatic reconnect, so a dropped connection is never hidden);
* ``mosquitto_pub`` / ``mosquitto_sub`` (``MosqSub``), the Eclipse Mosquitto command-line clients;
* ``RawClient``: a few hand-encoded packets on a plain socket, for when the test needs exact control
  of what goes on the wire (a CONNECT with a Will followed by closing the socket, say).
"""

from __future__ import annotations

import os
import queue
import socket
import struct
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Iterable

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

HOST = os.environ.get("MQTT_HOST", "127.0.0.1")
PORT = int(os.environ.get("MQTT_PORT", "1883"))
# Longest wait for something that must happen (a CONNACK, a message, a SUBACK).
TIMEOUT = float(os.environ.get("MQTT_TIMEOUT", "5"))
# How long to keep listening for something that must NOT happen, after a positive marker.
SETTLE = float(os.environ.get("MQTT_SETTLE", "0.5"))

V311 = paho.MQTTv311
V5 = paho.MQTTv5
VERSION_NAMES = {V311: "3.1.1", V5: "5.0"}
CLI_VERSION = {V311: "mqttv311", V5: "mqttv5"}

# Parametrizes a test over both protocol versions.
both_versions = pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])


def unique_id() -> str:
    """A client identifier a 3.1.1 server must accept: 1 to 23 characters of [0-9a-zA-Z]."""
    return "bw" + uuid.uuid4().hex[:20]


def unique_topic(name: str = "t") -> str:
    return f"bwinterop/{uuid.uuid4().hex[:16]}/{name}"


def payload_all_bytes() -> bytes:
    """Every byte value, twice over in different orders: catches any text or NUL handling."""
    return bytes(range(256)) + bytes(reversed(range(256)))


# --------------------------------------------------------------------------------------------
# paho-based client
# --------------------------------------------------------------------------------------------


@dataclass
class Msg:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    props: dict = field(default_factory=dict)
    user_props: list = field(default_factory=list)
    received_at: float = 0.0


def _props_of(message) -> tuple[dict, list]:
    props: dict = {}
    user: list = []
    p = getattr(message, "properties", None)
    if p is None:
        return props, user
    for name in (
        "PayloadFormatIndicator",
        "ContentType",
        "ResponseTopic",
        "CorrelationData",
        "MessageExpiryInterval",
        "TopicAlias",
        "SubscriptionIdentifier",
    ):
        if hasattr(p, name):
            props[name] = getattr(p, name)
    if hasattr(p, "UserProperty"):
        user = [tuple(kv) for kv in p.UserProperty]
    return props, user


class Client:
    """A connected paho client that records every message it receives."""

    def __init__(
        self,
        version: int,
        client_id: str | None = None,
        *,
        clean: bool = True,
        session_expiry: int | None = None,
        keepalive: int = 30,
        will: dict | None = None,
        connect_properties: Properties | None = None,
        port: int | None = None,
        tls: dict | None = None,
        transport: str = "tcp",
        ws_path: str = "/mqtt",
        username: str | None = None,
        password: str | bytes | None = None,
        bind_address: str = "",
    ):
        """``port`` defaults to MQTT_PORT; ``tls`` holds ``paho.Client.tls_set`` arguments;
        ``transport`` is "tcp" or "websockets" (then ``ws_path`` is the HTTP path)."""
        self.version = version
        self._port = PORT if port is None else port
        self.client_id = client_id or unique_id()
        self.clean = clean
        self._cond = threading.Condition()
        self.messages: list[Msg] = []
        self._subacks: dict[int, list] = {}
        self._unsubacks: dict[int, list] = {}
        self._pub_reasons: dict[int, int] = {}
        self.connack_rc: ReasonCode | None = None
        self.session_present: bool | None = None
        self.connack_props = None
        self.disconnected = threading.Event()
        self.disconnect_rc = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

        if version == V5:
            self._c = paho.Client(
                CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=V5,
                transport=transport,
            )
        else:
            self._c = paho.Client(
                CallbackAPIVersion.VERSION2,
                client_id=self.client_id,
                protocol=version,
                clean_session=clean,
                transport=transport,
            )
        if transport == "websockets":
            self._c.ws_set_options(path=ws_path)
        if tls is not None:
            self._c.tls_set(**tls)
        if username is not None:
            self._c.username_pw_set(username, password)
        self._c.on_connect = self._on_connect
        self._c.on_message = self._on_message
        self._c.on_subscribe = self._on_subscribe
        self._c.on_unsubscribe = self._on_unsubscribe
        self._c.on_publish = self._on_publish
        self._c.on_disconnect = self._on_disconnect
        if will is not None:
            self._c.will_set(**will)
        self._keepalive = keepalive
        self._bind_address = bind_address
        self._session_expiry = session_expiry
        self._connect_properties = connect_properties
        self._connected = threading.Event()

    # ---- callbacks (paho's network thread) ----
    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.connack_rc = reason_code
        self.session_present = bool(flags.session_present)
        self.connack_props = properties
        self._connected.set()

    def _on_message(self, client, userdata, message):
        props, user = _props_of(message)
        m = Msg(
            topic=message.topic,
            payload=bytes(message.payload),
            qos=message.qos,
            retain=bool(message.retain),
            props=props,
            user_props=user,
            received_at=time.monotonic(),
        )
        with self._cond:
            self.messages.append(m)
            self._cond.notify_all()

    def _on_subscribe(self, client, userdata, mid, reason_code_list, properties):
        with self._cond:
            self._subacks[mid] = [rc.value for rc in reason_code_list]
            self._cond.notify_all()

    def _on_unsubscribe(self, client, userdata, mid, reason_code_list, properties):
        with self._cond:
            self._unsubacks[mid] = [rc.value for rc in reason_code_list]
            self._cond.notify_all()

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        with self._cond:
            self._pub_reasons[mid] = reason_code.value
            self._cond.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.disconnect_rc = reason_code
        self.disconnected.set()

    # ---- network loop ----
    def _loop(self):
        while not self._stop.is_set():
            rc = self._c.loop(timeout=0.05)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
        self.disconnected.set()

    # ---- operations ----
    def connect(self, expect_success: bool = True) -> "Client":
        kwargs = {}
        if self.version == V5:
            props = self._connect_properties or Properties(PacketTypes.CONNECT)
            if self._session_expiry is not None:
                props.SessionExpiryInterval = self._session_expiry
            kwargs["clean_start"] = self.clean
            kwargs["properties"] = props
        self._c.connect_timeout = TIMEOUT
        self._c.connect(
            HOST, self._port, keepalive=self._keepalive, bind_address=self._bind_address, **kwargs
        )
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        if not self._connected.wait(TIMEOUT):
            self.close()
            raise AssertionError(f"{self.client_id}: no CONNACK within {TIMEOUT}s")
        if expect_success:
            assert not self.connack_rc.is_failure, f"CONNACK refused: {self.connack_rc}"
        return self

    def _wait_ack(self, table: dict, mid: int, what: str) -> list:
        deadline = time.monotonic() + TIMEOUT
        with self._cond:
            while mid not in table:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self.client_id}: no {what} for mid {mid} in {TIMEOUT}s")
                self._cond.wait(left)
            return table.pop(mid)

    def subscribe(
        self,
        topic: str,
        qos: int = 0,
        *,
        no_local: bool = False,
        retain_as_published: bool = False,
        retain_handling: int = 0,
        properties: Properties | None = None,
        expect_granted: int | None = None,
    ) -> int:
        """SUBSCRIBE and wait for the SUBACK; returns the granted QoS (asserted not a failure)."""
        if self.version == V5:
            opts = SubscribeOptions(
                qos=qos,
                noLocal=no_local,
                retainAsPublished=retain_as_published,
                retainHandling=retain_handling,
            )
            rc, mid = self._c.subscribe(topic, options=opts, properties=properties)
        else:
            rc, mid = self._c.subscribe(topic, qos)
        assert rc == MQTTErrorCode.MQTT_ERR_SUCCESS, f"subscribe not sent: {rc}"
        granted = self._wait_ack(self._subacks, mid, "SUBACK")
        assert len(granted) == 1, granted
        assert granted[0] < 0x80, f"subscription to {topic!r} refused: 0x{granted[0]:02x}"
        if expect_granted is not None:
            assert granted[0] == expect_granted, (topic, granted)
        return granted[0]

    def subscribe_code(self, topic: str, qos: int = 1) -> int:
        """SUBSCRIBE and return the SUBACK's code for the filter, refusals included."""
        if self.version == V5:
            rc, mid = self._c.subscribe(topic, options=SubscribeOptions(qos=qos))
        else:
            rc, mid = self._c.subscribe(topic, qos)
        assert rc == MQTTErrorCode.MQTT_ERR_SUCCESS, f"subscribe not sent: {rc}"
        (code,) = self._wait_ack(self._subacks, mid, "SUBACK")
        return code

    def publish_code(self, topic: str, payload: bytes | str = b"", qos: int = 1) -> int:
        """PUBLISH at QoS 1 or 2 and return the acknowledgement's reason code (always 0 for
        3.1.1, which has none)."""
        info = self._c.publish(topic, payload, qos=qos)
        assert info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS, f"publish not sent: {info.rc}"
        info.wait_for_publish(TIMEOUT)
        assert info.is_published(), f"{self.client_id}: publish to {topic!r} not acknowledged"
        with self._cond:
            return self._pub_reasons.pop(info.mid, 0)

    def unsubscribe(self, topic: str) -> None:
        rc, mid = self._c.unsubscribe(topic)
        assert rc == MQTTErrorCode.MQTT_ERR_SUCCESS, f"unsubscribe not sent: {rc}"
        codes = self._wait_ack(self._unsubacks, mid, "UNSUBACK")
        if self.version == V5:
            assert codes and codes[0] < 0x80, f"unsubscribe refused: {codes}"

    def publish(
        self,
        topic: str,
        payload: bytes | str = b"",
        qos: int = 0,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> None:
        """PUBLISH and wait until the QoS flow completes (sent for 0, PUBACK / PUBCOMP else)."""
        info = self._c.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        assert info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS, f"publish not sent: {info.rc}"
        info.wait_for_publish(TIMEOUT)
        assert info.is_published(), f"{self.client_id}: publish to {topic!r} not acknowledged"
        if qos > 0 and self.version == V5:
            with self._cond:
                code = self._pub_reasons.pop(info.mid, 0)
            assert code < 0x80, f"publish to {topic!r} refused: 0x{code:02x}"

    def wait_messages(
        self, n: int, topic: str | None = None, timeout: float | None = None
    ) -> list[Msg]:
        """Wait until at least n messages (on `topic`, if given) arrived; return them all."""
        timeout = TIMEOUT if timeout is None else timeout
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                got = self._matching(topic)
                if len(got) >= n:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"{self.client_id}: expected {n} message(s) on {topic or 'any topic'} "
                        f"within {timeout}s, got {len(got)}: {got!r}"
                    )
                self._cond.wait(left)

    def wait_for(self, pred: Callable[[Msg], bool], what: str, timeout: float | None = None) -> Msg:
        timeout = TIMEOUT if timeout is None else timeout
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for m in self.messages:
                    if pred(m):
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"{self.client_id}: no message {what} within {timeout}s; got {self.messages!r}"
                    )
                self._cond.wait(left)

    def _matching(self, topic: str | None) -> list[Msg]:
        return [m for m in self.messages if topic is None or m.topic == topic]

    def received(self, topic: str | None = None) -> list[Msg]:
        with self._cond:
            return list(self._matching(topic))

    def disconnect(self, reason: ReasonCode | None = None, properties: Properties | None = None):
        """Send DISCONNECT (optionally with a 5.0 reason code) and wait for the loop to end."""
        if reason is not None or properties is not None:
            self._c.disconnect(reasoncode=reason, properties=properties)
        else:
            self._c.disconnect()
        self.disconnected.wait(TIMEOUT)
        self._stop_loop()

    def abort(self) -> None:
        """Close the TCP connection without a DISCONNECT packet (a network failure to the server)."""
        self._stop_loop()
        sock = self._c.socket()
        assert sock is not None, "not connected"
        sock.close()

    def _stop_loop(self):
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(TIMEOUT)

    def close(self) -> None:
        """Best-effort teardown, used by fixtures."""
        try:
            if not self._stop.is_set() and self._connected.is_set():
                self._c.disconnect()
                self.disconnected.wait(1)
        except Exception:
            pass
        self._stop_loop()
        try:
            sock = self._c.socket()
            if sock is not None:
                sock.close()
        except Exception:
            pass


def props(packet_type: int = PacketTypes.PUBLISH, **values) -> Properties:
    p = Properties(packet_type)
    for k, v in values.items():
        setattr(p, k, v)
    return p


def disconnect_reason(code: int) -> ReasonCode:
    return ReasonCode(PacketTypes.DISCONNECT, identifier=code)


# --------------------------------------------------------------------------------------------
# Raw MQTT over a socket
# --------------------------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        if n:
            b |= 0x80
        out.append(b)
        if not n:
            return bytes(out)


def _str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


class RawClient:
    """Hand-encoded CONNECT (with an optional Will) and DISCONNECT on a plain TCP socket."""

    def __init__(self, version: int):
        self.version = version
        self.sock = socket.create_connection((HOST, PORT), timeout=TIMEOUT)

    def connect(
        self,
        client_id: str,
        *,
        will_topic: str | None = None,
        will_payload: bytes = b"",
        will_qos: int = 0,
        will_retain: bool = False,
        keepalive: int = 30,
    ) -> int:
        """Send CONNECT (clean session / clean start) and return the CONNACK return/reason code."""
        flags = 0x02
        if will_topic is not None:
            flags |= 0x04 | (will_qos << 3) | (0x20 if will_retain else 0)
        level = 5 if self.version == V5 else 4
        var = _str("MQTT") + bytes([level, flags]) + struct.pack("!H", keepalive)
        if self.version == V5:
            var += _varint(0)  # no CONNECT properties
        body = _str(client_id)
        if will_topic is not None:
            if self.version == V5:
                body += _varint(0)  # no Will properties
            body += _str(will_topic) + _str(will_payload)
        packet_body = var + body
        self.sock.sendall(bytes([0x10]) + _varint(len(packet_body)) + packet_body)
        ptype, data = self.read_packet()
        assert ptype >> 4 == 2, f"expected CONNACK, got packet type {ptype >> 4}"
        return data[1]

    def read_packet(self) -> tuple[int, bytes]:
        first = self._read_exact(1)[0]
        mult, length = 1, 0
        for _ in range(4):
            b = self._read_exact(1)[0]
            length += (b & 0x7F) * mult
            mult *= 128
            if not b & 0x80:
                break
        return first, self._read_exact(length)

    def _read_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("connection closed by the server")
            buf += chunk
        return buf

    def disconnect(self, reason: int | None = None) -> None:
        """Send DISCONNECT (5.0: with a reason code) and wait, bounded, for the server to close."""
        if reason is None:
            self.sock.sendall(b"\xe0\x00")
        else:
            # Remaining Length 1: the Reason Code alone, no Properties (MQTT 5.0 3.14.2.2).
            self.sock.sendall(bytes([0xE0, 0x01, reason]))
        self.sock.settimeout(TIMEOUT)
        try:
            while self.sock.recv(1024):
                pass
        except OSError:
            pass
        self.sock.close()

    def drop(self) -> None:
        """Close the socket without DISCONNECT."""
        self.sock.close()


# --------------------------------------------------------------------------------------------
# mosquitto_pub / mosquitto_sub
# --------------------------------------------------------------------------------------------


def mosquitto_pub(
    version: int, topic: str, *args: str, timeout: float = 10, port: int | None = None
) -> None:
    cmd = [
        "mosquitto_pub", "-h", HOST, "-p", str(PORT if port is None else port),
        "-V", CLI_VERSION[version], "-i", unique_id(), "-t", topic, *args,
    ]
    r = subprocess.run(cmd, capture_output=True, timeout=timeout)
    assert r.returncode == 0, f"{cmd} failed ({r.returncode}): {r.stdout!r} {r.stderr!r}"


@dataclass
class CliMsg:
    topic: str
    qos: int
    retain: bool
    payload: bytes
    extra: list


class MosqSub:
    """mosquitto_sub in the background, in debug mode so that its SUBACK can be awaited.

    Every received message is printed as one line: ``MSG|topic|qos|retain|hexpayload|extra...``
    where the extra fields are the `extra_format` given (mosquitto_sub -F placeholders).
    """

    SEP = "\x1f"

    def __init__(
        self,
        version: int,
        topic: str,
        *,
        qos: int = 0,
        count: int = 1,
        wait_s: int = 5,
        extra_format: Iterable[str] = (),
        client_id: str | None = None,
        args: Iterable[str] = (),
        port: int | None = None,
    ):
        fmt = self.SEP.join(["MSG", "%t", "%q", "%r", "%x", *extra_format])
        # stdbuf: mosquitto_sub does not flush stdout when it is a pipe, and the SUBACK line is
        # needed as soon as it is printed.
        self.cmd = [
            "stdbuf", "-oL", "mosquitto_sub", "-h", HOST, "-p", str(PORT if port is None else port),
            "-V", CLI_VERSION[version],
            "-i", client_id or unique_id(), "-t", topic, "-q", str(qos), "-C", str(count),
            "-W", str(wait_s), "-d", "-F", fmt, *args,
        ]
        self.proc = subprocess.Popen(
            self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        self.lines: "queue.Queue[bytes | None]" = queue.Queue()
        self.all_lines: list[bytes] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._wall = wait_s + 5

    def _read(self):
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _next_line(self, deadline: float) -> bytes | None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise queue.Empty
        line = self.lines.get(timeout=left)
        if line is not None:
            self.all_lines.append(line)
        return line

    def wait_subscribed(self) -> None:
        deadline = time.monotonic() + TIMEOUT
        try:
            while True:
                line = self._next_line(deadline)
                if line is None:
                    raise AssertionError(f"mosquitto_sub exited before SUBACK: {self.output()}")
                if b"received SUBACK" in line:
                    return
        except queue.Empty:
            self.kill()
            raise AssertionError(f"mosquitto_sub: no SUBACK in {TIMEOUT}s: {self.output()}")

    def result(self) -> tuple[int, list[CliMsg]]:
        """Wait (bounded) for mosquitto_sub to exit; return its exit code and messages."""
        try:
            rc = self.proc.wait(timeout=self._wall)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"mosquitto_sub did not exit: {self.output()}")
        self._reader.join(TIMEOUT)
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.all_lines.append(line)
        msgs = []
        for line in self.all_lines:
            line = line.rstrip(b"\n")
            if not line.startswith(b"MSG" + self.SEP.encode()):
                continue
            parts = line.decode("utf-8", "replace").split(self.SEP)
            msgs.append(
                CliMsg(
                    topic=parts[1],
                    qos=int(parts[2]),
                    retain=parts[3] == "1",
                    payload=bytes.fromhex(parts[4]),
                    extra=parts[5:],
                )
            )
        return rc, msgs

    def output(self) -> str:
        return b"".join(self.all_lines).decode("utf-8", "replace")

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(TIMEOUT)
