"""Where the decision is made: one straight line from CheckRequest to :class:`Decision`.

    CheckRequest ─▶ request (canonical) ─▶ identity ─▶ decide(request, identity, snapshot) ─▶ Decision

:func:`decide_read` is the Envoy-facing part, called by :mod:`authz.checks` for every Check with
the adapter of the transport it came by (gRPC ``CheckRequest`` or HTTP ext_authz; :func:`decide_check`
for the first); :func:`decide` is the transport-free core it ends in, which ``tollgate policy explain`` calls too,
so the two cannot disagree. Every other answer Tollgate gives is a named step here
(:func:`unparseable`, :func:`cancelled`, :func:`audit_unavailable`, :func:`answer_failed`).
Fails closed: every way out of :func:`decide_check` is a Decision, and an unexpected exception
becomes a deny with reason ``authz_error`` (HTTP 500), distinguishable from any policy deny.

Reason codes and their HTTP status:

    allow   rule_allow, default_allow, no_policy (server default Allow), dry_run_only    → upstream
    deny    rule_deny, default_deny, no_policy (server default Deny)                      → 401/403
    400     request_* and path_* (the request cannot be read one way only; see authz.canonical)
    403/401 source_address_invalid (an IP condition met a source that is not one address)
    401     token_* and other credential failures (see authz.identity)
    503     identity_unavailable (the provider's keys cannot be had),
            audit_unavailable (durable audit mode and the log cannot be written)
    500     authz_error (a fault in Tollgate itself, or an answer that could not be built)
    504     request_cancelled (the caller gave up before the decision; recorded, never answered)
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from authz import canonical, ids
from authz import check_request as envoy_request
from authz import request as request_model
from authz.identity import model as identity_model
from authz.policy import compile as compiled
from authz.policy import evaluate, verdict

__all__ = [
    "Decision",
    "IdentityStage",
    "answer_failed",
    "audit_unavailable",
    "cancelled",
    "decide",
    "decide_check",
    "decide_read",
    "rejected_request",
    "unparseable",
]

_log = logging.getLogger(__name__)


class IdentityStage(Protocol):
    def resolve_now(
        self, request: request_model.HttpRequest, scope: frozenset[str] | None
    ) -> identity_model.Identity | None:
        """The identity if known without waiting (e.g. a cached token); None: call resolve()."""

    async def resolve(
        self, request: request_model.HttpRequest, scope: frozenset[str] | None
    ) -> identity_model.Identity: ...


class SnapshotView(Protocol):
    @property
    def revision(self) -> str: ...
    @property
    def index(self) -> compiled.PolicyIndex: ...


@dataclasses.dataclass(slots=True)
class Decision:
    """The outcome of one Check, with everything the response and the audit record need.

    Build it by keyword: many fields share a type, and a positional call puts one where another
    belongs without a type error. The one exception is :func:`decide`'s, the Decision of nearly
    every Check, positional at half the cost; tests/unit/test_decision.py pins the field order it
    relies on.
    """

    decision_id: str
    revision: str
    allowed: bool = False
    status: int = 500
    reason: str = "authz_error"
    message: str = ""
    policy: str = ""
    rule: str = ""
    request: request_model.HttpRequest | None = None
    identity: identity_model.Identity = identity_model.ANONYMOUS
    dry_run: verdict.DryRunVerdict | None = None
    provider: str = ""
    trace_id: str = ""
    span_id: str = ""
    started_ns: int = 0
    duration_ns: int = 0
    claimed_subject: str = ""  # a rejected token's unverified subject: for the detectors only


def decide(
    request: request_model.HttpRequest,
    identity: identity_model.Identity,
    snapshot: SnapshotView,
    default_allow: bool = False,
) -> Decision:
    """Decide one canonical request for one verified caller: the transport-free core that the
    server and ``tollgate policy explain`` share. Never raises for a request it cannot judge: a
    path whose readings disagree is a 400 Decision.
    """
    return _judge(request, identity, snapshot.index.lookup(request.host), snapshot.revision, default_allow)


def _judge(
    request: request_model.HttpRequest,
    identity: identity_model.Identity,
    host: compiled.HostPolicies | None,
    revision: str,
    default_allow: bool,
) -> Decision:
    """:func:`decide` once the host's policies are looked up (:func:`decide_check` has them already)."""
    try:
        outcome = evaluate.evaluate(host, compiled.Context(request, identity), server_default_allow=default_allow)
    except canonical.RequestRejected as rejected:
        return rejected_request(revision, rejected, request)
    # Deny of a caller we could not identify is "who are you?" (401), of a known one "no" (403).
    status = 200 if outcome.allowed else (403 if identity.authenticated else 401)
    # Positional, in field order (pinned by tests/unit/test_decision.py): half the cost of keywords.
    return Decision(
        ids.new_id(),  # decision_id
        revision,  # revision
        outcome.allowed,  # allowed
        status,  # status
        outcome.reason,  # reason
        "",  # message
        outcome.policy,  # policy
        outcome.rule,  # rule
        request,  # request
        identity,  # identity
        outcome.dry_run,  # dry_run
    )


