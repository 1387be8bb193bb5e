"""Where the decision is made: one straight line from CheckRequest to :class:`Decision`.

    CheckRequest ─▶ request (canonical) ─▶ identity ─▶ policy ─▶ Decision

Called by :mod:`authz.service` for every Check, and by ``tollgate policy explain``. Fails closed:
every way out of :func:`decide` is a Decision, and an unexpected exception becomes a deny with
reason ``authz_error`` (HTTP 500), distinguishable from any policy deny.

Reason codes and their HTTP status:

    allow   rule_allow, default_allow, no_policy (server default Allow), dry_run_only    → upstream
    deny    rule_deny, default_deny, no_policy (server default Deny)                      → 401/403
    400     request_* and path_* (the request cannot be canonicalized)
    401     token_* and other credential failures (see authz.identity)
    503     identity_unavailable (the provider's keys cannot be had),
            audit_unavailable (durable audit mode and the log cannot be written; see authz.service)
    500     authz_error (a fault in Tollgate itself)
    504     request_cancelled (the caller gave up before the decision; recorded, never answered)
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from typing import Any, Protocol

from authz import request as request_model
from authz.identity import model as identity_model
from authz.policy import compile as compiled
from authz.policy import evaluate, verdict

__all__ = ["Decision", "IdentityStage", "decide", "new_id", "undecided"]

_log = logging.getLogger(__name__)


class IdentityStage(Protocol):
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
    """The outcome of one Check, with everything the response and the audit record need."""

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


# Seeded from os.urandom. Decision ids must be unique, not secret: nothing is authorized by one.
_bits = random.Random().getrandbits  # noqa: S311
_clock_ms = -1
_clock_text = ""


def new_id() -> str:
    """A UUIDv7 (RFC 9562): time-ordered, so decision ids sort by time in any log.

    48-bit Unix time in ms, version 7, 12 random bits, the RFC variant, 62 random bits. The time
    part is formatted once per millisecond.
    """
    global _clock_ms, _clock_text  # a one-entry cache on the hot path
    now_ms = time.time_ns() // 1_000_000
    if now_ms != _clock_ms:
        text = f"{now_ms:012x}"
        _clock_ms, _clock_text = now_ms, f"{text[:8]}-{text[8:]}-7"
    return "%s%03x-%04x-%012x" % (_clock_text, _bits(12), 0x8000 | _bits(14), _bits(48))  # noqa: UP031


def undecided(revision: str, status: int, reason: str, message: str) -> Decision:
    """The Decision for a Check that never reached :func:`decide` (unparseable, or cancelled)."""
    return Decision(decision_id=new_id(), revision=revision, status=status, reason=reason, message=message)


async def decide(
    check_request: Any,
    snapshot: SnapshotView,
    identity_stage: IdentityStage,
    *,
    server_default_allow: bool = False,
) -> Decision:
    """Decide one CheckRequest against one configuration snapshot. Never raises."""
    decision = Decision(decision_id=new_id(), revision=snapshot.revision, started_ns=time.perf_counter_ns())
    try:
        request = request_model.from_check_request(check_request)
        decision.request = request
        host = snapshot.index.lookup(request.host)
        identity = await identity_stage.resolve(request, host.providers if host else None)
        decision.identity = identity
        outcome = evaluate.evaluate(
            host, compiled.Context(request, identity), server_default_allow=server_default_allow
        )
        decision.allowed = outcome.allowed
        decision.reason = outcome.reason
        decision.policy = outcome.policy
        decision.rule = outcome.rule
        decision.dry_run = outcome.dry_run
        # Deny of a caller we could not identify is "who are you?" (401), of a known one "no" (403).
        decision.status = 200 if outcome.allowed else (403 if identity.authenticated else 401)
    except request_model.RequestRejected as rejected:
        decision.allowed = False
        decision.request = rejected.request
        decision.status, decision.reason, decision.message = 400, rejected.code, rejected.message
    except identity_model.IdentityFailure as failure:
        decision.allowed = False
        decision.status, decision.reason, decision.message = failure.status, failure.code, failure.message
        decision.provider = failure.provider
    except Exception as error:  # fail closed: a fault in Tollgate must never become an allow
        _log.exception("decision failed: %s", error.__class__.__name__)
        decision.allowed = False
        decision.status, decision.reason, decision.message = 500, "authz_error", "internal error"
    finally:
        decision.duration_ns = time.perf_counter_ns() - decision.started_ns
    return decision
