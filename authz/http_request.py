"""The HTTP ext_authz adapter: one check request from Envoy's ``http_service`` → :class:`~authz.request.HttpRequest`.

The second edge's first stage, beside :mod:`authz.check_request` (gRPC). Envoy's HTTP client
builds the check request from the same attributes as the gRPC ``CheckRequest``: the client's
method, path and authority, and its headers with repeated names already joined by commas. What
HTTP cannot carry — the connection's addresses, protocol and the verified peer certificate — Envoy
adds from its own view of the connection, under the ``x-tollgate-envoy-*`` names of
:data:`ENVOY_ATTRIBUTES` (``authorization_request.headers_to_add`` with Envoy's command operators,
as :mod:`authz.envoy_bootstrap` writes them). A client cannot supply them: the generated Envoy
configuration drops every client header with that prefix (``disallowed_headers``) before adding
its own, and a name that arrives twice is refused here.

Then the shared tail (:func:`authz.check_request.canonical_request`): the same canonicalization,
the same bounds, the same refusals as a gRPC Check. Parsed by :mod:`authz.http_server`; called by
:func:`authz.decision.decide_read` through :mod:`authz.checks`. Guarded by
tests/unit/test_http_request.py and, through a real Envoy, the security suites in both modes.
"""

from __future__ import annotations

from collections.abc import Mapping

from authz import canonical
from authz import check_request as envoy_request
from authz import request as request_model

__all__ = ["ENVOY_ATTRIBUTES", "ENVOY_PREFIX", "HttpCheck", "from_http_check"]

ENVOY_PREFIX = "x-tollgate-envoy-"
SOURCE = "x-tollgate-envoy-source"
DESTINATION = "x-tollgate-envoy-destination"
PROTOCOL = "x-tollgate-envoy-protocol"
SCHEME = "x-tollgate-envoy-scheme"
PEER_URI_SAN = "x-tollgate-envoy-peer-uri-san"
PEER_SUBJECT = "x-tollgate-envoy-peer-subject"
# What Envoy adds to every check request, and the command operator it takes the value from.
# Envoy leaves out a header whose value is empty (no client certificate: no peer headers).
ENVOY_ATTRIBUTES = {
    SOURCE: "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
    DESTINATION: "%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%",
    PROTOCOL: "%PROTOCOL%",
    SCHEME: "%REQ(:SCHEME)%",  # the gRPC CheckRequest's :scheme (Envoy sets it on every request)
    PEER_URI_SAN: "%DOWNSTREAM_PEER_URI_SAN%",
    PEER_SUBJECT: "%DOWNSTREAM_PEER_SUBJECT%",
}
# Headers Envoy's own HTTP client sets on the check request (whatever the client sent under these
# names is overwritten, and the gRPC CheckRequest has none of them): not the client's request.
_ENVOY_CLIENT_HEADERS = frozenset({"content-length", "x-envoy-internal", "x-envoy-expected-rq-timeout-ms"})
# The same bounds as a gRPC Check (authz.check_request).
MAX_HEADER_BYTES = 64 * 1024
MAX_HEADER_COUNT = 200
_TRACE_KEYS = frozenset((b"traceparent", b"tracestate", b"b3", b"x-b3-traceid", b"x-b3-spanid", b"x-b3-sampled"))


class HttpCheck:
    """One check request as the HTTP server parsed it: bytes, bounded while they arrive."""

    __slots__ = ("body_bytes", "header_bytes", "lines", "method", "target", "too_large", "trace")

    def __init__(self) -> None:
        self.method = b""
        self.target = b""
        self.lines: list[tuple[bytes, bytes]] = []
        self.header_bytes = 0
        self.body_bytes = 0  # a buffered body (with_request_body) is counted, never kept
        self.too_large = False
        self.trace: list[tuple[bytes, bytes]] = []  # the trace context lines, noted as they arrive

    def add_target(self, part: bytes) -> None:
        self.header_bytes += len(part)
        if self.header_bytes > MAX_HEADER_BYTES:
            self.too_large = True
        else:
            self.target += part

    def add_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value)
        if self.header_bytes > MAX_HEADER_BYTES or len(self.lines) >= MAX_HEADER_COUNT:
            self.too_large = True  # nothing more is kept; the check is refused when complete
        else:
            self.lines.append((name, value))
            if name in _TRACE_KEYS:  # Envoy sends lower-case names
                self.trace.append((name, value))

    def trace_carrier(self) -> dict[str, str]:
        """The trace context Envoy's ext_authz client span put on the check request."""
        return {name.decode("latin-1"): value.decode("latin-1") for name, value in self.trace}


