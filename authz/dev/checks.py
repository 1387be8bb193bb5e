"""Build real ``CheckRequest`` messages as Envoy would send them (tests and micro-benchmarks)."""

from __future__ import annotations

import posixpath
import re
import urllib.parse
from collections.abc import Mapping

from envoy.config.core.v3 import address_pb2
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2

__all__ = ["check_request", "upstream_path_readings"]


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
