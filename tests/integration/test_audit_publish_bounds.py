"""The witness publisher's bounds over real sockets: it may run inside the server that decides
Checks, so idle connections are closed and connections beyond the limit are refused, and a
proof is not computed over the whole log again for every request (tests/unit/test_merkle_and_notes.py)."""

from __future__ import annotations

import json
import pathlib
import socket
import time
import urllib.request
from collections.abc import Iterator

import pytest

from authz.audit import publish


@pytest.fixture
def publisher(tmp_path: pathlib.Path) -> Iterator[publish.LogPublisher]:
    served = publish.LogPublisher(tmp_path, "127.0.0.1", 0, max_connections=2, idle_seconds=0.5).start()
    yield served
    served.stop()


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes ``sock`` within ``seconds`` (it never sends anything on it)."""
    sock.settimeout(seconds)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def _checkpoints(port: int) -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/audit/v1/checkpoints", timeout=5) as answer:
        return json.loads(answer.read())  # type: ignore[no-any-return]


def test_a_connection_that_sends_nothing_is_closed(publisher: publish.LogPublisher) -> None:
    with _connect(publisher.port) as idle:
        started = time.monotonic()
        assert _closed_within(idle, 5)
        assert time.monotonic() - started < 3
    assert _checkpoints(publisher.port) == {"logs": []}


def test_connections_beyond_the_limit_are_closed_at_once(publisher: publish.LogPublisher) -> None:
    held = [_connect(publisher.port) for _ in range(2)]
    time.sleep(0.1)  # both accepted, each with its thread
    with _connect(publisher.port) as third:
        assert _closed_within(third, 0.3)  # well before the idle timeout (0.5 s)
    for sock in held:
        sock.close()
    deadline = time.monotonic() + 5
    while True:  # the threads notice their closed connections, and free their places
        try:
            assert _checkpoints(publisher.port) == {"logs": []}
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
