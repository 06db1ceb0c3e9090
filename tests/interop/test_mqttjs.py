"""MQTT.js, the JavaScript client used in browsers (run here under Node.js), over ws://, wss:// and
mqtt:// (TCP), against paho-mqtt and against itself.

The client is mqttjs/client.mjs (its header documents the arguments and the JSON lines it prints);
the ``mqtt`` package is pinned in mqttjs/package.json and installed by run.sh (``npm ci``). The
tests are skipped when there is no WebSocket listener (MQTT_WS_PORT unset: BROKER=mosquitto) or no
``node`` on PATH.
"""

from __future__ import annotations

import json
import math
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from helpers import HOST, PORT, TIMEOUT, V5, V311, both_versions, payload_all_bytes, unique_id

WS_PORT = int(os.environ.get("MQTT_WS_PORT", "0"))
WSS_PORT = int(os.environ.get("MQTT_WSS_PORT", "0"))
CA = os.environ.get("MQTT_CA", "")

MQTTJS_DIR = Path(__file__).resolve().parent / "mqttjs"
CLIENT = MQTTJS_DIR / "client.mjs"
NODE = shutil.which("node")

# client.mjs's own bound on a whole run (whole seconds), and ours on the process around it.
JS_TIMEOUT = max(1, math.ceil(TIMEOUT))
PROC_TIMEOUT = JS_TIMEOUT + 5
EXIT_ERROR = 2  # client.mjs: an error (3 would be its own timeout)

pytestmark = [
    pytest.mark.skipif(WS_PORT == 0, reason="no WebSocket listener (MQTT_WS_PORT unset)"),
    pytest.mark.skipif(NODE is None, reason="node (Node.js) not found on PATH"),
]


@pytest.fixture(scope="module", autouse=True)
def mqttjs_installed():
    """Not a skip: with node present, a missing install is a broken setup, not an absent client."""
    if not (MQTTJS_DIR / "node_modules" / "mqtt" / "package.json").is_file():
        pytest.fail(
            f"MQTT.js is not installed in {MQTTJS_DIR}: run `npm ci` there (run.sh does)",
            pytrace=False,
        )


def ws_url(path: str = "/mqtt") -> str:
    return f"ws://{HOST}:{WS_PORT}{path}"


def wss_url() -> str:
    return f"wss://{HOST}:{WSS_PORT}/mqtt"


def tcp_url() -> str:
    return f"mqtt://{HOST}:{PORT}"


def _args(mode: str, url: str, topics: str | list[str], qos: int | list[int], version: int,
          count: int, ca: str | None, payload: bytes | None) -> list[str]:
    """client.mjs's command line; several topics / QoS values go to it as lists (see its header)."""
    topics = [topics] if isinstance(topics, str) else topics
    qos_list = [qos] if isinstance(qos, int) else qos
    args = [NODE or "node", str(CLIENT), mode, "--url", url]
    for t in topics:
        args += ["--topic", t]
    args += [
        "--qos", ",".join(str(q) for q in qos_list), "--version", str(version),
        "--count", str(count), "--timeout", str(JS_TIMEOUT), "--client-id", unique_id(),
    ]
    if ca is not None:
        args += ["--ca", ca]
    if payload is not None:
        args += ["--payload-hex", payload.hex()]
    return args


def _events(stdout: str) -> list[dict]:
    events = []
    for line in stdout.splitlines():
        if line.strip():
            events.append(json.loads(line))
    return events


class JsResult:
    def __init__(self, rc: int, events: list[dict], stderr: str, elapsed: float):
        self.rc = rc
        self.events = events
        self.stderr = stderr
        self.elapsed = elapsed

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e.get("event") == kind]

    def describe(self) -> str:
        return (
            f"exit {self.rc} after {self.elapsed:.1f}s, events {self.events!r}, "
            f"stderr {self.stderr!r}"
        )


def js_pub(url: str, topic: str | list[str], *, qos: int | list[int] = 0, version: int = V311,
           count: int = 1, ca: str | None = None, payload: bytes | None = None,
           expect_ok: bool = True) -> JsResult:
    """Run client.mjs pub to the end (bounded); by default assert it published all `count`."""
    start = time.monotonic()
    try:
        r = subprocess.run(
            _args("pub", url, topic, qos, version, count, ca, payload),
            capture_output=True, text=True, timeout=PROC_TIMEOUT,
        )
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"MQTT.js publisher still running after {PROC_TIMEOUT}s: {e}") from e
    res = JsResult(r.returncode, _events(r.stdout), r.stderr, time.monotonic() - start)
    if expect_ok:
        assert res.rc == 0, f"MQTT.js publisher failed: {res.describe()}"
        assert len(res.of("published")) == count, res.describe()
    return res


