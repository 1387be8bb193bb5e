"""Class 1, the host: a request is filed under exactly the host the upstream sees, or refused.

Through both Envoys (normalize on and off). ``vault.example.com`` allows nobody without the
``vault-admins`` group; ``*.wild.example.com`` allows everyone. Every way of naming both hosts at
once must be refused (400 ``request_host_invalid``) and never reach the upstream; every request that
does reach it must carry a Host the wildcard policy really covers.
"""

from __future__ import annotations

import pytest

from authz.canonical import RequestRejected, canonical_host

pytestmark = pytest.mark.envoy

# (Host header lines, request target) → refused as request_host_invalid, never upstream.
REFUSED = [
    ([("Host", "vault.example.com"), ("Host", "a.wild.example.com")], "/"),  # Envoy joins them with ","
    ([("Host", "a.wild.example.com"), ("Host", "vault.example.com")], "/"),
    ([("Host", "vault.example.com,a.wild.example.com")], "/"),
    ([("Host", "vault.example.com:a.wild.example.com")], "/"),
    ([("Host", "a.wild.example.com@vault.example.com")], "/"),
    ([("Host", "vault.example.com@a.wild.example.com")], "/"),
    ([("Host", "a.wild.example.com:80@vault.example.com")], "/"),
    ([("Host", "a.wild.example.com:x")], "/"),
    ([("Host", "a.wild.example.com:")], "/"),
    ([("Host", "a_b.wild.example.com")], "/"),
    ([("Host", "a..wild.example.com")], "/"),
    ([("Host", ".wild.example.com")], "/"),
    ([("Host", "a.wild.example.com..")], "/"),
]
# Envoy's own HTTP parser refuses these before any check (a 400 of its own); Tollgate's answer to
# the same host over gRPC is in tests/unit/test_canonical_request.py.
REFUSED_BY_ENVOY = [([("Host", "a.wild.example.com/x")], "/")]

# Spellings of an allowed host: reach the upstream, with a Host the policy covers.
ALLOWED = [
    ([("Host", "a.wild.example.com")], "/"),
    ([("Host", "A.Wild.Example.COM")], "/"),
    ([("Host", "a.wild.example.com.")], "/"),
    ([("Host", "a.wild.example.com:8443")], "/"),
    ([("Host", "x.y.wild.example.com")], "/"),
]


def _covered_by_wildcard(host_header: str) -> bool:
    try:
        host = canonical_host(host_header)
    except RequestRejected:
        return False
    return host.endswith(".wild.example.com") and len(host) > len(".wild.example.com")


@pytest.mark.parametrize(("lines", "target"), REFUSED, ids=[repr(lines) for lines, _ in REFUSED])
def test_ambiguous_hosts_are_refused(hardening, mode: str, lines: list[tuple[str, str]], target: str) -> None:
    answer = hardening.send(mode, "GET", target, None, lines)
    assert answer.upstream is None, f"reached the upstream: {answer.upstream}"
    assert (answer.status, answer.reason) == (400, "request_host_invalid"), answer.body


@pytest.mark.parametrize(("lines", "target"), REFUSED_BY_ENVOY, ids=[repr(lines) for lines, _ in REFUSED_BY_ENVOY])
def test_hosts_envoy_refuses_itself_never_reach_the_upstream(
    hardening, mode: str, lines: list[tuple[str, str]], target: str
) -> None:
    answer = hardening.send(mode, "GET", target, None, lines)
    assert answer.upstream is None and (answer.status, answer.reason) == (400, "")


@pytest.mark.parametrize(("lines", "target"), ALLOWED, ids=[repr(lines) for lines, _ in ALLOWED])
def test_allowed_hosts_reach_the_upstream_as_judged(
    hardening, mode: str, lines: list[tuple[str, str]], target: str
) -> None:
    answer = hardening.send(mode, "GET", target, None, lines)
    assert answer.upstream is not None, (answer.status, answer.body)
    received = answer.received("host")
    assert len(received) == 1 and _covered_by_wildcard(received[0]), received


def test_the_vault_is_locked_and_its_wildcard_neighbour_open(hardening, mode: str) -> None:
    # The policies are real: without these the refusals above would prove nothing.
    assert hardening.send(mode, "GET", "/", "vault.example.com").status == 401
    assert hardening.send(mode, "GET", "/", "vault.example.com", [hardening.bearer("eve")]).status == 403
    admin = hardening.send(mode, "GET", "/", "vault.example.com", [hardening.bearer("vic", groups=["vault-admins"])])
    assert admin.upstream is not None and admin.received("host") == ["vault.example.com"]
    # Wildcards match whole labels: "evilwild.example.com" is not below "wild.example.com".
    assert hardening.send(mode, "GET", "/", "evilwild.example.com").upstream is None


def test_an_absolute_target_is_judged_on_the_host_envoy_forwards(hardening, mode: str) -> None:
    # "GET http://vault.example.com/" with a wildcard Host: Envoy routes (and forwards) the
    # target's authority, and so does Tollgate judge it.
    answer = hardening.send(mode, "GET", "http://vault.example.com/", "a.wild.example.com")
    assert answer.upstream is None and answer.status == 401


@pytest.mark.parametrize(
    "authority",
    [
        "vault.example.com\x00.a.wild.example.com",
        "a.wild.example.com vault.example.com",
        "a.wild.example.com\nvault.example.com",
        "a.wild.example.com\r\n",
        "a.wild.example.com\t",
        "a.wild.example.com\x7f",
        "",
    ],
)
def test_control_characters_in_the_host_are_refused_at_the_port(hardening, transport: str, authority: str) -> None:
    # Envoy never sends these; a client of Tollgate's port can. Over HTTP, llhttp refuses some bytes
    # first, and a CR LF ends the request early, before the lines Envoy would have added.
    status, reason = hardening.direct(transport, host=authority, path="/")
    over_http = {"request_parse_error", "request_envoy_attributes_missing"} if transport == "http" else set()
    allowed = {"request_host_invalid"} | over_http
    assert status == 400 and reason in allowed
