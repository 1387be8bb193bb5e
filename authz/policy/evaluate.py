"""Evaluate the policies of one host against one request and identity: a pure function.

Called by :mod:`authz.decision`. No I/O, no clock, no protobuf: the same inputs always give the
same :class:`Verdict`, which is what makes ``tollgate policy explain`` trustworthy.

Order (fixed, as in Istio's AuthorizationPolicy): any matching Deny rule denies; otherwise any
matching Allow rule allows; otherwise the host's default. DryRun policies are evaluated beside the
enforced ones and reported, never obeyed.
"""

from __future__ import annotations

import dataclasses

from authz.policy import compile as compiled
from authz.policy.verdict import DryRunVerdict, Verdict

__all__ = ["DryRunVerdict", "Verdict", "evaluate"]


_NO_POLICY_ALLOW = Verdict(allowed=True, reason="no_policy")
_NO_POLICY_DENY = Verdict(allowed=False, reason="no_policy")


def evaluate(host: compiled.HostPolicies | None, context: compiled.Context, *, server_default_allow: bool) -> Verdict:
    """Decide one request. ``host`` is the index entry for the request's host (None: no policy)."""
    if host is None:
        return _NO_POLICY_ALLOW if server_default_allow else _NO_POLICY_DENY
    dry_run = None
    if host.dry_run is not None:
        would = _decide(host.dry_run, context)
        dry_run = DryRunVerdict(would.allowed, would.reason, would.policy, would.rule)
    if not host.enforced:
        return Verdict(allowed=True, reason="dry_run_only", dry_run=dry_run)
    verdict = _decide(host, context)
    return dataclasses.replace(verdict, dry_run=dry_run) if dry_run else verdict


def _decide(host: compiled.HostPolicies, context: compiled.Context) -> Verdict:
    deny_rules, allow_rules = host.by_method.get(context.request.method, host.other)
    for rule in deny_rules:
        if rule.matches(context):
            return rule.verdict
    for rule in allow_rules:
        if rule.matches(context):
            return rule.verdict
    return host.default_verdict