class JsSub:
    """client.mjs sub in the background: wait for its SUBACK, then for it to exit."""

    def __init__(self, url: str, topic: str | list[str], *, qos: int | list[int] = 0,
                 version: int = V311, count: int = 1, ca: str | None = None):
        self._start = time.monotonic()
        self.proc = subprocess.Popen(
            _args("sub", url, topic, qos, version, count, ca, None),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self._lines: "queue.Queue[str | None]" = queue.Queue()
        self.events: list[dict] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _take(self, line: str) -> dict:
        event = json.loads(line)
        self.events.append(event)
        return event

    def wait_subscribed(self) -> None:
        deadline = time.monotonic() + PROC_TIMEOUT
        while True:
            left = deadline - time.monotonic()
            try:
                line = self._lines.get(timeout=max(left, 0.001))
            except queue.Empty:
                self.kill()
                raise AssertionError(
                    f"MQTT.js subscriber: no SUBACK in {PROC_TIMEOUT}s: {self.events!r}"
                ) from None
            if line is None:
                res = self.result()
                raise AssertionError(f"MQTT.js subscriber exited before SUBACK: {res.describe()}")
            if line.strip() and self._take(line).get("event") == "subscribed":
                return

    def result(self) -> JsResult:
        try:
            rc = self.proc.wait(timeout=PROC_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"MQTT.js subscriber still running after {PROC_TIMEOUT}s: {self.events!r}"
            ) from None
        self._reader.join(TIMEOUT)
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            if line is not None and line.strip():
                self._take(line)
        assert self.proc.stderr is not None
        stderr = self.proc.stderr.read()
        return JsResult(rc, list(self.events), stderr, time.monotonic() - self._start)

    def messages(self) -> list[dict]:
        """Exit status 0 asserted; the messages received, payloads as bytes."""
        res = self.result()
        assert res.rc == 0, f"MQTT.js subscriber failed: {res.describe()}"
        msgs = res.of("message")
        for m in msgs:
            m["payload"] = bytes.fromhex(m.pop("payload_hex"))
        return msgs

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(TIMEOUT)


@pytest.fixture
def js_subs():
    """Factory for background MQTT.js subscribers, all killed at teardown if still running."""
    made: list[JsSub] = []

    def make(*args, **kwargs) -> JsSub:
        s = JsSub(*args, **kwargs)
        made.append(s)
        return s

    yield make
    for s in made:
        s.kill()


# --------------------------------------------------------------------------------------------


def qos_topics(topic: str) -> list[str]:
    """One topic per QoS level under the test's topic: .../q0, .../q1, .../q2."""
    return [f"{topic}/q{q}" for q in (0, 1, 2)]


@both_versions
def test_mqttjs_ws_publishes_to_paho(clients, topic, version):
    """MQTT.js over ws:// publishes at QoS 0, 1 and 2 (two messages each, one topic per QoS); a
    paho subscriber over TCP (subscription QoS 2) gets each at the QoS it was sent with, in
    order, without the retain flag."""
    topics = qos_topics(topic)
    sub = clients(version)
    for t in topics:
        sub.subscribe(t, 2)
    # Message i goes to topics[i % 3] at QoS i % 3, with the payload "mqttjs-<i>".
    js_pub(ws_url(), topics, qos=[0, 1, 2], version=version, count=6)
    sub.wait_messages(6)
    for q, t in enumerate(topics):
        got = sub.received(t)
        assert [m.payload for m in got] == [f"mqttjs-{q}".encode(), f"mqttjs-{q + 3}".encode()], (
            f"QoS {q}: {got!r}"
        )
        assert [m.qos for m in got] == [q, q], f"QoS {q}: {got!r}"
        assert not any(m.retain for m in got), f"QoS {q}: {got!r}"


@both_versions
def test_mqttjs_ws_receives_from_paho(clients, js_subs, topic, version):
    """A paho publisher over TCP (QoS 2) reaches an MQTT.js subscriber over ws:// subscribed at
    QoS 0, 1 and 2 (one topic each): every message at its subscription's QoS, in order."""
    topics = qos_topics(topic)
    js = js_subs(ws_url(), topics, qos=[0, 1, 2], version=version, count=6)
    js.wait_subscribed()
    pub = clients(version)
    for n in range(2):
        for t in topics:
            pub.publish(t, f"paho-{n}".encode(), qos=2)
    msgs = js.messages()
    assert len(msgs) == 6, msgs
    for q, t in enumerate(topics):
        got = [m for m in msgs if m["topic"] == t]
        assert [m["payload"] for m in got] == [b"paho-0", b"paho-1"], f"QoS {q}: {got!r}"
        assert [m["qos"] for m in got] == [q, q], f"QoS {q}: {got!r}"
        assert not any(m["retain"] for m in got), f"QoS {q}: {got!r}"


def test_mqttjs_wss_with_ca(js_subs, topic):
    """MQTT.js over wss://, trusting only the suite's CA (rejectUnauthorized), round-trips a
    QoS 1 message between two MQTT.js clients (a 3.1.1 publisher, a 5.0 subscriber)."""
    assert WSS_PORT and CA, "MQTT_WSS_PORT and MQTT_CA are needed beside MQTT_WS_PORT"
    js = js_subs(wss_url(), topic, qos=1, version=V5, ca=CA)
    js.wait_subscribed()
    js_pub(wss_url(), topic, qos=1, version=V311, ca=CA, payload=b"over wss")
    (m,) = js.messages()
    assert (m["topic"], m["payload"], m["qos"]) == (topic, b"over wss", 1)


def test_mqttjs_wss_without_ca_is_refused(topic):
    """The control for the test above: without the CA, MQTT.js refuses the server's certificate
    (so that test really had it verified)."""
    assert WSS_PORT, "MQTT_WSS_PORT is needed beside MQTT_WS_PORT"
    res = js_pub(wss_url(), topic, expect_ok=False)
    assert res.rc == EXIT_ERROR, res.describe()
    assert "certificate" in res.stderr, res.describe()
    assert not res.of("connected"), res.describe()


def test_mqttjs_tcp_roundtrip(clients, js_subs, topic):
    """MQTT.js over mqtt:// (plain TCP) round-trips a QoS 2 message between two MQTT.js clients
    (a 5.0 publisher, a 3.1.1 subscriber); a paho subscriber sees it too."""
    witness = clients(V5)
    witness.subscribe(topic, 2)
    js = js_subs(tcp_url(), topic, qos=2, version=V311)
    js.wait_subscribed()
    js_pub(tcp_url(), topic, qos=2, version=V5, payload=b"over tcp")
    (m,) = js.messages()
    assert (m["topic"], m["payload"], m["qos"]) == (topic, b"over tcp", 2)
    (w,) = witness.wait_messages(1, topic)
    assert (w.payload, w.qos) == (b"over tcp", 2)


def test_mqttjs_binary_payload(clients, js_subs, topic):
    """Every byte value, published by MQTT.js (3.1.1) over ws://, arrives intact at an MQTT.js
    subscriber (5.0) over ws:// and at a paho subscriber over TCP; and so does the same from
    paho to MQTT.js."""
    payload = payload_all_bytes()
    sub = clients(V311)
    sub.subscribe(topic, 1)
    js = js_subs(ws_url(), topic, qos=1, version=V5, count=2)
    js.wait_subscribed()
    js_pub(ws_url(), topic, qos=1, version=V311, payload=payload)
    assert sub.wait_messages(1, topic)[0].payload == payload
    sub.publish(topic, payload[::-1], qos=1)
    msgs = js.messages()
    assert [m["payload"] for m in msgs] == [payload, payload[::-1]]


def test_mqttjs_wrong_ws_path_is_an_error(topic):
    """A WebSocket path the broker does not serve gives MQTT.js a connection error at once, not a
    hang until its own timeout."""
    res = js_pub(ws_url("/not-mqtt"), topic, expect_ok=False)
    assert res.rc == EXIT_ERROR, res.describe()
    assert res.stderr.startswith("mqttjs-client: error:"), res.describe()
    assert not res.of("connected"), res.describe()
    assert res.elapsed < JS_TIMEOUT, res.describe()
