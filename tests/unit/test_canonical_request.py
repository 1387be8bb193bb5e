"""Request canonicalization: the forms a path can take that must all mean one thing, and the ones
upstream servers disagree on, which are rejected with their own reason. Strict mode (the default)
also refuses encoded dots and double encoding; lenient mode decodes them once."""

from __future__ import annotations

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2

from authz import canonical, check_request, request
from authz.canonical import RequestRejected, canonical_host, canonical_path, canonical_paths
from authz.dev import checks

SAME = [
    ("/", "/"),
    ("/admin", "/admin"),
    ("/admin/", "/admin/"),
    ("//admin", "/admin"),
    ("/admin//users///x", "/admin/users/x"),
    ("/admin/../public", "/public"),
    ("/public/../admin", "/admin"),
    ("/./admin", "/admin"),
    ("/../../../admin", "/admin"),
    ("/admin;x", "/admin"),
    ("/admin;x=1/users", "/admin/users"),
    ("/%61dmin", "/admin"),
    ("/a%7Eb", "/a~b"),
    ("/a%20b", "/a%20b"),
    ("/a%3fb", "/a%3Fb"),
    ("/a/b/..", "/a/"),
    ("/a/./b/.", "/a/b/"),
    ("/ADMIN", "/ADMIN"),
    ("/.well-known/openid-configuration", "/.well-known/openid-configuration"),
]

REJECTED = [
    ("/admin%2Fx", "path_encoded_slash"),
    ("/admin%2fx", "path_encoded_slash"),
    ("/admin%5Cx", "path_encoded_backslash"),
    ("/admin\\x", "path_backslash"),
    ("/admin%00", "path_nul"),
    ("/admin\x00", "path_nul"),
    ("/admin%", "path_bad_escape"),
    ("/admin%4", "path_bad_escape"),
    ("/admin%zz", "path_bad_escape"),
    ("/caf\u00e9", "path_invalid_character"),
    ("/admin\n", "path_invalid_character"),
    ("/ad\tmin", "path_invalid_character"),
    ("/ad\rmin", "path_invalid_character"),
    ("/ad min", "path_invalid_character"),
    ("/ad\x7fmin", "path_invalid_character"),
    ("/ad\x0bmin", "path_invalid_character"),
    ("admin", "path_invalid"),
    ("/" + "a" * 9000, "path_too_long"),
]


# Lenient mode only: strict mode refuses each of these (STRICT_ONLY below).
LENIENT = [
    ("/%2e%2e/admin", "/admin"),
    ("/%2E%2E/admin", "/admin"),
    ("/.%2e/admin", "/admin"),
    ("/%252e%252e/admin", "/%252e%252e/admin"),  # decoded once: a literal segment, not a dot-dot
    ("/a%C0%AE", "/a%C0%AE"),
]

STRICT_ONLY = [
    ("/%2e%2e/admin", "path_encoded_dot"),
    ("/%2E%2E/admin", "path_encoded_dot"),
    ("/.%2e/admin", "path_encoded_dot"),
    ("/%252e%252e/admin", "path_double_encoding"),
    ("/%2561dmin", "path_double_encoding"),
    ("/a%252Fb", "path_double_encoding"),
    ("/public/%25%32%65%25%32%65/admin", "path_double_encoding"),
    ("/%25%36%31dmin", "path_double_encoding"),
    ("/a%C0%AE", "path_invalid_utf8"),
    ("/a%E0%80%AE", "path_invalid_utf8"),
    ("/a%FF", "path_invalid_utf8"),
]

# (path, parameters removed, parameters kept): both readings, when they differ.
READINGS = [
    ("/admin;x", "/admin", "/admin;x"),
    ("/admin;x=1/users", "/admin/users", "/admin;x=1/users"),
    ("/public;/../admin", "/admin", "/admin"),
    ("/;x/admin", "/admin", "/;x/admin"),
    ("/a/b;c/..", "/a/", "/a/"),
    ("/caf%C3%A9;v=1", "/caf%C3%A9", "/caf%C3%A9;v=1"),
]


@pytest.mark.parametrize("strict", [True, False], ids=["strict", "lenient"])
@pytest.mark.parametrize(("raw", "expected"), SAME)
def test_canonical_form(raw: str, expected: str, strict: bool) -> None:
    assert canonical_path(raw, strict=strict) == expected
    assert canonical_path(expected, strict=strict) == expected  # idempotent


@pytest.mark.parametrize(("raw", "expected"), LENIENT)
def test_lenient_mode_decodes_once(raw: str, expected: str) -> None:
    assert canonical_path(raw, strict=False) == expected