class _Attributes:
    """:class:`~authz.request.Details` from the ``x-tollgate-envoy-*`` headers Envoy added."""

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = values

    def request_id(self) -> str:
        return ""  # x-request-id is among the headers (HttpRequest reads it there first)

    def protocol(self) -> str:
        return self._values.get(PROTOCOL, "")

    def scheme(self) -> str:
        return self._values.get(SCHEME, "")

    def source_ip(self) -> str:
        return self._values[SOURCE]

    def destination(self) -> str:
        return self._values.get(DESTINATION, "")


def from_http_check(check: HttpCheck, *, strict: bool = True) -> request_model.HttpRequest:
    """The canonical request for one HTTP check request. Raises :class:`~authz.canonical.RequestRejected`
    for a request that is too large, is not UTF-8, lacks Envoy's attributes or repeats one of them,
    names its host twice, or whose method, host or path cannot be read one way only."""
    if check.too_large:
        raise canonical.RequestRejected(
            "request_headers_too_large",
            f"request headers exceed {MAX_HEADER_BYTES} bytes or {MAX_HEADER_COUNT} headers",
        )
    headers: dict[str, str] = {}
    envoy: dict[str, str] = {}
    authority: str | None = None
    try:
        method = check.method.decode("ascii")
        target = check.target.decode("utf-8")
        for raw_name, raw_value in check.lines:
            name = raw_name.decode("ascii").lower()  # llhttp admits only token characters
            value = raw_value.decode("utf-8")
            if name.startswith(ENVOY_PREFIX):
                if name in envoy:
                    raise canonical.RequestRejected("request_ambiguous", f"{name} appears more than once")
                envoy[name] = value
            elif name == "host":
                if authority is not None:
                    raise canonical.RequestRejected("request_ambiguous", "the request names its host twice")
                authority = value
            elif name in _ENVOY_CLIENT_HEADERS:
                continue
            elif name in headers:  # Envoy sends one line per name; join as it joins repeats
                headers[name] += "," + value
            else:
                headers[name] = value
    except UnicodeDecodeError as error:
        raise canonical.RequestRejected("request_bad_encoding", "the request is not valid UTF-8") from error
    if not envoy.get(SOURCE):
        raise canonical.RequestRejected(
            "request_envoy_attributes_missing",
            f"Envoy did not send {SOURCE}: its http_service lacks Tollgate's headers_to_add",
        )
    authority = authority or ""  # none: request_host_invalid, as for a gRPC Check
    # The pseudo-headers a gRPC CheckRequest's header map holds, so policies read the same names.
    headers[":authority"], headers[":method"], headers[":path"] = authority, method, target
    if SCHEME in envoy:  # an Envoy configured before Tollgate asked for it sends none
        headers[":scheme"] = envoy[SCHEME]
    return envoy_request.canonical_request(
        method, authority, target, headers, _principal(envoy), _Attributes(envoy), strict=strict
    )


def _principal(envoy: Mapping[str, str]) -> str:
    """As Envoy's gRPC ``source.principal``: the certificate's URI SAN, else its subject. Envoy joins
    several URI SANs with commas, and a URI may hold a comma: such a certificate is refused."""
    uri = envoy.get(PEER_URI_SAN, "")
    if "," in uri:
        raise canonical.RequestRejected(
            "request_principal_ambiguous", "the client certificate's URI SANs cannot be told apart"
        )
    return uri or envoy.get(PEER_SUBJECT, "")
