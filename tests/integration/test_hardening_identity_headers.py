"""Class 4, the identity headers: what the upstream is told about the caller is whole, unambiguous,
and only ever Tollgate's.

Through both Envoys to ``app.test`` (anyone signed in, plus a public path). The upstream parses
``x-tollgate-groups`` / ``-roles`` as RFC 9651 lists (http_sfv), as docs/policy.md tells upstreams to.
"""

from __future__ import annotations

import http_sfv
import pytest

pytestmark = pytest.mark.envoy


def _list(copies: list[str]) -> list[str]:
    assert len(copies) == 1, copies
    parsed = http_sfv.List()
    parsed.parse(copies[0].encode())
    return [str(item.value) for item in parsed]


# Groups that must reach the upstream exactly as the token lists them.
WHOLE = [
    ["staff", "admins-readonly"],
    ["staff,admins"],  # one group with a comma: never "staff" and "admins"
    ["x" * 1000, "admins-readonly"],  # long, but within the bound: not cut
    ['quote"and\\backslash', "sp ace"],
    ["caf\u00e9", "\u7ba1\u7406\u8005"],  # non-ASCII: display strings
]


@pytest.mark.parametrize("groups", WHOLE, ids=["plain", "comma", "long", "quotes", "unicode"])
def test_groups_reach_the_upstream_whole(hardening, mode: str, groups: list[str]) -> None:
    answer = hardening.send(mode, "GET", "/x", "app.test", [hardening.bearer("alice", groups=groups, roles=groups)])
    assert answer.upstream is not None, (answer.status, answer.body)
    assert _list(answer.received("x-tollgate-groups")) == groups
    assert _list(answer.received("x-tollgate-roles")) == groups
    assert answer.received("x-tollgate-subject") == ["alice"]


# Values that cannot be passed on whole: refused, never cut short.
REFUSED = [
    {"groups": ["x" * 1100, "admins-readonly"]},  # cutting at 1,024 once left "...,admins"
    {"groups": ["staff", "line\nbreak"]},
    {"groups": ["staff", ""]},
    {"groups": ["g"] * 300},
    {"subject": "s" * 1100},  # two long subjects once collided after the cut
    {"subject": "alice\r\nx-tollgate-groups: admins"},
    {"subject": "j\u00f6rg"},  # a plain header value is ASCII: Latin-1 and UTF-8 readers would differ
    {"subject": " alice"},
]


@pytest.mark.parametrize("claims", REFUSED, ids=[str(i) for i in range(len(REFUSED))])
def test_values_that_do_not_fit_are_refused_not_cut(hardening, mode: str, claims: dict[str, object]) -> None:
    subject = str(claims.get("subject", "alice"))
    groups = claims.get("groups", [])
    answer = hardening.send(mode, "GET", "/x", "app.test", [hardening.bearer(subject, groups=groups)])
    assert answer.upstream is None
    assert (answer.status, answer.reason) == (401, "token_invalid_claims")


RESERVED_SPELLINGS = [
    "x-tollgate-subject",
    "X-Tollgate-Groups",
    "x-tollgate-email",
    "x-tollgate-tenant",
    "x-tollgate-decision-id",
    "x_tollgate_subject",
    "X_TOLLGATE_GROUPS",
    "x-tollgate_roles",
    "x_tollgate-principal",
    "X-TOLLGATE-ANYTHING-NEW",
]


@pytest.mark.parametrize("signed_in", [False, True], ids=["anonymous", "signed-in"])
def test_no_client_header_in_the_reserved_namespace_reaches_the_upstream(hardening, mode: str, signed_in: bool) -> None:
    lines = [(name, "spoofed") for name in RESERVED_SPELLINGS]
    if signed_in:
        lines.append(hardening.bearer("alice", groups=["staff"]))
    answer = hardening.send(mode, "GET", "/public" if not signed_in else "/x", "app.test", lines)
    assert answer.upstream is not None, (answer.status, answer.body)
    seen = answer.upstream["headers"]
    for name, values in seen.items():
        normalized = name.lower().replace("_", "-")
        if normalized.startswith("x-tollgate-"):
            assert "spoofed" not in values, f"client-sent {name} reached the upstream"
            assert "_" not in name
    reserved = sorted(name for name in seen if name.startswith("x-tollgate-"))
    if signed_in:
        assert reserved == [
            "x-tollgate-auth-method",
            "x-tollgate-decision-id",
            "x-tollgate-groups",
            "x-tollgate-subject",
        ]
        assert seen["x-tollgate-subject"] == ["alice"]
    else:
        assert reserved == ["x-tollgate-decision-id"]
    assert len(seen["x-tollgate-decision-id"]) == 1