@pytest.mark.parametrize(("raw", "code"), STRICT_ONLY)
def test_strict_mode_refuses_encoded_dots_and_double_encoding(raw: str, code: str) -> None:
    with pytest.raises(RequestRejected) as caught:
        canonical_path(raw)
    assert caught.value.code == code


@pytest.mark.parametrize(("raw", "first", "second"), READINGS)
def test_paths_with_parameters_have_two_readings(raw: str, first: str, second: str) -> None:
    assert canonical_paths(raw) == (first, "" if second == first else second)


@pytest.mark.parametrize("strict", [True, False], ids=["strict", "lenient"])
@pytest.mark.parametrize(
    "raw", ["/public/..;/admin", "/admin/..;x/y", "/a/.;/b", "/a/.;x", "/public/%2e%2e;/admin", "/x/..;"]
)
def test_dot_segments_only_without_parameters_are_refused(raw: str, strict: bool) -> None:
    with pytest.raises(RequestRejected) as caught:
        canonical_paths(raw, strict=strict)
    assert caught.value.code in ("path_ambiguous_dot_segment", "path_encoded_dot")
    if not strict or "%" not in raw:
        assert caught.value.code == "path_ambiguous_dot_segment"


@pytest.mark.parametrize("strict", [True, False], ids=["strict", "lenient"])
@pytest.mark.parametrize(("raw", "code"), REJECTED)
def test_rejected(raw: str, code: str, strict: bool) -> None:
    with pytest.raises(RequestRejected) as caught:
        canonical_path(raw, strict=strict)
    assert caught.value.code == code


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Orders.Example.COM", "orders.example.com"),
        ("orders.example.com:8443", "orders.example.com"),
        ("orders.example.com.", "orders.example.com"),
        ("[::1]:8080", "[::1]"),
        ("[0:0:0:0:0:0:0:1]", "[::1]"),
        ("127.0.0.1:9000", "127.0.0.1"),
        ("xn--caf-dma.example", "xn--caf-dma.example"),
        ("a-b.c-d.example", "a-b.c-d.example"),
    ],
)
def test_canonical_host(raw: str, expected: str) -> None:
    assert canonical_host(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "vault.example.com,a.wild.example.com",  # two Host headers, joined by Envoy
        "vault.example.com:a.wild.example.com",
        "a.wild.example.com@vault.example.com",
        "vault.example.com\x00.a.wild.example.com",
        "vault.example.com a.wild.example.com",
        "vault.example.com\na.wild.example.com",
        "vault.example.com\t",
        "example.com:",
        "example.com:80:80",
        "example.com:123456",
        "example.com..",
        ".example.com",
        "-a.example.com",
        "a-.example.com",
        "a_b.example.com",
        "caf\u00e9.example",
        "a" * 64 + ".example",
        ("a" * 60 + ".") * 5,
        "127.1",
        "2130706433",
        "0177.0.0.1",
        "[::1",
        "[fe80::1%eth0]",
        "[::1]x",
        "[example.com]",
        "*.example.com",
        "example.com/admin",
    ],
)
def test_invalid_hosts_are_refused(raw: str) -> None:
    with pytest.raises(RequestRejected) as caught:
        canonical_host(raw)
    assert caught.value.code == "request_host_invalid"


def test_query_and_fragment_are_not_path() -> None:
    assert canonical.split_path("/admin?x=/public#frag") == ("/admin", "x=/public")
    assert canonical.split_path("/a#b?c") == ("/a", "")


def test_check_request_is_canonicalized() -> None:
    parsed = check_request.from_check_request(checks.check_request(host="A.test:80", path="//x/../admin?q=1"))
    assert (parsed.host, parsed.path, parsed.raw_path, parsed.query) == ("a.test", "/admin", "//x/../admin", "q=1")


def test_rejection_keeps_what_was_sent_for_the_audit_trail() -> None:
    with pytest.raises(RequestRejected) as caught:
        check_request.from_check_request(checks.check_request(path="/a%2Fb", request_id="rid-7"))
    assert caught.value.request is not None
    assert (caught.value.request.path, caught.value.request.request_id) == ("/a%2Fb", "rid-7")


def test_oversized_headers_are_rejected() -> None:
    big = checks.check_request(headers={"x-big": "a" * 70_000})
    with pytest.raises(RequestRejected) as caught:
        check_request.from_check_request(big)
    assert caught.value.code == "request_headers_too_large"
    many = checks.check_request(headers={f"x-h{i}": "v" for i in range(300)})
    with pytest.raises(RequestRejected):
        check_request.from_check_request(many)


