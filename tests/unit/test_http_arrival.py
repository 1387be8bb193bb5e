"""The HTTP edge's bound on bytes still arriving: httptools keeps a header line's pieces until the
line ends, so a line that never ends must be cut off by what arrives, not by what was parsed.

Drives the connection protocol directly (no socket): each ``data_received`` is one read."""

from __future__ import annotations

import asyncio

import pytest

from authz import http_request, http_server


class _Edge:
    """The server side a connection talks to: records what it was asked to check."""

    def __init__(self) -> None:
        self.connections: set[object] = set()
        self.draining = False
        self.max_connections = 0
        self.checked: list[http_request.HttpCheck | None] = []

    async def check(self, message: http_request.HttpCheck | None) -> bytes:
        self.checked.append(message)
        return b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n"


class _Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def get_extra_info(self, name: str) -> None:
        return None

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closed = True


def _connection() -> tuple[_Edge, _Transport, http_server._Connection]:
    edge, transport = _Edge(), _Transport()
    connection = http_server._Connection(edge)  # type: ignore[arg-type]
    connection.connection_made(transport)
    return edge, transport, connection


@pytest.mark.parametrize(("piece", "bound"), [(4096, "bytes"), (1, "reads")])
async def test_an_endless_header_line_is_refused_at_the_bound(piece: int, bound: str) -> None:
    edge, transport, connection = _connection()
    connection.data_received(b"GET / HTTP/1.1\r\nhost: a.test\r\nx-endless: ")
    reads, most = 0, 2 * min(http_server.MAX_ARRIVING_READS, http_server.MAX_ARRIVING_BYTES // piece + 1)
    while not edge.checked and reads < most:
        connection.data_received(b"a" * piece)
        reads += 1
    await asyncio.sleep(0)
    [refused] = edge.checked
    assert refused is not None and refused.too_large  # answered request_headers_too_large
    if bound == "bytes":
        assert (reads - 1) * piece <= http_server.MAX_ARRIVING_BYTES < reads * piece
    else:
        assert reads == http_server.MAX_ARRIVING_READS + 1
    assert transport.written and transport.closed  # the answer, then the connection closes
    connection.data_received(b"a\r\n\r\n")  # nothing after it is read
    assert len(edge.checked) == 1


async def test_whole_requests_in_many_reads_and_pipelined_ones_are_not_cut_off() -> None:
    edge, transport, connection = _connection()
    big = b"GET / HTTP/1.1\r\nhost: a.test\r\nx-big: " + b"v" * 60_000 + b"\r\n\r\n"
    for start in range(0, len(big), 1000):  # 61 reads, within both bounds
        connection.data_received(big[start : start + 1000])
    small = b"GET / HTTP/1.1\r\nhost: a.test\r\n\r\n"
    connection.data_received(small * 50)  # many whole requests in one read
    await asyncio.sleep(0)
    assert len(edge.checked) == 51 and not any(m is None or m.too_large for m in edge.checked)
    assert not transport.closed
