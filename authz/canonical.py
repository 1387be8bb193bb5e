"""The canonicalization rules: the security contract, as pure functions of strings.

Tollgate judges the request the upstream will act on, and where upstream servers could read a
request two ways it is refused (400, with its own reason, :class:`RequestRejected`) or judged on
every reading, never on one. This module says what each reading is; it knows nothing of Envoy or
protobuf (that is :mod:`authz.check_request`), so every rule here is testable with plain strings.

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
optional numeric port; they are lower-cased and lose the port and a trailing dot. Methods are
upper-case tokens. Method override headers (``X-HTTP-Method-Override`` and its spellings) name
more methods the upstream may act on; names in the ``x-tollgate-`` namespace are Tollgate's alone.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from authz import request as request_model

__all__ = [
    "METHOD_OVERRIDES",
    "RESERVED_PREFIX",
    "RequestRejected",
    "canonical_host",
    "canonical_path",
    "canonical_paths",
    "check_method",
    "is_method",
    "method_overrides",
    "reserved_names",
    "split_path",
]

MAX_PATH_BYTES = 8 * 1024

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset("0123456789abcdefABCDEF")
# A path that needs no work at all: the fast path for the overwhelmingly common case.
_PLAIN_PATH = re.compile(r"^(?:/[A-Za-z0-9\-_~!$&'()*+,=:@]+(?:\.[A-Za-z0-9\-_~!$&'()*+,=:@]+)*)*/?$")
# Headers Tollgate alone may set for the upstream; any client-sent header in this namespace is removed.
RESERVED_PREFIX = "x-tollgate-"
METHOD_OVERRIDES = ("x-http-method-override", "x-http-method", "x-method-override")


class RequestRejected(Exception):
    """The request cannot be read one way only; ``code`` is the deny reason (e.g. ``path_encoded_slash``).

    ``request`` holds what could be read of it (path as sent), for the audit record.
    """

    def __init__(self, code: str, message: str, request: request_model.HttpRequest | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request = request


def canonical_host(authority: str) -> str:
    """The host a request is filed under: ``Orders.Example.com:8443`` → ``orders.example.com``.

    The authority must be a DNS name (letters, digits and hyphens in dot-separated labels of 1 to 63
    characters, at most 253 in all, a trailing dot allowed) or an IP literal (dotted-quad IPv4 or a
    bracketed IPv6 address without zone), optionally followed by ``:`` and a numeric port.
    Anything else — two Host headers Envoy joined with a comma, ``a@b``, ``a:b``, a NUL, a space —
    can be read differently by the upstream and is :class:`RequestRejected` as
    ``request_host_invalid``.
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
    if len(path) > MAX_PATH_BYTES:
        raise RequestRejected("path_too_long", f"path exceeds {MAX_PATH_BYTES} bytes")
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


# A method is a token (RFC 9110 §9.1) and case-sensitive: "get" is not GET to Go or Node, so only
# upper-case tokens are accepted rather than judging "get" as GET. The usual ones skip the regex.
METHOD = re.compile(r"[A-Z0-9!#$%&'*+.^_`|~-]{1,32}")
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"})


def is_method(method: str) -> bool:
    return method in KNOWN_METHODS or METHOD.fullmatch(method) is not None


def check_method(method: str) -> str:
    """``method`` if it is an upper-case token, else :class:`RequestRejected` ``request_method_invalid``."""
    if not is_method(method):
        raise RequestRejected("request_method_invalid", "the method is not an upper-case HTTP token")
    return method


def method_overrides(headers: Mapping[str, str], method: str) -> tuple[str, ...]:
    """Methods other than ``method`` the request asks the upstream to act on (``X-HTTP-Method-Override``
    and its spellings; repeated headers arrive joined with commas), each an upper-case token, else
    :class:`RequestRejected` ``request_method_override_invalid``."""
    found: list[str] = []
    for name in METHOD_OVERRIDES:
        value = headers.get(name)
        if value is not None:
            for item in value.split(","):
                override = item.strip()
                if not is_method(override):
                    raise RequestRejected("request_method_override_invalid", f"{name} is not an HTTP method")
                if override != method and override not in found:
                    found.append(override)
    return tuple(found)


def reserved_names(names: Iterable[str]) -> tuple[str, ...]:
    """The header names in Tollgate's reserved namespace (``x-tollgate-*`` in any spelling: ``_``
    for ``-``, any case), which must never reach the upstream as a client sent them."""
    return tuple(name for name in names if name.lower().replace("_", "-").startswith(RESERVED_PREFIX))