def test_the_wire_size_skips_the_header_count_only_when_it_proves_the_bound() -> None:
    # The service passes the serialized length: a small message cannot hold 64 KiB of headers,
    # a large one is measured as before (headers and buffered body told apart).
    small = checks.check_request(path="/x")
    assert check_request.from_check_request(small, len(small.SerializeToString())).path == "/x"
    big = checks.check_request(headers={"x-big": "a" * 70_000})
    with pytest.raises(RequestRejected) as caught:
        check_request.from_check_request(big, len(big.SerializeToString()))
    assert caught.value.code == "request_headers_too_large"
    upload = checks.check_request(path="/upload")
    upload.attributes.request.http.body = "x" * 200_000
    assert check_request.from_check_request(upload, len(upload.SerializeToString())).path == "/upload"
    many = checks.check_request(headers={f"x-h{i}": "v" for i in range(300)})
    with pytest.raises(RequestRejected):
        check_request.from_check_request(many, len(many.SerializeToString()))


def test_a_buffered_body_is_not_counted_as_headers() -> None:
    # Envoy's `with_request_body` puts the body into the CheckRequest; a large one must not make
    # an ordinary request look like one with oversized headers.
    for field, value in [("body", "x" * 200_000), ("raw_body", b"\x00" * 200_000)]:
        message = checks.check_request(path="/upload")
        setattr(message.attributes.request.http, field, value)
        assert check_request.from_check_request(message).path == "/upload"
        message.attributes.request.http.headers["x-big"] = "a" * 70_000
        with pytest.raises(RequestRejected) as caught:
            check_request.from_check_request(message)
        assert caught.value.code == "request_headers_too_large"


def test_repeated_targets_give_the_same_answer_and_rejections_stay_rejections() -> None:
    # The canonical form of each (authority, target) is remembered; asking twice must not change
    # the answer, and a rejected target must be rejected (with what was sent) every time.
    for _ in range(2):
        parsed = check_request.from_check_request(
            checks.check_request(host="B.test:8443", path="/x/%2e%2e/y?z"), strict=False
        )
        assert (parsed.host, parsed.path, parsed.raw_path, parsed.query) == ("b.test", "/y", "/x/%2e%2e/y", "z")
        with pytest.raises(RequestRejected) as caught:  # the same target, in strict mode: its own table
            check_request.from_check_request(checks.check_request(host="B.test:8443", path="/x/%2e%2e/y?z"))
        assert caught.value.code == "path_encoded_dot"
        with pytest.raises(RequestRejected) as caught:
            check_request.from_check_request(checks.check_request(path="/a%5Cb", request_id="rid-8"))
        assert caught.value.code == "path_encoded_backslash"
        assert caught.value.request is not None and caught.value.request.request_id == "rid-8"
    long_target = "/" + "a/" * 600 + "../b"
    assert check_request.from_check_request(checks.check_request(path=long_target)).path == "/" + "a/" * 599 + "b"


def test_connection_details_are_read_from_envoys_attributes_when_asked_for() -> None:
    message = checks.check_request(source_ip="203.0.113.9", principal="spiffe://c/ns/a/sa/b", request_id="r-5")
    parsed = check_request.from_check_request(message)
    assert (parsed.request_id, parsed.source_principal) == ("r-5", "spiffe://c/ns/a/sa/b")
    assert (parsed.source_ip, parsed.destination, parsed.protocol, parsed.scheme) == (
        "203.0.113.9",
        "127.0.0.1",
        "HTTP/1.1",
        "http",
    )
    without_id = checks.check_request(request_id="")
    del without_id.attributes.request.http.headers["x-request-id"]
    assert check_request.from_check_request(without_id).request_id == "1"  # Envoy's own id for the stream
    given = request.HttpRequest("GET", "a.test", "/", source_ip="10.0.0.1", protocol="HTTP/2")
    assert (given.source_ip, given.protocol, given.destination, given.scheme) == ("10.0.0.1", "HTTP/2", "", "")


def test_only_small_targets_are_remembered() -> None:
    # Memory stays bounded whatever clients send: long authorities or targets are not remembered.
    long_host = ".".join(["h" * 60] * 4)  # a valid name of 243 characters
    for host, path in [("h.test", "/" + "a" * 600), (long_host, "/" + "a" * 300), ("h.test", "/small")]:
        parsed = check_request.from_check_request(checks.check_request(host=host, path=path))
        assert parsed.path == path
        assert ((host, path) in check_request._targets[True]) == (len(host) + len(path) <= 512)


