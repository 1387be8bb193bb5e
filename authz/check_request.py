"""The Envoy adapter: ``CheckRequest`` → :class:`~authz.request.HttpRequest`, the first pipeline stage.

Reads Envoy's ``AttributeContext`` by attribute (no protobuf import), bounds what one request may
carry, refuses a request whose fields and pseudo-headers disagree, and applies the
canonicalization rules of :mod:`authz.canonical` to method, host and path. Called by
:func:`authz.decision.decide_check` for every Check and by ``tollgate policy explain``.

Speed: the canonical form of each (authority, target) already seen is remembered (a bounded
table; a pure function of its key), the serialized size is used instead of measuring every
header when it is small, and the connection's details are read from protobuf only when asked for
(:class:`_EnvoyDetails`). Guarded by tests/unit/test_canonical_request.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from authz import canonical
from authz import request as request_model

__all__ = ["canonical_request", "from_check_request"]

# Limits on what one request may carry into the decision. Envoy's own default header limit is
# 60 KiB; anything past these bounds is not a request we can reason about safely.
_MAX_HEADER_BYTES = 64 * 1024
_MAX_HEADER_COUNT = 200


class _EnvoyDetails(tuple[Any]):
    """The less-used attributes of one request, read from Envoy's ``AttributeContext`` (its one
    item) when asked. A tuple, so that making one per Check runs no Python code."""

    __slots__ = ()

    def request_id(self) -> str:
        return str(self[0].request.http.id)

    def protocol(self) -> str:
        return str(self[0].request.http.protocol)

    def scheme(self) -> str:
        return str(self[0].request.http.scheme)

    def source_ip(self) -> str:
        return str(self[0].source.address.socket_address.address)

    def destination(self) -> str:
        return str(self[0].destination.address.socket_address.address)


def _request(
    principal: str,
    details: request_model.Details,
    headers: Mapping[str, str],
    method: str,
    target: tuple[str, str, str, str, str],
) -> request_model.HttpRequest:
    host, path, raw_path, query, path_with_parameters = target
    # By position, in HttpRequest's order: method, host, path, raw_path, query, path_with_parameters,
    # headers, source_principal, details.
    return request_model.HttpRequest(
        method, host, path, raw_path, query, path_with_parameters, headers, principal, details
    )


# Canonical (host, path, raw path, query, second reading) per (authority, request target) already
# seen, one table per strictness: a pure function of its key, and most traffic repeats a few
# hundred targets. Bounded in count and in the size of each key (authority and target together),
# so at most 4,096 x 512 bytes of keys per table.
Canonical = tuple[str, str, str, str, str]
_targets: dict[bool, dict[tuple[str, str], Canonical]] = {True: {}, False: {}}
_MAX_TARGETS = 4096
_MAX_CACHED_TARGET = 512


def from_check_request(
    check_request: Any, wire_size: int | None = None, *, strict: bool = True
) -> request_model.HttpRequest:
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
        raise canonical.RequestRejected(
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
        raise canonical.RequestRejected("request_ambiguous", "the request's fields and its pseudo-headers disagree")
    return canonical_request(
        method, authority, target, headers, attributes.source.principal, _EnvoyDetails((attributes,)), strict=strict
    )


def canonical_request(  # noqa: PLR0917 - the one shared tail of both adapters, once per Check
    method: str,
    authority: str,
    target: str,
    headers: Mapping[str, str],
    principal: str,
    details: request_model.Details,
    *,
    strict: bool,
) -> request_model.HttpRequest:
    """The canonical request once its parts are read: the tail both adapters share (gRPC's
    ``CheckRequest`` here, HTTP ext_authz in :mod:`authz.http_request`), so both apply the same
    canonicalization and the same remembered targets. Raises :class:`RequestRejected`."""
    targets = _targets[strict]
    known = targets.get((authority, target))
    if known is None:
        known = _canonical_target(
            principal, details, headers, method, authority=authority, target=target, strict=strict
        )
        if len(target) + len(authority) <= _MAX_CACHED_TARGET:
            if len(targets) >= _MAX_TARGETS:
                targets.clear()
            targets[(authority, target)] = known
    return _build(principal, details, headers, method, known)


def _from_unusual(attributes: Any, http: Any, headers: Mapping[str, str], strict: bool) -> request_model.HttpRequest:
    """What Envoy does not normally send: no HTTP attributes, raw header bytes
    (``encode_raw_headers``), or method, path or host only as pseudo-headers."""
    if not attributes.HasField("request") or not attributes.request.HasField("http"):
        raise canonical.RequestRejected("request_missing_http", "CheckRequest carries no HTTP request attributes")
    if not headers and len(http.header_map.headers):
        headers = _raw_headers(http.header_map.headers)
    method = http.method or headers.get(":method", "")
    if not method:
        raise canonical.RequestRejected("request_missing_method", "request has no method")
    target = http.path or headers.get(":path", "")
    if not target:
        raise canonical.RequestRejected("request_missing_path", "request has no path")
    authority = http.host or headers.get(":authority", "")
    principal, details = attributes.source.principal, _EnvoyDetails((attributes,))
    known = _canonical_target(principal, details, headers, method, authority=authority, target=target, strict=strict)
    return _build(principal, details, headers, method, known)


def _raw_headers(entries: Any) -> dict[str, str]:
    """``encode_raw_headers``: one entry per header line, so repeated names are joined here with a
    comma, as Envoy joins them in the plain map (RFC 9110 §5.3)."""
    headers: dict[str, str] = {}
    try:
        for entry in entries:
            name, value = entry.key.lower(), entry.raw_value.decode("utf-8")
            headers[name] = headers[name] + "," + value if name in headers else value
    except UnicodeDecodeError as error:
        raise canonical.RequestRejected("request_bad_encoding", "a header value is not valid UTF-8") from error
    return headers


def _canonical_target(
    principal: str,
    details: request_model.Details,
    headers: Mapping[str, str],
    method: str,
    *,
    authority: str,
    target: str,
    strict: bool,
) -> Canonical:
    """(host, canonical path, path as sent, query, second reading) or :class:`RequestRejected` with
    what was read."""
    path, query = canonical.split_path(target)
    try:
        host = canonical.canonical_host(authority)
        first, second = canonical.canonical_paths(path, strict=strict)
    except canonical.RequestRejected as rejected:
        rejected.request = _request(principal, details, headers, method[:32], (authority[:255], path, path, query, ""))
        raise
    return host, first, path, query, second


def _build(
    principal: str, details: request_model.Details, headers: Mapping[str, str], method: str, target: Canonical
) -> request_model.HttpRequest:
    """The request, once its method is known to be one reading only (the method is not part of the
    remembered target, so it is checked here, for every request)."""
    # The query is the one in the target: Envoy documents the `query` field as always empty.
    request = _request(principal, details, headers, method, target)
    if method not in canonical.KNOWN_METHODS and not canonical.METHOD.fullmatch(method):  # is_method(), inlined
        request.method = method[:32]
        raise canonical.RequestRejected("request_method_invalid", "the method is not an upper-case HTTP token", request)
    return request
