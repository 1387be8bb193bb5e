"""The canonical, typed HTTP request every later stage works on.

Owns the first stage of the decision pipeline: it turns the attributes Envoy sends in a
``CheckRequest`` into an :class:`HttpRequest` whose host and path are in one canonical form, so
that a policy written for ``/admin`` cannot be side-stepped with ``//admin``, ``/%2e%2e/admin`` or
``/public/..;/admin``. Called by :mod:`authz.service` (through :func:`from_check_request`) and by
``tollgate policy explain`` (through :func:`canonical_host` and :func:`canonical_path`).

Canonical path, in this order (the order is part of the security contract):

1. Split off the query (``?``) and fragment (``#``); they never take part in path matching.
2. Reject what upstream servers disagree on: an encoded slash or backslash (``%2F``, ``%5C``), a
   NUL (raw or ``%00``), a raw backslash, a malformed ``%`` escape, a non-ASCII byte.
3. Per segment, drop path parameters (``;...``) as Tomcat and Spring do, so ``/admin;x`` is
   ``/admin`` and ``/..;/`` is ``/../``.
4. Decode percent-encoded *unreserved* characters (RFC 3986 §2.3); other escapes stay encoded,
   with upper-case hex.
5. Remove dot segments (RFC 3986 §5.2.4) and merge repeated slashes.

Paths are case-sensitive (RFC 3986 §6.2.2.1); hosts are lower-cased and lose their port.

This module never imports protobuf: :func:`from_check_request` reads the message by attribute.
"""

from __future__ import annotations

import re
import types
from collections.abc import Mapping
from typing import Any

__all__ = [
    "HttpRequest",
    "RequestRejected",
    "canonical_host",
    "canonical_path",
    "from_check_request",
]

# Limits on what one request may carry into the decision. Envoy's own default header limit is
# 60 KiB; anything past these bounds is not a request we can reason about safely.
_MAX_PATH_BYTES = 8 * 1024
_MAX_HEADER_BYTES = 64 * 1024
_MAX_HEADER_COUNT = 200

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset("0123456789abcdefABCDEF")
# A path that needs no work at all: the fast path for the overwhelmingly common case.
_PLAIN_PATH = re.compile(r"^(?:/[A-Za-z0-9\-_~!$&'()*+,=:@]+(?:\.[A-Za-z0-9\-_~!$&'()*+,=:@]+)*)*/?$")