def _raw_headers_request(headers: dict[str, bytes]) -> external_auth_pb2.CheckRequest:
    """What Envoy sends with ``encode_raw_headers``: no ``headers`` map, no method/path/host fields."""
    context = attribute_context_pb2.AttributeContext
    raw = [base_pb2.HeaderValue(key=k, raw_value=v) for k, v in headers.items()]
    http = context.HttpRequest(id="9", header_map=base_pb2.HeaderMap(headers=raw), protocol="HTTP/2")
    return external_auth_pb2.CheckRequest(attributes=context(request=context.Request(http=http)))


def test_raw_header_bytes_are_read_from_the_header_map() -> None:
    parsed = check_request.from_check_request(
        _raw_headers_request(
            {":method": b"POST", ":path": b"//api/./orders?id=1", ":authority": b"Shop.test:443", "X-Tenant": b"acme"}
        )
    )
    assert (parsed.method, parsed.host, parsed.path, parsed.query) == ("POST", "shop.test", "/api/orders", "id=1")
    assert parsed.headers["x-tenant"] == "acme"


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({":method": b"GET", ":path": b"/", "x-bad": b"\xff\xfe"}, "request_bad_encoding"),
        ({":path": b"/", ":authority": b"a.test"}, "request_missing_method"),
        ({":method": b"GET", ":authority": b"a.test"}, "request_missing_path"),
    ],
)
def test_raw_header_map_failures_have_their_own_reason(headers: dict[str, bytes], code: str) -> None:
    with pytest.raises(RequestRejected) as caught:
        check_request.from_check_request(_raw_headers_request(headers))
    assert caught.value.code == code


def test_a_bad_method_is_refused_with_what_was_sent_also_for_a_remembered_target() -> None:
    # The method is not part of the remembered target: it is checked on every request.
    assert check_request.from_check_request(checks.check_request(method="GET", path="/m")).method == "GET"
    for method in ("get", "GET\n", "X" * 40):
        with pytest.raises(RequestRejected) as caught:
            check_request.from_check_request(checks.check_request(method=method, path="/m", request_id="rid-m"))
        assert caught.value.code == "request_method_invalid"
        assert caught.value.request is not None
        assert (caught.value.request.method, caught.value.request.request_id) == (method[:32], "rid-m")


@pytest.mark.parametrize(
    ("pseudo", "refused"),
    [
        ({}, False),  # a caller that sends none: nothing to disagree with
        ({":method": "GET"}, False),
        ({":path": "/a"}, False),
        ({":method": "DELETE"}, True),
        ({":path": "/admin"}, True),
        ({":authority": "other.test"}, True),
        ({":method": "GET", ":path": "/a", ":authority": "a.test"}, False),
        ({":method": "GET", ":path": "/a", ":authority": "b.test"}, True),
    ],
)
def test_pseudo_headers_must_agree_with_the_requests_fields(pseudo: dict[str, str], refused: bool) -> None:
    message = checks.check_request(method="GET", host="a.test", path="/a")
    headers = message.attributes.request.http.headers
    for name in (":method", ":path", ":authority"):
        del headers[name]
    headers.update(pseudo)
    if not refused:
        assert check_request.from_check_request(message).path == "/a"
        return
    with pytest.raises(RequestRejected) as caught:
        check_request.from_check_request(message)
    assert caught.value.code == "request_ambiguous"


def test_the_adapter_fills_every_field_in_its_place() -> None:
    # The adapter builds HttpRequest by position (a speed trick): each field must land where it belongs.
    parsed = check_request.from_check_request(
        checks.check_request(
            method="PUT",
            host="Shop.Test:8443",
            path="//a;v=1/../b;x?q=1",
            headers={"x-extra": "1"},
            source_ip="192.0.2.7",
            principal="spiffe://corp.test/ns/a/sa/b",
            request_id="rid-9",
        )
    )
    assert (parsed.method, parsed.host, parsed.path, parsed.path_with_parameters) == ("PUT", "shop.test", "/b", "/b;x")
    assert (parsed.raw_path, parsed.query, parsed.headers["x-extra"]) == ("//a;v=1/../b;x", "q=1", "1")
    assert (parsed.source_principal, parsed.source_ip, parsed.request_id) == (
        "spiffe://corp.test/ns/a/sa/b",
        "192.0.2.7",
        "rid-9",
    )
    assert (parsed.protocol, parsed.scheme, parsed.destination) == ("HTTP/1.1", "http", "127.0.0.1")
