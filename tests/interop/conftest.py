"""Fixtures for the interoperability suite: see README.md beside this file."""

from __future__ import annotations

import socket

import pytest

from helpers import HOST, PORT, TIMEOUT, V311, Client, unique_topic

def pytest_report_header(config):
    return f"broker under test: {HOST}:{PORT}"


@pytest.fixture(scope="session", autouse=True)
def broker_reachable():
    """Fail fast, and clearly, when nothing listens where MQTT_HOST / MQTT_PORT point."""
    try:
        socket.create_connection((HOST, PORT), timeout=TIMEOUT).close()
    except OSError as e:
        pytest.exit(f"no broker accepts TCP on {HOST}:{PORT}: {e}", returncode=3)


@pytest.fixture
def topic() -> str:
    """A topic no other test uses."""
    return unique_topic()


@pytest.fixture
def clients():
    """Factory for connected paho clients, all closed at teardown.

    ``clients(version, **kwargs)`` builds a ``helpers.Client`` and connects it;
    ``clients.new(version, **kwargs)`` builds one without connecting it.
    """
    made: list[Client] = []

    class Factory:
        def new(self, version, **kwargs) -> Client:
            c = Client(version, **kwargs)
            made.append(c)
            return c

        def __call__(self, version, **kwargs) -> Client:
            return self.new(version, **kwargs).connect()

    yield Factory()
    for c in made:
        c.close()


@pytest.fixture
def retained_cleanup():
    """Register topics whose retained message is deleted after the test."""
    topics: list[str] = []
    yield topics.append
    if topics:
        c = Client(V311).connect()
        try:
            for t in topics:
                c.publish(t, b"", qos=1, retain=True)
        finally:
            c.close()


@pytest.fixture
def session_cleanup():
    """Register (version, client id) pairs whose persistent session is ended after the test."""
    ids: list[tuple[int, str]] = []
    yield lambda version, cid: ids.append((version, cid))
    for version, cid in ids:
        try:
            c = Client(version, client_id=cid, clean=True, session_expiry=0).connect()
            c.disconnect()
        except Exception:
            pass
