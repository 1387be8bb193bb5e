"""Build real check requests as Envoy would send them — gRPC ``CheckRequest`` messages and HTTP
ext_authz requests — and read the HTTP answers (tests and micro-benchmarks)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import posixpath
import random
import re
import ssl
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

import httptools
from envoy.config.core.v3 import address_pb2
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2

from authz import http_request

__all__ = [
    "FUZZ_HOSTS",
    "FUZZ_PATHS",
    "HttpAnswer",
    "ListRecorder",
    "check_request",
    "exchange",
    "http_check_request",
    "mutate_bytes",
    "upstream_path_readings",
]


def check_request(
    *,
    method: str = "GET",
    host: str = "example.com",
    path: str = "/",
    headers: Mapping[str, str] | None = None,
    source_ip: str = "127.0.0.1",
    principal: str = "",
    request_id: str = "req-1",
) -> external_auth_pb2.CheckRequest:
    all_headers = {":method": method, ":path": path, ":authority": host, "x-request-id": request_id, **(headers or {})}
    context = attribute_context_pb2.AttributeContext
    return external_auth_pb2.CheckRequest(
        attributes=context(
            source=context.Peer(
                address=address_pb2.Address(
                    socket_address=address_pb2.SocketAddress(address=source_ip, port_value=40000)
                ),
                principal=principal,
            ),
            destination=context.Peer(
                address=address_pb2.Address(
                    socket_address=address_pb2.SocketAddress(address="127.0.0.1", port_value=8080)
                ),
            ),
            request=context.Request(
                http=context.HttpRequest(
                    id="1",
                    method=method,
                    path=path,
                    host=host,
                    headers=all_headers,
                    protocol="HTTP/1.1",
                    scheme="http",
                )
            ),
        )
    )


def http_check_request(
    *,
    method: str = "GET",
    host: str = "example.com",
    path: str = "/",
    headers: Sequence[tuple[str, str]] = (),
    source_ip: str = "127.0.0.1",
    principal: str = "",
    request_id: str = "req-1",
    envoy: Sequence[tuple[str, str]] | None = None,
) -> bytes:
    """An HTTP ext_authz check request as Envoy's ``http_service`` sends it (one HTTP/1.1 request):
    the client's request line and headers, then what Envoy adds (``envoy``: those lines instead)."""
    if envoy is None:
        envoy = [(http_request.SOURCE, source_ip), (http_request.PROTOCOL, "HTTP/1.1"), (http_request.SCHEME, "http")]
        if principal:
            envoy.append((http_request.PEER_URI_SAN, principal))
    lines = [f"{method} {path} HTTP/1.1", f"host: {host}", f"x-request-id: {request_id}", "content-length: 0"]
    lines += [f"{name}: {value}" for name, value in (*headers, *envoy)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")


@dataclasses.dataclass
class HttpAnswer:
    """One HTTP answer: status, headers (lower-case names, repeats joined by commas), body."""

    status: int
    headers: dict[str, str]
    body: bytes


class _Answers:
    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.answers: list[HttpAnswer] = []
        self._current = HttpAnswer(0, {}, b"")

    def on_message_begin(self) -> None:
        self._current = HttpAnswer(0, {}, b"")

    def on_header(self, name: bytes, value: bytes) -> None:
        key, text = name.decode().lower(), value.decode()
        headers = self._current.headers
        headers[key] = f"{headers[key]},{text}" if key in headers else text

    def on_body(self, body: bytes) -> None:
        self._current.body += body

    def on_message_complete(self) -> None:
        self._current.status = self.parser.get_status_code()
        self.answers.append(self._current)


async def exchange(
    port: int,
    data: bytes,
    *,
    answers: int = 1,
    timeout: float = 10.0,
    context: ssl.SSLContext | None = None,
) -> list[HttpAnswer]:
    """Send ``data`` (one or more requests) on one connection to 127.0.0.1:``port``; return the
    answers read until ``answers`` arrived or the server closed the connection."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname="localhost" if context else None
    )
    try:
        writer.write(data)
        return await read_answers(reader, answers=answers, timeout=timeout)
    finally:
        writer.close()


async def read_answers(reader: asyncio.StreamReader, *, answers: int = 1, timeout: float = 10.0) -> list[HttpAnswer]:
    """The HTTP answers read from ``reader`` until ``answers`` arrived, the server closed the
    connection, or ``timeout`` seconds passed."""
    parsed = _Answers()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            while len(parsed.answers) < answers:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                parsed.parser.feed_data(chunk)
    return parsed.answers


# Hosts and paths the fuzz tests put into requests every policy denies (both edges, the same lists).
FUZZ_HOSTS = (
    "vault.example.com,a.wild.example.com",
    "vault.example.com:a.wild.example.com",
    "a.wild.example.com@vault.example.com",
    "vault.example.com\x00",
    "VAULT.example.com.",
    "vault.example.com:1",
    "[::1]",
    "",
)
FUZZ_PATHS = ("/admin\n", "/admin;x", "/..;/admin", "/%2e%2e/admin", "/admin%00", "//admin", "", "admin", "/\x7f")


def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    """1 to 8 byte-level mutations of ``data`` (flips, cuts, random insertions, repeats): what the
    fuzz tests send, so the parser sees garbage too."""
    buffer = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        kind = rng.randrange(4)
        position = rng.randrange(len(buffer)) if buffer else 0
        if kind == 0 and buffer:
            buffer[position] ^= 1 << rng.randrange(8)
        elif kind == 1:
            del buffer[position : position + rng.randint(1, 16)]
        elif kind == 2:
            buffer[position:position] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        else:
            buffer[position:position] = buffer[position : position + rng.randint(1, 32)]
    return bytes(buffer)


class ListRecorder:
    """An audit recorder that keeps the decisions in a list (tests of the edges, in-process)."""

    durable = False

    def __init__(self) -> None:
        self.decisions: list[Any] = []

    async def record(self, item: Any) -> bool:
        self.decisions.append(item)
        return True


def _dots(path: str) -> str:
    """RFC 3986 dot-segment removal and merged slashes, keeping a trailing slash."""
    cleaned = "/" + posixpath.normpath("/" + re.sub("/+", "/", path)).lstrip("/")
    return cleaned + "/" if path.endswith("/") and cleaned != "/" else cleaned


def upstream_path_readings(target: str) -> set[str]:
    """How the servers behind Envoy read a request target they received (query split off):
    Tomcat and Spring drop path parameters; Go, nginx, Express and Python keep them; each decodes
    escapes once, and some servers decode twice. The security tests require every reading of an
    allowed request to be allowed."""
    path = target.split("?", 1)[0].split("#", 1)[0]
    decoded = urllib.parse.unquote(path, errors="surrogateescape")
    return {
        _dots(re.sub(r";[^/]*", "", decoded)),
        _dots(decoded),
        _dots(urllib.parse.unquote(decoded, errors="surrogateescape")),
    }