async def decide_check(
    check_request: Any,
    snapshot: SnapshotView,
    identity_stage: IdentityStage,
    *,
    default_allow: bool = False,
    strict_paths: bool = True,
    wire_size: int | None = None,
) -> Decision:
    """Decide one Envoy CheckRequest against one configuration snapshot. Never raises.

    Reads the canonical request (:mod:`authz.check_request`) and hands it to :func:`decide_read`.
    ``strict_paths``: strict path mode (see ``canonical.canonical_paths``). ``wire_size``: the
    serialized request's length, if known.
    """
    return await decide_read(
        lambda: envoy_request.from_check_request(check_request, wire_size, strict=strict_paths),
        snapshot,
        identity_stage,
        default_allow=default_allow,
    )


async def decide_read(
    read: Callable[[], request_model.HttpRequest],
    snapshot: SnapshotView,
    identity_stage: IdentityStage,
    *,
    default_allow: bool = False,
) -> Decision:
    """Decide the request ``read()`` returns, whatever the transport it came by. Never raises.

    ``read`` is an edge's adapter (gRPC: :func:`authz.check_request.from_check_request`; HTTP:
    :func:`authz.http_request.from_http_check`): it returns the canonical request or raises
    :class:`~authz.canonical.RequestRejected`. Then: look up the host, resolve the caller in the
    providers the host accepts, and hand both to :func:`decide`.
    """
    started = time.perf_counter_ns()
    request: request_model.HttpRequest | None = None
    try:
        request = read()
        host = snapshot.index.lookup(request.host)
        scope = host.providers if host else None
        identity = identity_stage.resolve_now(request, scope)
        if identity is None:  # a token not verified before: may wait for the provider's keys
            identity = await identity_stage.resolve(request, scope)
        decision = _judge(request, identity, host, snapshot.revision, default_allow)
    except canonical.RequestRejected as rejected:
        decision = rejected_request(snapshot.revision, rejected, request)
    except identity_model.IdentityFailure as failure:
        decision = Decision(
            decision_id=ids.new_id(),
            revision=snapshot.revision,
            status=failure.status,
            reason=failure.code,
            message=failure.message,
            request=request,
            provider=failure.provider,
            claimed_subject=failure.claimed_subject,
        )
    except Exception as error:  # fail closed: a fault in Tollgate must never become an allow
        _log.exception("decision failed: %s", error.__class__.__name__)
        decision = Decision(decision_id=ids.new_id(), revision=snapshot.revision, request=request)  # 500
    decision.started_ns, decision.duration_ns = started, time.perf_counter_ns() - started
    return decision


# Outcomes decided before or after decide(): each a named step, so every answer Tollgate can give
# is listed in this module.


def rejected_request(
    revision: str, rejected: canonical.RequestRejected, request: request_model.HttpRequest | None = None
) -> Decision:
    """400: the request cannot be read one way only (``request_*``, ``path_*``)."""
    return Decision(
        decision_id=ids.new_id(),
        revision=revision,
        status=400,
        reason=rejected.code,
        message=rejected.message,
        request=rejected.request or request,
    )


def unparseable(revision: str) -> Decision:
    """400 ``request_parse_error``: the CheckRequest's bytes are not a CheckRequest."""
    return Decision(
        decision_id=ids.new_id(),
        revision=revision,
        status=400,
        reason="request_parse_error",
        message="CheckRequest could not be parsed",
    )


def cancelled(revision: str, request: request_model.HttpRequest | None) -> Decision:
    """504 ``request_cancelled``: the caller gave up before the decision (Envoy's ext_authz
    timeout). Recorded, never answered: Envoy has already denied on its side."""
    return Decision(
        decision_id=ids.new_id(),
        revision=revision,
        status=504,
        reason="request_cancelled",
        message="the caller cancelled the check before it was decided",
        request=request,
    )


def audit_unavailable(decision: Decision) -> Decision:
    """503 ``audit_unavailable``: durable audit mode, and the record could not be written. No
    record means no access, whatever was decided."""
    return _overrule(decision, 503, "audit_unavailable", "the audit log cannot be written")


def answer_failed(decision: Decision, error: BaseException) -> Decision:
    """500 ``authz_error``: the decision was made but its answer could not be built. Envoy gets a
    deny, and the audit record says so, not what was decided before."""
    was = f"{'allow' if decision.allowed else 'deny'} {decision.reason}"
    message = f"the answer could not be built ({error.__class__.__name__}); the decision was {was}"
    return _overrule(decision, 500, "authz_error", message)


def _overrule(decision: Decision, status: int, reason: str, message: str) -> Decision:
    """A decision made, then turned into a deny after the fact. No policy decided the deny, so
    policy and rule are cleared (Envoy's access log and the audit record show them)."""
    decision.allowed = False
    decision.status, decision.reason, decision.message = status, reason, message
    decision.policy = decision.rule = ""
    return decision
