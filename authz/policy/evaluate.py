"""Evaluate the policies of one host against one request and identity: a pure function.

Called by :mod:`authz.decision`. No I/O, no clock, no protobuf: the same inputs always give the
same :class:`Verdict`, which is what makes ``tollgate policy explain`` trustworthy.

Order (fixed, as in Istio's AuthorizationPolicy): any matching Deny rule denies; otherwise any
matching Allow rule allows; otherwise the host's default. DryRun policies are evaluated beside the
enforced ones and reported, never obeyed.

A request can have more than one reading, and the upstream may act on any of them:

- a method override header (``X-HTTP-Method-Override: DELETE`` on a POST) asks many frameworks to
  act on another method: every method named is judged, and the first that is denied decides;
- a path with parameters (``/admin;x``) is ``/admin`` to Tomcat and Spring and ``/admin;x`` to Go,
  nginx or Express: both are judged, and if they disagree the request is refused
  (``path_parameters_ambiguous``, 400) rather than judged on one.

An IP condition on a source address that is not one address denies with its own reason
(``source_address_invalid``), whether the rule allows or denies: it never counts as "no match".
"""

from __future__ import annotations

import dataclasses

from authz import canonical
from authz.policy import compile as compiled
from authz.policy.verdict import DryRunVerdict, Verdict

__all__ = ["DryRunVerdict", "RuleTrace", "Verdict", "evaluate", "explain"]


_NO_POLICY_ALLOW = Verdict(allowed=True, reason="no_policy")
_NO_POLICY_DENY = Verdict(allowed=False, reason="no_policy")


def evaluate(host: compiled.HostPolicies | None, context: compiled.Context, *, server_default_allow: bool) -> Verdict:
    """Decide one request. ``host`` is the index entry for the request's host (None: no policy).

    Raises :class:`~authz.canonical.RequestRejected` (``path_parameters_ambiguous``) when the two
    readings of a path with parameters get different answers.
    """
    if host is None:
        return _NO_POLICY_ALLOW if server_default_allow else _NO_POLICY_DENY
    request = context.request
    verdict = _evaluate_reading(host, context)
    if request.path_with_parameters:
        _check_path_readings_agree(host, context, verdict)
    if not verdict.allowed:
        return verdict  # another reading could only deny too
    for method in request.method_overrides():  # read only for what would be allowed
        reading = context.reading(method, request.path)
        override = _evaluate_reading(host, reading)
        if request.path_with_parameters:
            _check_path_readings_agree(host, reading, override)
        if not override.allowed:
            return override
    return verdict


def _check_path_readings_agree(host: compiled.HostPolicies, context: compiled.Context, verdict: Verdict) -> None:
    """``verdict`` was made on the path without parameters: the path with them must get the same
    answer, else the request is refused (``path_parameters_ambiguous``)."""
    request = context.request
    other = _evaluate_reading(host, context.reading(context.method, request.path_with_parameters))
    if other.allowed != verdict.allowed:
        raise canonical.RequestRejected(
            "path_parameters_ambiguous",
            f"the path is {'allowed' if verdict.allowed else 'denied'} as {request.path!r} and "
            f"{'allowed' if other.allowed else 'denied'} as {request.path_with_parameters!r}",
            request,
        )


def _evaluate_reading(host: compiled.HostPolicies, context: compiled.Context) -> Verdict:
    dry_run = None
    if host.dry_run is not None:
        would = _decide(host.dry_run, context)
        dry_run = DryRunVerdict(would.allowed, would.reason, would.policy, would.rule)
    if not host.enforced:
        return Verdict(allowed=True, reason="dry_run_only", dry_run=dry_run)
    verdict = _decide(host, context)
    return dataclasses.replace(verdict, dry_run=dry_run) if dry_run else verdict


def _decide(host: compiled.HostPolicies, context: compiled.Context) -> Verdict:
    deny_rules, allow_rules = host.by_method.get(context.method, host.other)
    rule = None
    try:
        for rule in deny_rules:
            if rule.matches(context):
                return rule.verdict
        for rule in allow_rules:
            if rule.matches(context):
                return rule.verdict
    except compiled.SourceUnreadable:
        assert rule is not None  # only a rule's check reads the source
        return Verdict(allowed=False, reason="source_address_invalid", policy=rule.verdict.policy, rule=rule.name)
    return host.default_verdict


@dataclasses.dataclass(frozen=True, slots=True)
class RuleTrace:
    """One rule as ``tollgate policy explain`` shows it: what it would do, and why it did not
    match (``unmet`` lists each condition the request does not meet; empty: the rule matches)."""

    policy: str
    rule: str
    action: str  # "Allow" | "Deny"
    dry_run: bool  # from a DryRun policy: reported, never obeyed
    unmet: tuple[str, ...]


def explain(host: compiled.HostPolicies | None, context: compiled.Context) -> tuple[RuleTrace, ...]:
    """Every rule that covers the request's host, in policy order, with the conditions it does not
    meet under ``context``'s reading. Read-only: the decision itself is :func:`evaluate`'s."""
    if host is None:
        return ()
    enforced = host.rules if host.enforced else ()
    traces = [_trace(rule, context, dry_run=False) for rule in enforced]
    if host.dry_run is not None:
        traces.extend(_trace(rule, context, dry_run=True) for rule in host.dry_run.rules if rule not in enforced)
    return tuple(traces)


def _trace(rule: compiled.CompiledRule, context: compiled.Context, *, dry_run: bool) -> RuleTrace:
    unmet = []
    if rule.methods is not None and context.method not in rule.methods:
        unmet.append(f"to.methods [{', '.join(sorted(rule.methods))}]: the method is {context.method}")
    for label, check in zip(rule.labels, rule.checks, strict=True):
        try:
            if not check(context):
                unmet.append(label)
        except compiled.SourceUnreadable:
            unmet.append(f"{label}: the source address {context.request.source_ip!r} is not one address")
    verdict = rule.verdict
    return RuleTrace(verdict.policy, rule.name, "Allow" if verdict.allowed else "Deny", dry_run, tuple(unmet))
