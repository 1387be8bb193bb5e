"""Request canonicalization: the forms a path can take that must all mean one thing, and the ones
upstream servers disagree on, which are rejected with their own reason."""

from __future__ import annotations

import pytest

from authz import request
from authz.dev import checks
from authz.request import RequestRejected, canonical_host, canonical_path

SAME = [
    ("/", "/"),
    ("/admin", "/admin"),
    ("/admin/", "/admin/"),
    ("//admin", "/admin"),
    ("/admin//users///x", "/admin/users/x"),
    ("/admin/../public", "/public"),
    ("/public/../admin", "/admin"),
    ("/%2e%2e/admin", "/admin"),
    ("/%2E%2E/admin", "/admin"),
    ("/.%2e/admin", "/admin"),
    ("/./admin", "/admin"),
    ("/../../../admin", "/admin"),
    ("/admin;x", "/admin"),
    ("/admin;x=1/users", "/admin/users"),
    ("/public/..;/admin", "/admin"),
    ("/%61dmin", "/admin"),
    ("/a%7Eb", "/a~b"),
    ("/a%20b", "/a%20b"),
    ("/a%3fb", "/a%3Fb"),
    ("/a/b/..", "/a/"),
    ("/a/./b/.", "/a/b/"),
    ("/ADMIN", "/ADMIN"),
    ("/%252e%252e/admin", "/%252e%252e/admin"),  # decoded once: a literal segment, not a dot-dot
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
    ("admin", "path_invalid"),
    ("/" + "a" * 9000, "path_too_long"),
]


@pytest.mark.parametrize(("raw", "expected"), SAME)
def test_canonical_form(raw: str, expected: str) -> None:
    assert canonical_path(raw) == expected
    assert canonical_path(expected) == expected  # idempotent


@pytest.mark.parametrize(("raw", "code"), REJECTED)
def test_rejected(raw: str, code: str) -> None:
    with pytest.raises(RequestRejected) as caught:
        canonical_path(raw)
    assert caught.value.code == code


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Orders.Example.COM", "orders.example.com"),
        ("orders.example.com:8443", "orders.example.com"),
        ("orders.example.com.", "orders.example.com"),
        ("[::1]:8080", "[::1]"),
        ("", ""),
    ],
)
def test_canonical_host(raw: str, expected: str) -> None:
    assert canonical_host(raw) == expected


def test_query_and_fragment_are_not_path() -> None:
    assert request.split_path("/admin?x=/public#frag") == ("/admin", "x=/public")
    assert request.split_path("/a#b?c") == ("/a", "")


def test_check_request_is_canonicalized() -> None:
    parsed = request.from_check_request(checks.check_request(host="A.test:80", path="//x/../admin?q=1"))
    assert (parsed.host, parsed.path, parsed.raw_path, parsed.query) == ("a.test", "/admin", "//x/../admin", "q=1")


def test_rejection_keeps_what_was_sent_for_the_audit_trail() -> None:
    with pytest.raises(RequestRejected) as caught:
        request.from_check_request(checks.check_request(path="/a%2Fb", request_id="rid-7"))
    assert caught.value.request is not None
    assert (caught.value.request.path, caught.value.request.request_id) == ("/a%2Fb", "rid-7")


def test_oversized_headers_are_rejected() -> None:
    big = checks.check_request(headers={"x-big": "a" * 70_000})
    with pytest.raises(RequestRejected) as caught:
        request.from_check_request(big)
    assert caught.value.code == "request_headers_too_large"
    many = checks.check_request(headers={f"x-h{i}": "v" for i in range(300)})
    with pytest.raises(RequestRejected):
        request.from_check_request(many)
