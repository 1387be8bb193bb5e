"""Host ownership between namespaces: which AccessPolicies may take part in a host's decisions.

Without it, any policy whose hosts match adds its Allow rules, so a policy in namespace B could
open a host namespace A serves. In the cluster a host belongs to one namespace:

- **First claim wins.** Policies already in force keep their hosts (``incumbent``: published
  before, with no host added since), then the rest are taken in creation order (then
  namespace/name, so the answer never depends on list order). Creation times have one-second
  resolution: incumbency is what stops a policy created in the same second from taking a host
  another namespace already serves. A policy whose host patterns overlap a host or wildcard another
  namespace claimed first is rejected whole (reason ``HostClaimed``), naming the host and owner.
  Patterns overlap when some host matches both: ``orders.example.com`` and ``*.example.com`` do,
  and ``*`` overlaps everything (Tollgate's ``*.suffix`` matches any depth below the suffix).
- **Delegation overrides.** The operator's setting ``namespace → host patterns`` hands hosts to
  namespaces up front: a host a delegation covers may be claimed only by the namespaces it is
  delegated to, whatever came first.

Contour and Authorino resolve the same collision the same way (first valid owner keeps the host).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence

__all__ = ["Claim", "Verdict", "assign", "overlap"]


@dataclasses.dataclass(frozen=True, slots=True)
class Claim:
    """One AccessPolicy's claim on hosts."""

    namespace: str
    name: str
    created: str  # metadata.creationTimestamp (RFC 3339, UTC): sorts as text
    hosts: tuple[str, ...]
    incumbent: bool = False  # in force already, with these hosts (or fewer)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    claim: Claim
    accepted: bool
    reason: str = ""  # CamelCase, for the status condition
    message: str = ""


def overlap(first: str, second: str) -> bool:
    """Whether some host matches both patterns (exact names, ``*.suffix`` or ``*``), case-insensitively."""
    a, b = first.lower().rstrip("."), second.lower().rstrip(".")
    if "*" in (a, b) or a == b:
        return True
    a_wild, b_wild = a.startswith("*."), b.startswith("*.")
    if a_wild and b_wild:
        return a[1:].endswith(b[1:]) or b[1:].endswith(a[1:])  # one suffix contains the other
    if a_wild:
        return b.endswith(a[1:])
    if b_wild:
        return a.endswith(b[1:])
    return False


def assign(claims: Iterable[Claim], delegations: Mapping[str, Sequence[str]] | None = None) -> list[Verdict]:
    """Accept or reject each claim (see the module docstring); verdicts in the order decided."""
    delegations = delegations or {}
    owned: list[tuple[str, str, str]] = []  # (pattern, namespace, policy)
    verdicts = []
    for claim in sorted(claims, key=lambda c: (not c.incumbent, c.created, c.namespace, c.name)):
        problem = _delegation_problem(claim, delegations) or _claimed_problem(claim, owned)
        if problem:
            verdicts.append(Verdict(claim, False, "HostClaimed", problem))
            continue
        owned.extend((host, claim.namespace, claim.ref) for host in claim.hosts)
        verdicts.append(Verdict(claim, True, "Accepted", "hosts are this namespace's"))
    return verdicts


def _delegation_problem(claim: Claim, delegations: Mapping[str, Sequence[str]]) -> str:
    for host in claim.hosts:
        for namespace, patterns in sorted(delegations.items()):
            if namespace == claim.namespace:
                continue
            for pattern in patterns:
                if overlap(host, pattern) and not _delegated_to(claim.namespace, host, delegations):
                    return f"host {host!r} overlaps {pattern!r}, delegated to namespace {namespace!r}"
    return ""


def _delegated_to(namespace: str, host: str, delegations: Mapping[str, Sequence[str]]) -> bool:
    """Whether ``namespace`` holds a delegation that covers all of ``host`` (``host`` is within it)."""
    return any(_within(host, pattern) for pattern in delegations.get(namespace, ()))


def _within(host: str, pattern: str) -> bool:
    """Every host ``host`` matches is also matched by ``pattern``."""
    host, pattern = host.lower().rstrip("."), pattern.lower().rstrip(".")
    if pattern in ("*", host):
        return True
    if not pattern.startswith("*."):
        return False
    suffix = pattern[1:]
    return host.endswith(suffix) and host != suffix[1:]


def _claimed_problem(claim: Claim, owned: Sequence[tuple[str, str, str]]) -> str:
    for host in claim.hosts:
        for pattern, namespace, policy in owned:
            if namespace != claim.namespace and overlap(host, pattern):
                return f"host {host!r} overlaps {pattern!r}, claimed first by namespace {namespace!r} ({policy})"
    return ""
