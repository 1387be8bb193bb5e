"""Host ownership between namespaces: the first claim keeps a host, overlapping claims from other
namespaces are rejected whole, and delegations override the order."""

from __future__ import annotations

import itertools

import pytest
from authz_operator import ownership
from authz_operator.ownership import Claim


def _claim(namespace: str, name: str, created: str, *hosts: str) -> Claim:
    return Claim(namespace, name, f"2026-11-30T00:00:{created}Z", hosts)


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        ("orders.example.com", "orders.example.com", True),
        ("Orders.Example.com.", "orders.example.com", True),
        ("orders.example.com", "shop.example.com", False),
        ("*.example.com", "orders.example.com", True),
        ("*.example.com", "a.b.example.com", True),  # Tollgate's wildcards match any depth
        ("*.example.com", "example.com", False),
        ("*.example.com", "*.orders.example.com", True),
        ("*.example.com", "*.example.org", False),
        ("*", "anything.test", True),
        ("notexample.com", "*.example.com", False),
    ],
)
def test_overlap(first: str, second: str, expected: bool) -> None:
    assert ownership.overlap(first, second) is expected
    assert ownership.overlap(second, first) is expected


def test_first_claim_wins_and_the_later_one_is_rejected_whole() -> None:
    a = _claim("team-a", "orders", "01", "orders.example.com")
    b = _claim("team-b", "sneaky", "02", "shop.example.com", "orders.example.com")
    a2 = _claim("team-a", "more-orders", "03", "orders.example.com")  # the owner may add policies
    verdicts = {v.claim.ref: v for v in ownership.assign([b, a2, a])}
    assert verdicts["team-a/orders"].accepted and verdicts["team-a/more-orders"].accepted
    rejected = verdicts["team-b/sneaky"]
    assert not rejected.accepted and rejected.reason == "HostClaimed"
    assert "'orders.example.com'" in rejected.message and "team-a" in rejected.message
    # Rejected whole: its other host is not claimed either, so another namespace can still have it.
    c = _claim("team-c", "shop", "04", "shop.example.com")
    assert {v.claim.ref: v.accepted for v in ownership.assign([a, b, c])}["team-c/shop"]


def test_a_wildcard_cannot_reach_into_another_namespaces_host() -> None:
    a = _claim("team-a", "orders", "01", "orders.example.com")
    wide = _claim("team-b", "everything", "02", "*.example.com")
    star = _claim("team-c", "all", "03", "*")
    verdicts = {v.claim.ref: v.accepted for v in ownership.assign([a, wide, star])}
    assert verdicts == {"team-a/orders": True, "team-b/everything": False, "team-c/all": False}
    # And the other way round: a namespace that claimed the wildcard first owns the hosts under it.
    verdicts = {
        v.claim.ref: v.accepted for v in ownership.assign([_claim("team-b", "everything", "00", "*.example.com"), a])
    }
    assert verdicts == {"team-b/everything": True, "team-a/orders": False}


def test_the_answer_does_not_depend_on_list_order() -> None:
    claims = [
        _claim("team-a", "orders", "01", "orders.example.com"),
        _claim("team-b", "x", "01", "orders.example.com"),  # same second: namespace order decides
        _claim("team-c", "y", "02", "*.example.com"),
    ]
    outcomes = {
        tuple((v.claim.ref, v.accepted) for v in ownership.assign(order)) for order in itertools.permutations(claims)
    }
    assert len(outcomes) == 1


def test_delegation_overrides_the_order() -> None:
    delegations = {"team-a": ["*.orders.example.com", "orders.example.com"]}
    early = _claim("team-b", "squatter", "00", "api.orders.example.com")
    owner = _claim("team-a", "orders", "05", "orders.example.com", "api.orders.example.com")
    verdicts = {v.claim.ref: v for v in ownership.assign([early, owner], delegations)}
    assert verdicts["team-a/orders"].accepted
    assert (
        not verdicts["team-b/squatter"].accepted
        and "delegated to namespace 'team-a'" in verdicts["team-b/squatter"].message
    )
    # A delegated namespace still cannot reach beyond what was delegated to it.
    beyond = _claim("team-a", "wide", "06", "*.example.com")
    assert {v.claim.ref: v.accepted for v in ownership.assign([beyond], delegations)}["team-a/wide"] is not False


def test_a_host_in_force_stays_with_its_namespace_whatever_the_clock_says() -> None:
    """Creation times have one-second resolution: a policy created in the same second (or one
    restored with an older timestamp) must not take a host another namespace already serves."""
    serving = ownership.Claim("shop", "orders", "2026-11-30T00:00:01Z", ("orders.example.com",), incumbent=True)
    same_second = ownership.Claim("aaa", "sneaky", "2026-11-30T00:00:01Z", ("*.example.com",))
    older = ownership.Claim("bbb", "older", "2026-11-30T00:00:00Z", ("orders.example.com",))
    verdicts = {v.claim.ref: v for v in ownership.assign([same_second, older, serving])}
    assert verdicts["shop/orders"].accepted
    assert not verdicts["aaa/sneaky"].accepted and not verdicts["bbb/older"].accepted
