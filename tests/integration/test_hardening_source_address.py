"""Class 3, the source address: an IP condition is decided on one parsed address or fails closed.

Over the gRPC port (Envoy always reports a real address; a gRPC client can send anything). Three
hosts: ``ipdeny.test`` denies 127.0.0.0/8, ``ipnot.test`` denies everything outside
192.0.2.0/24, ``ipallow.test`` allows only 192.0.2.0/24. An address that is not one address —
empty, a name, with a port or a zone, a pipe — denies with ``source_address_invalid`` on every
host that has an IP condition, and IPv4-mapped IPv6 is the IPv4 address it carries.
"""

from __future__ import annotations

import json

import pytest
from envoy.config.core.v3 import address_pb2

from authz.dev import checks

pytestmark = pytest.mark.envoy

UNREADABLE = ["", "not-an-ip", "127.0.0.1:80", "fe80::1%eth0", " 127.0.0.1", "127.1", "::ffff:127.0.0.1/8"]

# (source, host, allowed, reason when denied)
CASES = [
    *[
        (source, host, False, "source_address_invalid")
        for source in UNREADABLE
        for host in ("ipdeny.test", "ipnot.test", "ipallow.test")
    ],
    ("127.0.0.1", "ipdeny.test", False, "rule_deny"),
    ("::ffff:127.0.0.1", "ipdeny.test", False, "rule_deny"),  # IPv4-mapped: the same address
    ("::ffff:7f00:1", "ipdeny.test", False, "rule_deny"),
    ("0:0:0:0:0:ffff:127.0.0.9", "ipdeny.test", False, "rule_deny"),
    ("10.0.0.1", "ipdeny.test", True, ""),
    ("::1", "ipdeny.test", True, ""),  # IPv6 loopback is another address; write ::1/128 to deny it
    ("192.0.2.5", "ipnot.test", True, ""),
    ("::ffff:192.0.2.5", "ipnot.test", True, ""),
    ("198.51.100.1", "ipnot.test", False, "rule_deny"),
    ("192.0.2.5", "ipallow.test", True, ""),
    ("::ffff:192.0.2.5", "ipallow.test", True, ""),
    ("198.51.100.1", "ipallow.test", False, "default_deny"),
    ("not-an-ip", "headers.test", True, ""),  # no IP condition on this host: the address is not read
]


def _outcome(reply: object) -> tuple[bool, str]:
    if reply.status.code == 0:  # type: ignore[attr-defined]
        return True, ""
    return False, json.loads(reply.denied_response.body)["reason"]  # type: ignore[attr-defined]


@pytest.mark.parametrize(("source", "host", "allowed", "reason"), CASES, ids=[f"{c[0]!r}-{c[1]}" for c in CASES])
def test_ip_conditions_fail_closed(hardening, source: str, host: str, allowed: bool, reason: str) -> None:
    reply = hardening.check(checks.check_request(host=host, path="/", source_ip=source))
    assert _outcome(reply) == (allowed, reason)


def test_a_pipe_source_is_not_an_address(hardening) -> None:
    message = checks.check_request(host="ipnot.test", path="/")
    message.attributes.source.address.CopyFrom(address_pb2.Address(pipe=address_pb2.Pipe(path="/run/envoy.sock")))
    assert _outcome(hardening.check(message)) == (False, "source_address_invalid")


def test_through_envoy_the_loopback_client_is_denied(hardening, mode: str) -> None:
    answer = hardening.send(mode, "GET", "/", "ipdeny.test")
    assert answer.upstream is None and (answer.status, answer.reason) == (401, "rule_deny")
    assert hardening.send(mode, "GET", "/", "ipnot.test").reason == "rule_deny"