class RequestRejected(Exception):
    """The request cannot be canonicalized; ``code`` is the deny reason (e.g. ``path_encoded_slash``).

    ``request`` holds what could be read of it (path as sent), for the audit record.
    """

    def __init__(self, code: str, message: str, request: HttpRequest | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request = request


_NO_HEADERS: Mapping[str, str] = types.MappingProxyType({})


class HttpRequest:
    """One HTTP request as the policy engine sees it: canonical, plain, transport-free.

    Treated as immutable. Built from Envoy's attributes, what only some policies, denied answers
    and the audit record look at (``request_id``, ``source_ip``, ``destination``, ``protocol``,
    ``scheme``) is read from the attributes on first use: each read of a protobuf field costs
    about half a microsecond under load, and most allowed Checks need none of them.
    """

    __slots__ = (
        "_attributes",
        "_destination",
        "_protocol",
        "_request_id",
        "_scheme",
        "_source_ip",
        "headers",
        "host",
        "method",
        "path",
        "query",
        "raw_path",
        "source_principal",
    )

    def __init__(
        self,
        method: str,
        host: str,
        path: str,
        *,
        raw_path: str = "",
        query: str = "",
        headers: Mapping[str, str] = _NO_HEADERS,
        request_id: str = "",
        protocol: str = "",
        scheme: str = "",
        source_ip: str = "",
        source_principal: str = "",
        destination: str = "",
    ) -> None:
        self.method = method
        self.host = host
        self.path = path
        self.raw_path = raw_path
        self.query = query
        self.headers = headers
        self._request_id: str | None = request_id
        self.source_principal = source_principal
        self._protocol: str | None = protocol
        self._scheme: str | None = scheme
        self._source_ip: str | None = source_ip
        self._destination: str | None = destination
        self._attributes: Any = None

    @classmethod
    def from_attributes(
        cls, attributes: Any, method: str, canonical: tuple[str, str, str, str], headers: Mapping[str, str]
    ) -> HttpRequest:
        """The request for Envoy's ``AttributeContext``; the connection's details stay unread."""
        request = cls.__new__(cls)
        request.method = method
        request.host, request.path, request.raw_path, request.query = canonical
        request.headers = headers
        request.source_principal = attributes.source.principal
        request._attributes = attributes
        request._request_id = request._protocol = request._scheme = request._source_ip = request._destination = None
        return request

    @property
    def request_id(self) -> str:
        """x-request-id: the id Envoy, the upstream and the access log share (Envoy's internal id if absent)."""
        if self._request_id is None:
            self._request_id = self.headers.get("x-request-id") or self._attributes.request.http.id
        return self._request_id

    @property
    def protocol(self) -> str:
        if self._protocol is None:
            self._protocol = self._attributes.request.http.protocol
        return self._protocol

    @property
    def scheme(self) -> str:
        if self._scheme is None:
            self._scheme = self._attributes.request.http.scheme
        return self._scheme

    @property
    def source_ip(self) -> str:
        if self._source_ip is None:
            self._source_ip = self._attributes.source.address.socket_address.address
        return self._source_ip

    @property
    def destination(self) -> str:
        if self._destination is None:
            self._destination = self._attributes.destination.address.socket_address.address
        return self._destination

    def __repr__(self) -> str:
        return f"HttpRequest({self.method} {self.host}{self.path}, request_id={self.request_id!r})"


def canonical_host(authority: str) -> str:
    """Lower-case the authority and strip its port (``Orders.Example.com:8443`` → ``orders.example.com``)."""
    host = authority.strip().lower()
    if host.startswith("["):  # IPv6 literal: "[::1]:8080"
        end = host.find("]")
        return host[: end + 1] if end != -1 else host
    colon = host.rfind(":")
    if colon != -1 and host[colon + 1 :].isdigit():
        host = host[:colon]
    return host.rstrip(".")


def split_path(raw: str) -> tuple[str, str]:
    """Split a request target into (path, query); the fragment, if a client sent one, is dropped."""
    hash_at = raw.find("#")
    if hash_at != -1:
        raw = raw[:hash_at]
    query_at = raw.find("?")
    if query_at == -1:
        return raw, ""
    return raw[:query_at], raw[query_at + 1 :]


def canonical_path(path: str) -> str:
    """Return the canonical form of ``path`` (no query) or raise :class:`RequestRejected`."""
    if len(path) > _MAX_PATH_BYTES:
        raise RequestRejected("path_too_long", f"path exceeds {_MAX_PATH_BYTES} bytes")
    if not path.startswith("/"):
        raise RequestRejected("path_invalid", "path must start with '/'")
    if _PLAIN_PATH.match(path):
        return path
    if not path.isascii():
        raise RequestRejected("path_invalid_character", "path contains a non-ASCII character")
    if "\\" in path:
        raise RequestRejected("path_backslash", "path contains a backslash")
    if "\x00" in path:
        raise RequestRejected("path_nul", "path contains a NUL byte")

    segments = path.split("/")
    last_index = len(segments) - 1
    out: list[str] = []
    trailing_slash = False
    for index, raw_segment in enumerate(segments[1:], start=1):
        semicolon = raw_segment.find(";")
        segment = raw_segment[:semicolon] if semicolon != -1 else raw_segment
        if "%" in segment:
            segment = _decode_unreserved(segment)
        if index == last_index:
            # "/admin/", "/admin/." and "/a/admin/.." all name a directory (RFC 3986 §5.2.4);
            # routers treat "/admin/" and "/admin" differently, so the slash is kept.
            trailing_slash = segment in ("", ".", "..")
        if segment in (".", ""):
            continue
        if segment == "..":
            if out:
                out.pop()
            continue
        out.append(segment)
    canonical = "/" + "/".join(out)
    if out and trailing_slash:
        canonical += "/"
    return canonical


def _decode_unreserved(segment: str) -> str:
    """Decode %XX escapes of unreserved characters; reject malformed or dangerous escapes."""
    parts = segment.split("%")
    out = [parts[0]]
    for part in parts[1:]:
        if len(part) < 2 or part[0] not in _HEX or part[1] not in _HEX:
            raise RequestRejected("path_bad_escape", "path contains a malformed percent-escape")
        code = int(part[:2], 16)
        char = chr(code)
        if char == "/":
            raise RequestRejected("path_encoded_slash", "path contains an encoded slash (%2F)")
        if char == "\\":
            raise RequestRejected("path_encoded_backslash", "path contains an encoded backslash (%5C)")
        if code == 0:
            raise RequestRejected("path_nul", "path contains an encoded NUL (%00)")
        if char in _UNRESERVED:
            out.append(char + part[2:])
        else:
            out.append("%" + part[:2].upper() + part[2:])
    return "".join(out)


# Canonical (host, path, raw path, query) per (authority, request target) already seen: a pure
# function of its key, and most traffic repeats a few hundred targets. Bounded in count and in the
# size of each key (authority and target together), so at most 4,096 x 512 bytes of keys.
_targets: dict[tuple[str, str], tuple[str, str, str, str]] = {}
_MAX_TARGETS = 4096
_MAX_CACHED_TARGET = 512


def from_check_request(check_request: Any, wire_size: int | None = None) -> HttpRequest:
    """Build the canonical request from an Envoy ``CheckRequest`` (read by attribute, no protobuf import).

    ``wire_size`` is the length of the serialized CheckRequest, when the caller has it: a message
    that small cannot hold more header bytes than the bound, so their size need not be computed.

    Raises :class:`RequestRejected` for a request that is missing its HTTP attributes, is too large,
    or whose path cannot be canonicalized.
    """
    attributes = check_request.attributes
    http = attributes.request.http
    headers: Mapping[str, str] = http.headers
    size = 0
    if wire_size is None or wire_size > _MAX_HEADER_BYTES:
        # ByteSize() is computed in C (by encoding); it bounds every header, the path and the rest.
        size = http.ByteSize()
        if size > _MAX_HEADER_BYTES:
            # A body Envoy buffered for the check (`with_request_body`) is not part of the headers.
            size -= len(http.body.encode()) + len(http.raw_body)
    if len(headers) > _MAX_HEADER_COUNT or size > _MAX_HEADER_BYTES:
        raise RequestRejected(
            "request_headers_too_large",
            f"request headers exceed {_MAX_HEADER_BYTES} bytes or {_MAX_HEADER_COUNT} headers",
        )
    method, target, authority = http.method, http.path, http.host
    if not (method and target and authority and headers):
        return _from_unusual(attributes, http, headers)
    canonical = _targets.get((authority, target))
    if canonical is None:
        canonical = _canonical_target(attributes, http, headers, method, authority=authority, target=target)
        if len(target) + len(authority) <= _MAX_CACHED_TARGET:
            if len(_targets) >= _MAX_TARGETS:
                _targets.clear()
            _targets[(authority, target)] = canonical
    return _build(attributes, http, headers, method, canonical)


def _from_unusual(attributes: Any, http: Any, headers: Mapping[str, str]) -> HttpRequest:
    """What Envoy does not normally send: no HTTP attributes, raw header bytes
    (``encode_raw_headers``), or method, path or host only as pseudo-headers."""
    if not attributes.HasField("request") or not attributes.request.HasField("http"):
        raise RequestRejected("request_missing_http", "CheckRequest carries no HTTP request attributes")
    if not headers and len(http.header_map.headers):
        try:
            headers = {h.key.lower(): h.raw_value.decode("utf-8") for h in http.header_map.headers}
        except UnicodeDecodeError as error:
            raise RequestRejected("request_bad_encoding", "a header value is not valid UTF-8") from error
    method = http.method or headers.get(":method", "")
    if not method:
        raise RequestRejected("request_missing_method", "request has no method")
    target = http.path or headers.get(":path", "")
    if not target:
        raise RequestRejected("request_missing_path", "request has no path")
    authority = http.host or headers.get(":authority", "")
    canonical = _canonical_target(attributes, http, headers, method, authority=authority, target=target)
    return _build(attributes, http, headers, method, canonical)


def _canonical_target(
    attributes: Any, http: Any, headers: Mapping[str, str], method: str, *, authority: str, target: str
) -> tuple[str, str, str, str]:
    """(host, canonical path, path as sent, query) or :class:`RequestRejected` with what was read."""
    path, query = split_path(target)
    host = canonical_host(authority)
    try:
        return host, canonical_path(path), path, query
    except RequestRejected as rejected:
        rejected.request = _build(attributes, http, headers, method, (host, path, path, query))
        raise


def _build(
    attributes: Any, http: Any, headers: Mapping[str, str], method: str, canonical: tuple[str, str, str, str]
) -> HttpRequest:
    # The query is the one in the target: Envoy documents the `query` field as always empty.
    return HttpRequest.from_attributes(attributes, method.upper(), canonical, headers)
