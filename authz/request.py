"""The canonical, typed HTTP request every later stage works on.

Owns the first stage of the decision pipeline: it turns the attributes Envoy sends in a
``CheckRequest`` into an :class:`HttpRequest` whose host and path are in one canonical form, so
that a policy written for ``/admin`` cannot be side-stepped with ``//admin``, ``/%2e%2e/admin`` or
``/public/..;/admin``. Called by :mod:`authz.service` (through :func:`from_check_request`) and by
``tollgate policy explain`` (through :func:`canonical_host` and :func:`canonical_paths`).

The rule behind every step: Tollgate judges the request the upstream will act on, and where
upstream servers could read a request two ways it is refused (400, with its own reason) or judged
on every reading, never on one.

Canonical path, in this order (the order is part of the security contract):

1. Split off the query (``?``) and fragment (``#``); they never take part in path matching.
2. Reject what upstream servers disagree on: an encoded slash or backslash (``%2F``, ``%5C``), a
   NUL (raw or ``%00``), a raw backslash, a control character or space, a malformed ``%`` escape,
   a non-ASCII byte; in strict mode (the default) also encoded dots (``%2e``), double encoding
   (a path that still holds an escape once decoded: ``%252e``, ``%25%32%65``) and
   percent-encoded bytes that are not valid UTF-8.
3. Path parameters (``;...``): servers disagree (Tomcat and Spring drop them, Go, nginx, Express
   and Python keep them), so a path that has them has two readings. A segment that is a dot
   segment in only one of them (``..;x``) is refused; otherwise both readings are returned and
   the policy must agree on them (:mod:`authz.policy.evaluate`).
4. Decode percent-encoded *unreserved* characters (RFC 3986 §2.3); other escapes stay encoded,
   with upper-case hex.
5. Remove dot segments (RFC 3986 §5.2.4) and merge repeated slashes.

Paths are case-sensitive (RFC 3986 §6.2.2.1). Hosts must be a DNS name or an IP literal with an
optional numeric port; they are lower-cased and lose the port and a trailing dot.

This module never imports protobuf: :func:`from_check_request` reads the message by attribute.
"""

from __future__ import annotations

import ipaddress
import re
import types
import urllib.parse
from collections.abc import Mapping
from typing import Any

