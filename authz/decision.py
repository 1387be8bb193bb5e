"""Where the decision is made: one straight line from CheckRequest to :class:`Decision`.

    CheckRequest ─▶ request (canonical) ─▶ identity ─▶ policy ─▶ Decision

Called by :mod:`authz.service` for every Check, and by ``tollgate policy explain``. Fails closed:
every way out of :func:`decide` is a Decision, and an unexpected exception becomes a deny with
reason ``authz_error`` (HTTP 500), distinguishable from any policy deny.

Reason codes and their HTTP status:

    allow   rule_allow, default_allow, no_policy (server default Allow), dry_run_only    → upstream
    deny    rule_deny, default_deny, no_policy (server default Deny)                      → 401/403
    400     request_* and path_* (the request cannot be read one way only; see authz.request)
    403/401 source_address_invalid (an IP condition met a source that is not one address)
    401     token_* and other credential failures (see authz.identity)
    503     identity_unavailable (the provider's keys cannot be had),
            audit_unavailable (durable audit mode and the log cannot be written; see authz.service)
    500     authz_error (a fault in Tollgate itself)
    504     request_cancelled (the caller gave up before the decision; recorded, never answered)
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import secrets
import time
from typing import Any, Protocol

from authz import request as request_model
from authz.identity import model as identity_model
from authz.policy import compile as compiled
from authz.policy import evaluate, verdict

__all__ = ["Decision", "IdentityStage", "decide", "new_id", "undecided"]

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

    :func:`decide` builds it positionally: keep the field order in step with it.
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


# Decision ids must be unique, not secret: nothing is authorized by one. So after the time come
# 26 bits drawn once per process and a 48-bit counter from a random start (RFC 9562 §6.2,
# method 1): unique within the process, ordered within a millisecond, apart from other replicas'.
_sequence = itertools.count(secrets.randbits(48))
_process_bits = "%03x-%04x-" % (secrets.randbits(12), 0x8000 | secrets.randbits(14))  # noqa: UP031
# Formatting integers is the slow part under load (~2 µs a call, its code cold between Checks), so
# the id is put together from pieces formatted when they change: the high 32 bits of the time
# (every ~49 days), the counter's high 40 bits (every 256 ids), and two-digit hex from a table.
_HEX2 = tuple(f"{i:02x}" for i in range(256))
_clock_ms = _time_high = _count_high = -1
_time_high_text = _count_high_text = _prefix = ""


def new_id() -> str:
    """A UUIDv7 (RFC 9562): time-ordered, so decision ids sort by time in any log.

    48-bit Unix time in ms, version 7, 12 + 14 bits fixed per process around the RFC variant,
    then the 48-bit counter.
    """
    global _clock_ms, _time_high, _count_high, _time_high_text, _count_high_text, _prefix  # noqa: PLW0603 (hot path)
    now_ms = time.time_ns() // 1_000_000
    count = next(_sequence) & 0xFFFFFFFFFFFF
    if now_ms != _clock_ms or count >> 8 != _count_high:
        if now_ms >> 16 != _time_high:
            _time_high, _time_high_text = now_ms >> 16, "%08x" % (now_ms >> 16 & 0xFFFFFFFF)
        if count >> 8 != _count_high:
            _count_high, _count_high_text = count >> 8, "%010x" % (count >> 8)
        _clock_ms = now_ms
        _prefix = (
            f"{_time_high_text}-{_HEX2[now_ms >> 8 & 0xFF]}{_HEX2[now_ms & 0xFF]}-7{_process_bits}{_count_high_text}"
        )
    return _prefix + _HEX2[count & 0xFF]


def undecided(revision: str, status: int, reason: str, message: str) -> Decision:
    """The Decision for a Check that never reached :func:`decide` (unparseable, or cancelled)."""
    return Decision(decision_id=new_id(), revision=revision, status=status, reason=reason, message=message)


async def decide(
    check_request: Any,
    snapshot: SnapshotView,
    identity_stage: IdentityStage,
    *,
    server_default_allow: bool = False,
    strict_paths: bool = True,
    wire_size: int | None = None,
) -> Decision:
    """Decide one CheckRequest against one configuration snapshot. Never raises.

    ``strict_paths``: strict path mode (see ``request.canonical_paths``). ``wire_size``: the
    serialized request's length, if known (see ``request.from_check_request``).
    """
    decision_id, revision, started = new_id(), snapshot.revision, time.perf_counter_ns()
    request: request_model.HttpRequest | None = None
    try:
        request = request_model.from_check_request(check_request, wire_size, strict=strict_paths)
        host = snapshot.index.lookup(request.host)
        scope = host.providers if host else None
        identity = identity_stage.resolve_now(request, scope)
        if identity is None:  # a token not verified before: may wait for the provider's keys
            identity = await identity_stage.resolve(request, scope)
        outcome = evaluate.evaluate(
            host, compiled.Context(request, identity), server_default_allow=server_default_allow
        )
        # Deny of a caller we could not identify is "who are you?" (401), of a known one "no" (403).
        status = 200 if outcome.allowed else (403 if identity.authenticated else 401)
        # Positional, in field order: the one Decision of nearly every Check, built at half the cost.
        return Decision(
            decision_id,
            revision,
            outcome.allowed,
            status,
            outcome.reason,
            "",
            outcome.policy,
            outcome.rule,
            request,
            identity,
            outcome.dry_run,
            "",
            "",
            "",
            started,
            time.perf_counter_ns() - started,
        )
    except request_model.RequestRejected as rejected:
        decision = Decision(
            decision_id,
            revision,
            status=400,
            reason=rejected.code,
            message=rejected.message,
            request=rejected.request or request,
        )
    except identity_model.IdentityFailure as failure:
        decision = Decision(
            decision_id,
            revision,
            status=failure.status,
            reason=failure.code,
            message=failure.message,
            request=request,
            provider=failure.provider,
        )
    except Exception as error:  # fail closed: a fault in Tollgate must never become an allow
        _log.exception("decision failed: %s", error.__class__.__name__)
        decision = Decision(decision_id, revision, request=request)  # 500 authz_error, not allowed
    decision.started_ns, decision.duration_ns = started, time.perf_counter_ns() - started
    return decision
