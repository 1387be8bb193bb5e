"""The HTTP ext_authz edge: Envoy's ``http_service`` checks over HTTP/1.1, on the same decision path.

Transport only, as :mod:`authz.service` is for gRPC: bytes are parsed by ``httptools`` (llhttp,
the parser of Node.js) in an ``asyncio.Protocol`` — no framework between the socket and the
Check, which is what makes this edge cheap (measured in docs/performance.md against uvicorn on
the same parser) — each complete request becomes an :class:`~authz.http_request.HttpCheck`, and
:func:`authz.checks.run` does the rest with the HTTP adapter and encoder.

- Bounded: headers and target past 64 KiB or 200 headers are dropped as they arrive and the
  check is refused (``request_headers_too_large``). httptools gathers a header line's pieces until
  the line ends, so the bytes arriving are bounded too: a request whose headers are still arriving
  after :data:`MAX_ARRIVING_BYTES` more bytes, or :data:`MAX_ARRIVING_READS` more reads, than its
  first read is refused the same way, at once, and its connection closed (an endless header line
  would otherwise be kept whole, and re-copied on every piece). A body (``with_request_body``) is counted,
  never kept; at most :data:`MAX_PIPELINED` checks wait per connection; a request still arriving
  after :attr:`HttpCheckServer.request_seconds` closes its connection (Envoy sends a whole check at
  once; only a client of the port that is not Envoy trickles one).
- A request llhttp cannot parse gets a 400 ``request_parse_error`` (recorded like any decision)
  and its connection is closed: the stream cannot be read on after it.
- Answers leave in request order (HTTP/1.1 pipelining), each as soon as the ones before it have.
  While the unsent answers are over the transport's high-water mark (a client that sends checks
  and does not read the answers), the connection is not read: neither checks nor answers pile up.
- A connection Envoy closes mid-check (its timeout) cancels the check: it is recorded as
  ``request_cancelled``, as over gRPC.
- Stop: listening ends at once, idle connections close, busy ones close after their last answer;
  checks in flight get ``grace`` seconds; then every connection closes.

Started by :func:`authz.server.serve` for ``--http-listen``. Guarded by
tests/integration/test_http_check.py and the security suites, which run in both modes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
import ssl
from typing import Any

import httptools

from authz import checks, http_request, http_response
from authz import request as request_model

__all__ = ["MAX_ARRIVING_BYTES", "MAX_ARRIVING_READS", "MAX_PIPELINED", "HttpCheckServer"]

_SWEEP_SECONDS = 1.0  # how often connections with a request still arriving are looked at
_LAST_ANSWERS_SECONDS = 0.1  # on stop, past the grace period: for answers just written to go out

_log = logging.getLogger(__name__)
MAX_PIPELINED = 64
# Bytes and reads one request's headers may take to arrive after its first read: twice the header
# bound (a request within it, with its line ends, never comes near), and far more reads than a
# request Envoy writes at once ever takes.
MAX_ARRIVING_BYTES = 2 * http_request.MAX_HEADER_BYTES
MAX_ARRIVING_READS = 256


class HttpCheckServer:
    """The listening socket and its connections; ``port`` is known after :meth:`start`."""

    def __init__(
        self,
        runtime: checks.Runtime,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        reuse_port: bool = False,
        max_connections: int = 0,
    ) -> None:
        self.runtime = runtime
        self.host, self.port = host, port
        self._ssl = ssl_context
        self._reuse_port = reuse_port
        self.max_connections = max_connections  # open at once; one more is closed unread (0: no limit)
        self._server: asyncio.Server | None = None
        self.connections: set[_Connection] = set()
        self.draining = False  # stopping: each connection closes once its answers are out
        self.request_seconds = 30.0  # a request must arrive whole within this (Envoy's take milliseconds)
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self),
            self.host,
            self.port,
            ssl=self._ssl,
            reuse_port=self._reuse_port or None,
            backlog=1024,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._sweeper = loop.create_task(self._sweep(), name="http-check-sweeper")
        return self.port

    async def _sweep(self, interval: float = _SWEEP_SECONDS) -> None:
        """Close connections whose request has been arriving for longer than ``request_seconds``:
        one timestamp per request on the hot path, and this look once a second."""
        while True:
            await asyncio.sleep(interval)
            limit = asyncio.get_running_loop().time() - self.request_seconds
            for connection in list(self.connections):
                if connection.started is not None and connection.started < limit:
                    _log.warning("an HTTP check request took over %.0f s to arrive: closing", self.request_seconds)
                    connection.close()

    async def stop(self, grace: float) -> None:
        """Stop listening, give checks in flight ``grace`` seconds, then close every connection;
        those whose peer has not read its last answers by the end of ``grace`` are dropped."""
        if self._server is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        if self._sweeper is not None:
            self._sweeper.cancel()
        self._server.close()
        self.draining = True
        for connection in list(self.connections):
            if not connection.pending:  # idle: close now, so Envoy opens its next one elsewhere
                connection.close()
        pending = [task for connection in self.connections for task, _ in connection.pending]
        if pending:
            await asyncio.wait(pending, timeout=grace)
        for connection in list(self.connections):
            connection.close()
        with contextlib.suppress(TimeoutError):
            # A closing connection first sends what it holds: at once, unless its peer does not read.
            async with asyncio.timeout_at(max(deadline, loop.time() + _LAST_ANSWERS_SECONDS)):
                await self._server.wait_closed()
        for connection in list(self.connections):
            connection.abort()
        await self._server.wait_closed()

    async def check(self, message: http_request.HttpCheck | None) -> bytes:
        runtime = self.runtime
        if message is None:
            return await checks.run(runtime, None, dict, http_response.encode, http_response.encode_failed, edge="http")
        strict = runtime.strict_paths

        def read() -> request_model.HttpRequest:
            return http_request.from_http_check(message, strict=strict)

        return await checks.run(
            runtime, read, message.trace_carrier, http_response.encode, http_response.encode_failed, edge="http"
        )


class _Connection(asyncio.Protocol):
    """One connection from Envoy: llhttp's callbacks build each check; answers go out in order."""

    def __init__(self, server: HttpCheckServer) -> None:
        self._server = server
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._closed: asyncio.Transport | None = None  # the transport once closing
        self._message = http_request.HttpCheck()
        self._broken = False  # the stream could not be parsed: answer what came before, then close
        self.started: float | None = None  # when the request now arriving began (loop time)
        self._in_headers = False  # the request now arriving has not finished its headers
        self._arrived = 0  # bytes of its headers that came after its first read
        self._reads = 0  # and the reads they took
        self.pending: collections.deque[tuple[asyncio.Task[bytes], bool]] = collections.deque()

    # asyncio.Protocol

    def connection_made(self, transport: Any) -> None:  # an asyncio.Transport (uvloop's is not a subclass)
        limit = self._server.max_connections
        if limit and len(self._server.connections) >= limit:
            self._broken = True  # nothing it sends is read; connection_lost finds it in no set
            transport.abort()
            return
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self._transport = None
        for task, _ in self.pending:
            task.cancel()  # Envoy gave up on these checks (its timeout): recorded as cancelled

    def pause_writing(self) -> None:
        # Answers are not being read: stop reading checks until they are (resume_writing).
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None:
            self._transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self._broken:
            return
        arriving = self._message if self._in_headers else None
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            # Headers that ask for an upgrade (a WebSocket client's) are part of the request being
            # checked, not a protocol switch on this connection: go on with a fresh parser.
            self._parser = httptools.HttpRequestParser(self)
            rest = data[upgrade.args[0] :] if upgrade.args else b""
            if rest:
                self.data_received(rest)
        except httptools.HttpParserError as error:
            _log.warning("an HTTP check request could not be parsed: %s", error)
            self._broken = True
            self._dispatch(None, keep_alive=False)
            return
        if self._in_headers and self._message is arriving:  # the same request, its headers not done
            self._arrived += len(data)
            self._reads += 1
            if self._arrived > MAX_ARRIVING_BYTES or self._reads > MAX_ARRIVING_READS:
                _log.warning("an HTTP check request's headers went on past the bound: refused")
                self._message.too_large = True
                self._broken = True
                self._dispatch(self._message, keep_alive=False)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._closed, self._transport = self._transport, None

    def abort(self) -> None:
        """Close at once, dropping unsent answers (a peer that does not read them)."""
        transport = self._transport or self._closed
        if transport is not None:
            transport.abort()

    # httptools callbacks (llhttp): one HttpCheck per message

    def on_message_begin(self) -> None:
        self._message = http_request.HttpCheck()
        self.started = asyncio.get_running_loop().time()
        self._in_headers = True
        self._arrived = self._reads = 0

    def on_url(self, url: bytes) -> None:
        self._message.add_target(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._message.add_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._message.method = self._parser.get_method()

    def on_body(self, body: bytes) -> None:
        self._message.body_bytes += len(body)

    def on_message_complete(self) -> None:
        self.started = None
        self._dispatch(self._message, keep_alive=self._parser.should_keep_alive())

    # answers, in request order

    def _dispatch(self, message: http_request.HttpCheck | None, *, keep_alive: bool) -> None:
        if len(self.pending) >= MAX_PIPELINED:
            _log.warning("more than %d pipelined checks on one connection: closing it", MAX_PIPELINED)
            self._broken = True
            self.close()
            return
        # Started eagerly: a Check that needs no await (a cached token, the usual case) is decided
        # and answered right here, without a trip through the event loop's queue.
        task = asyncio.Task(self._server.check(message), loop=asyncio.get_running_loop(), eager_start=True)
        self.pending.append((task, keep_alive))
        if task.done():  # an eager task factory finished it already
            self._flush(task)
        else:
            task.add_done_callback(self._flush)

    def _flush(self, _: object) -> None:
        pending = self.pending
        while pending and pending[0][0].done():
            task, keep_alive = pending.popleft()
            transport = self._transport
            if task.cancelled() or transport is None:
                continue
            error = task.exception()
            if error is not None:  # checks.run fails closed and does not raise: a fault here is a bug
                _log.error("an HTTP check failed: %r", error)
                transport.write(http_response.FAILED)
            else:
                transport.write(task.result())
            if not keep_alive:
                self.close()
        if self._server.draining and not pending:
            self.close()