__all__ = [
    "HttpRequest",
    "RequestRejected",
    "canonical_host",
    "canonical_path",
    "canonical_paths",
    "check_method",
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
# Headers Tollgate alone may set for the upstream; any client-sent header in this namespace is removed.
_RESERVED_PREFIX = "x-tollgate-"
_METHOD_OVERRIDES = ("x-http-method-override", "x-http-method", "x-method-override")


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
        "_names",
        "_protocol",
        "_request_id",
        "_scheme",
        "_source_ip",
        "headers",
        "host",
        "method",
        "path",
        "path_with_parameters",
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
        path_with_parameters: str = "",
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
        self.path_with_parameters = path_with_parameters
        self.query = query
        self.headers = headers
        self._request_id: str | None = request_id
        self.source_principal = source_principal
        self._protocol: str | None = protocol
        self._scheme: str | None = scheme
        self._source_ip: str | None = source_ip
        self._destination: str | None = destination
        self._attributes: Any = None
        self._names: str | None = None

    @classmethod
    def from_attributes(
        cls, attributes: Any, method: str, canonical: tuple[str, str, str, str, str], headers: Mapping[str, str]
    ) -> HttpRequest:
        """The request for Envoy's ``AttributeContext``; the connection's details stay unread."""
        request = cls.__new__(cls)
        request.method = method
        request.host, request.path, request.raw_path, request.query, request.path_with_parameters = canonical
        request.headers = headers
        request.source_principal = attributes.source.principal
        request._attributes = attributes
        request._request_id = request._protocol = request._scheme = request._source_ip = request._destination = None
        request._names = None
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

    def method_overrides(self) -> tuple[str, ...]:
        """Methods the request asks the upstream to act on instead of its own (``X-HTTP-Method-Override``
        and its spellings), each an upper-case token, else :class:`RequestRejected`. Many frameworks
        honour these headers, so the policy judges every such method as well as the request's own."""
        if "-method" not in self._header_names():  # the usual request (":method" is not one): no lookups
            return ()
        headers = self.headers
        found: list[str] = []
        for name in _METHOD_OVERRIDES:
            value = headers.get(name)
            if value is not None:
                for item in value.split(","):  # repeated headers arrive joined with commas
                    method = item.strip()
                    if not _is_method(method):
                        raise RequestRejected("request_method_override_invalid", f"{name} is not an HTTP method")
                    if method != self.method and method not in found:
                        found.append(method)
        return tuple(found)

    def reserved_headers(self) -> tuple[str, ...]:
        """The names of client-sent headers in Tollgate's reserved namespace (``x-tollgate-*`` in any
        spelling: ``_`` for ``-``, any case), which must never reach the upstream as sent."""
        if "tollgate" not in self._header_names():  # the usual request
            return ()
        return tuple(name for name in self.headers if name.lower().replace("_", "-").startswith(_RESERVED_PREFIX))

    def _header_names(self) -> str:
        """Every header name, lower-cased, one per line: read from the map once (in C), for the
        screens above, which only allowed requests reach."""
        if self._names is None:
            self._names = "\n".join(self.headers).lower()
        return self._names

    def __repr__(self) -> str:
        return f"HttpRequest({self.method} {self.host}{self.path}, request_id={self.request_id!r})"


def canonical_host(authority: str) -> str:
    """The host a request is filed under: ``Orders.Example.com:8443`` → ``orders.example.com``.

    The authority must be a DNS name (letters, digits and hyphens in dot-separated labels of 1 to 63
    characters, at most 253 in all, a trailing dot allowed) or an IP literal (dotted-quad IPv4 or a
    bracketed IPv6 address without zone), optionally followed by ``:`` and a numeric port.
    Anything else — two Host headers Envoy joined with a comma, ``a@b``, ``a:b``, a NUL, a space —
    can be read differently by the upstream and is :class:`RequestRejected` as
    ``request_host_invalid``. (Requests reach it only for targets not remembered yet: see
    :func:`from_check_request`.)
    """
    host = _parse_host(authority)
    if host is None:
        shown = authority if len(authority) <= 100 else authority[:100] + "…"
        raise RequestRejected("request_host_invalid", f"host {shown!r} is not a DNS name or IP literal")
    return host


_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_PORT = re.compile(r"[0-9]{1,5}")


def _parse_host(authority: str) -> str | None:
    if not authority or len(authority) > 260 or not authority.isascii():
        return None
    host = authority.lower()
    if host.startswith("["):  # IPv6 literal: "[::1]:8080"
        end = host.find("]")
        if end == -1:
            return None
        rest = host[end + 1 :]
        if rest and not (rest[0] == ":" and _PORT.fullmatch(rest[1:])):
            return None
        try:
            address = ipaddress.IPv6Address(host[1:end])  # a zone ("%eth0") is refused here
        except ValueError:
            return None
        return "[" + address.compressed + "]" if address.scope_id is None else None
    name, colon, port = host.partition(":")
    if colon and not _PORT.fullmatch(port):
        return None
    if name.endswith("."):
        name = name[:-1]
    if not name or len(name) > 253:
        return None
    labels = name.split(".")
    for label in labels:
        if not _LABEL.fullmatch(label):
            return None
    if labels[-1].isdigit():
        # An all-numeric last label is only valid as a dotted-quad IPv4 address, written plainly:
        # "127.1", "0177.0.0.1" and "2130706433" are read as IPv4 by some parsers and not others.
        try:
            ipaddress.IPv4Address(name)
        except ValueError:
            return None
    return name


def split_path(raw: str) -> tuple[str, str]:
    """Split a request target into (path, query); the fragment, if a client sent one, is dropped."""
    hash_at = raw.find("#")
    if hash_at != -1:
        raw = raw[:hash_at]
    query_at = raw.find("?")
    if query_at == -1:
        return raw, ""
    return raw[:query_at], raw[query_at + 1 :]


def canonical_path(path: str, *, strict: bool = True) -> str:
    """The canonical form of ``path`` (no query) with path parameters removed, or :class:`RequestRejected`.

    Policy patterns are validated with it; requests take :func:`canonical_paths` (both readings).
    """
    return canonical_paths(path, strict=strict)[0]


def canonical_paths(path: str, *, strict: bool = True) -> tuple[str, str]:
    """(canonical path with parameters removed, canonical path with parameters kept or "").

    The second reading is "" when it is the same as the first (no ``;`` in the path). Raises
    :class:`RequestRejected` for a path upstream servers could read in ways the policy cannot
    follow (see the module docstring). ``strict``: also refuse encoded dots, double encoding and
    percent-encoded bytes that are not UTF-8.
    """
    if len(path) > _MAX_PATH_BYTES:
        raise RequestRejected("path_too_long", f"path exceeds {_MAX_PATH_BYTES} bytes")
    if not path.startswith("/"):
        raise RequestRejected("path_invalid", "path must start with '/'")
    if _PLAIN_PATH.fullmatch(path):  # not match(): "$" would also accept a trailing newline
        return path, ""
    if not path.isascii():
        raise RequestRejected("path_invalid_character", "path contains a non-ASCII character")
    if "\\" in path:
        raise RequestRejected("path_backslash", "path contains a backslash")
    if "\x00" in path:
        raise RequestRejected("path_nul", "path contains a NUL byte")
    if _CONTROL.search(path):
        raise RequestRejected("path_invalid_character", "path contains a control character or space")
    if "%" in path and strict:
        _check_strict(path)

    stripped: list[str] = []
    literal: list[str] = []
    segments = path.split("/")
    last_index = len(segments) - 1
    trailing_stripped = trailing_literal = False
    has_parameters = ";" in path
    for index, raw_segment in enumerate(segments[1:], start=1):
        segment = _decode_unreserved(raw_segment) if "%" in raw_segment else raw_segment
        semicolon = segment.find(";")
        bare = segment[:semicolon] if semicolon != -1 else segment
        if semicolon != -1 and bare in (".", "..") and segment not in (".", ".."):
            # "..;x" is a dot segment to Tomcat and a name to Go, nginx or Express: the two readings
            # name different resources, so no policy answer could hold for both.
            raise RequestRejected(
                "path_ambiguous_dot_segment", "a path segment is a dot segment only once its parameters are removed"
            )
        trailing_stripped = _push(stripped, bare, index == last_index, trailing_stripped)
        if has_parameters:
            trailing_literal = _push(literal, segment, index == last_index, trailing_literal)
    first = _join(stripped, trailing_stripped)
    if not has_parameters:
        return first, ""
    second = _join(literal, trailing_literal)
    return first, ("" if second == first else second)


def _push(out: list[str], segment: str, last: bool, trailing: bool) -> bool:
    """Apply one segment (RFC 3986 §5.2.4 dot-segment removal); return the trailing-slash flag."""
    if last:
        # "/admin/", "/admin/." and "/a/admin/.." all name a directory (RFC 3986 §5.2.4);
        # routers treat "/admin/" and "/admin" differently, so the slash is kept.
        trailing = segment in ("", ".", "..")
    if segment in (".", ""):
        return trailing
    if segment == "..":
        if out:
            out.pop()
        return trailing
    out.append(segment)
    return trailing


def _join(out: list[str], trailing: bool) -> str:
    canonical = "/" + "/".join(out)
    return canonical + "/" if out and trailing else canonical


def _check_strict(path: str) -> None:
    """Strict mode: refuse escapes an upstream might decode differently, or twice."""
    if _ENCODED_DOT.search(path):
        raise RequestRejected("path_encoded_dot", "path contains an encoded dot (%2E)")
    if "%25" in path and _ESCAPE.search(urllib.parse.unquote(path)):
        # Decoded once, the path still holds an escape (%252e, %25%32%65): a server that decodes
        # twice reads another path than one that decodes once.
        raise RequestRejected("path_double_encoding", "path contains a percent-encoded escape (%25XX)")
    for run in _HIGH_ESCAPES.findall(path):
        try:
            bytes.fromhex(run.replace("%", "")).decode("utf-8")
        except UnicodeDecodeError as error:
            # Overlong forms such as %C0%AE decode to "." in lax decoders.
            raise RequestRejected(
                "path_invalid_utf8", "path contains percent-encoded bytes that are not UTF-8"
            ) from error


_CONTROL = re.compile(r"[\x00-\x20\x7f]")
_ENCODED_DOT = re.compile(r"%2[eE]")
_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")
_HIGH_ESCAPES = re.compile(r"(?:%[89A-Fa-f][0-9A-Fa-f])+")


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


# Canonical (host, path, raw path, query, second reading) per (authority, request target) already
# seen, one table per strictness: a pure function of its key, and most traffic repeats a few
# hundred targets. Bounded in count and in the size of each key (authority and target together),
# so at most 4,096 x 512 bytes of keys per table.
Canonical = tuple[str, str, str, str, str]
_targets: dict[bool, dict[tuple[str, str], Canonical]] = {True: {}, False: {}}
_MAX_TARGETS = 4096
_MAX_CACHED_TARGET = 512
# A method is a token (RFC 9110 §9.1) and case-sensitive: "get" is not GET to Go or Node, so only
# upper-case tokens are accepted rather than judging "get" as GET. The usual ones skip the regex.
_METHOD = re.compile(r"[A-Z0-9!#$%&'*+.^_`|~-]{1,32}")
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"})


def _is_method(method: str) -> bool:
    return method in _KNOWN_METHODS or _METHOD.fullmatch(method) is not None


def check_method(method: str) -> str:
    """``method`` if it is an upper-case token, else :class:`RequestRejected` ``request_method_invalid``."""
    if not _is_method(method):
        raise RequestRejected("request_method_invalid", "the method is not an upper-case HTTP token")
    return method


def from_check_request(check_request: Any, wire_size: int | None = None, *, strict: bool = True) -> HttpRequest:
    """Build the canonical request from an Envoy ``CheckRequest`` (read by attribute, no protobuf import).

    ``wire_size`` is the length of the serialized CheckRequest, when the caller has it: a message
    that small cannot hold more header bytes than the bound, so their size need not be computed.
    ``strict``: strict path mode (see :func:`canonical_paths`).

    Raises :class:`RequestRejected` for a request that is missing its HTTP attributes, is too large,
    or whose method, host or path cannot be read one way only.
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
        return _from_unusual(attributes, http, headers, strict)
    # Envoy fills both from one request; a client of the gRPC port can make them disagree. (get(), not
    # a subscript: a protobuf map inserts a missing key when subscripted.)
    ambiguous = (
        headers.get(":method", method) != method
        or headers.get(":path", target) != target
        or headers.get(":authority", authority) != authority
    )
    if ambiguous:
        raise RequestRejected("request_ambiguous", "the request's fields and its pseudo-headers disagree")
    targets = _targets[strict]
    canonical = targets.get((authority, target))
    if canonical is None:
        canonical = _canonical_target(attributes, headers, method, authority=authority, target=target, strict=strict)
        if len(target) + len(authority) <= _MAX_CACHED_TARGET:
            if len(targets) >= _MAX_TARGETS:
                targets.clear()
            targets[(authority, target)] = canonical
    return _build(attributes, headers, method, canonical)


def _from_unusual(attributes: Any, http: Any, headers: Mapping[str, str], strict: bool) -> HttpRequest:
    """What Envoy does not normally send: no HTTP attributes, raw header bytes
    (``encode_raw_headers``), or method, path or host only as pseudo-headers."""
    if not attributes.HasField("request") or not attributes.request.HasField("http"):
        raise RequestRejected("request_missing_http", "CheckRequest carries no HTTP request attributes")
    if not headers and len(http.header_map.headers):
        headers = _raw_headers(http.header_map.headers)
    method = http.method or headers.get(":method", "")
    if not method:
        raise RequestRejected("request_missing_method", "request has no method")
    target = http.path or headers.get(":path", "")
    if not target:
        raise RequestRejected("request_missing_path", "request has no path")
    authority = http.host or headers.get(":authority", "")
    canonical = _canonical_target(attributes, headers, method, authority=authority, target=target, strict=strict)
    return _build(attributes, headers, method, canonical)


def _raw_headers(entries: Any) -> dict[str, str]:
    """``encode_raw_headers``: one entry per header line, so repeated names are joined here with a
    comma, as Envoy joins them in the plain map (RFC 9110 §5.3)."""
    headers: dict[str, str] = {}
    try:
        for entry in entries:
            name, value = entry.key.lower(), entry.raw_value.decode("utf-8")
            headers[name] = headers[name] + "," + value if name in headers else value
    except UnicodeDecodeError as error:
        raise RequestRejected("request_bad_encoding", "a header value is not valid UTF-8") from error
    return headers


def _canonical_target(
    attributes: Any, headers: Mapping[str, str], method: str, *, authority: str, target: str, strict: bool
) -> Canonical:
    """(host, canonical path, path as sent, query, second reading) or :class:`RequestRejected` with
    what was read."""
    path, query = split_path(target)
    try:
        host = canonical_host(authority)
        first, second = canonical_paths(path, strict=strict)
    except RequestRejected as rejected:
        rejected.request = HttpRequest.from_attributes(
            attributes, method[:32], (authority[:255], path, path, query, ""), headers
        )
        raise
    return host, first, path, query, second


def _build(attributes: Any, headers: Mapping[str, str], method: str, canonical: Canonical) -> HttpRequest:
    """The request, once its method is known to be one reading only (the method is not part of the
    remembered target, so it is checked here, for every request)."""
    # The query is the one in the target: Envoy documents the `query` field as always empty.
    request = HttpRequest.from_attributes(attributes, method, canonical, headers)
    if method not in _KNOWN_METHODS and not _METHOD.fullmatch(method):  # _is_method(), inlined: per Check
        request.method = method[:32]
        raise RequestRejected("request_method_invalid", "the method is not an upper-case HTTP token", request)
    return request
