"""The canonical, typed HTTP request every later stage works on: plain and transport-free.

Built by the Envoy adapter (:mod:`authz.check_request`) from a ``CheckRequest``, and by tests
directly. Its host and path are already canonical (:mod:`authz.canonical`), so a policy written for
``/admin`` cannot be side-stepped with ``//admin`` or ``/%2e%2e/admin``.

What only some policies, denied answers and the audit record look at (the request id, the
connection's addresses, protocol and scheme) comes from a :class:`Details` reader, asked on first
use: the adapter's reads protobuf fields, each about half a microsecond under load, and most
allowed Checks need none of them.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Protocol

from authz import canonical

__all__ = ["Details", "HttpRequest"]

_NO_HEADERS: Mapping[str, str] = types.MappingProxyType({})


class Details(Protocol):
    """Where a request's less-used attributes are read from, when first asked for."""

    def request_id(self) -> str: ...
    def protocol(self) -> str: ...
    def scheme(self) -> str: ...
    def source_ip(self) -> str: ...
    def destination(self) -> str: ...


class _Given:
    """Details given up front (tests, ``explain``): nothing to read later."""

    __slots__ = ()

    def request_id(self) -> str:
        return ""

    def protocol(self) -> str:
        return ""

    def scheme(self) -> str:
        return ""

    def source_ip(self) -> str:
        return ""

    def destination(self) -> str:
        return ""


_GIVEN = _Given()


class HttpRequest:
    """One HTTP request as the policy engine sees it. Treated as immutable.

    ``path`` is the canonical path with path parameters removed, ``path_with_parameters`` the
    canonical path with them kept when that is another reading ("" otherwise), ``raw_path`` the
    path as sent, ``query`` the query string (never matched against). The Envoy adapter passes
    the first nine arguments by position (half the cost of keywords, once per Check; its fields
    are checked in tests/unit/test_canonical_request.py); everyone else names them.
    """

    __slots__ = (
        "_destination",
        "_details",
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

    def __init__(  # noqa: PLR0917 - the Envoy adapter passes nine by position (see the class docstring)
        self,
        method: str,
        host: str,
        path: str,
        raw_path: str = "",
        query: str = "",
        path_with_parameters: str = "",
        headers: Mapping[str, str] = _NO_HEADERS,
        source_principal: str = "",
        details: Details = _GIVEN,
        *,
        request_id: str | None = None,
        protocol: str | None = None,
        scheme: str | None = None,
        source_ip: str | None = None,
        destination: str | None = None,
    ) -> None:
        self.method = method
        self.host = host
        self.path = path
        self.raw_path = raw_path
        self.path_with_parameters = path_with_parameters
        self.query = query
        self.headers = headers
        self.source_principal = source_principal
        self._details = details
        self._request_id = request_id
        self._protocol = protocol
        self._scheme = scheme
        self._source_ip = source_ip
        self._destination = destination
        self._names: str | None = None

    @property
    def request_id(self) -> str:
        """x-request-id: the id Envoy, the upstream and the access log share (Envoy's internal id if absent)."""
        if self._request_id is None:
            self._request_id = self.headers.get("x-request-id") or self._details.request_id()
        return self._request_id

    @property
    def protocol(self) -> str:
        if self._protocol is None:
            self._protocol = self._details.protocol()
        return self._protocol

    @property
    def scheme(self) -> str:
        if self._scheme is None:
            self._scheme = self._details.scheme()
        return self._scheme

    @property
    def source_ip(self) -> str:
        if self._source_ip is None:
            self._source_ip = self._details.source_ip()
        return self._source_ip

    @property
    def destination(self) -> str:
        if self._destination is None:
            self._destination = self._details.destination()
        return self._destination

    def method_overrides(self) -> tuple[str, ...]:
        """Methods the request asks the upstream to act on instead of its own (see
        :func:`authz.canonical.method_overrides`): the policy judges every one of them too."""
        if "-method" not in self._header_names():  # the usual request (":method" is not one): no lookups
            return ()
        return canonical.method_overrides(self.headers, self.method)

    def reserved_headers(self) -> tuple[str, ...]:
        """The names of client-sent headers in Tollgate's reserved namespace (``x-tollgate-*`` in any
        spelling), which must never reach the upstream as sent."""
        if "tollgate" not in self._header_names():  # the usual request
            return ()
        return canonical.reserved_names(self.headers)

    def _header_names(self) -> str:
        """Every header name, lower-cased, one per line: read from the map once (in C), for the
        screens above, which only allowed requests reach."""
        if self._names is None:
            self._names = "\n".join(self.headers).lower()
        return self._names

    def __repr__(self) -> str:
        return f"HttpRequest({self.method} {self.host}{self.path}, request_id={self.request_id!r})"
