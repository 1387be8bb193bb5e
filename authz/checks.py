"""One Check from start to finish, whatever transport it came by: trace, decide, answer, count, record.

Both edges call :func:`run`: the gRPC ``Authorization/Check`` service (:mod:`authz.service`) and
the HTTP ext_authz server (:mod:`authz.http_server`). Each hands over its adapter (a function
that returns the canonical request, or ``None`` when the message could not be parsed at all), the
trace carrier it received, and its encoder. Everything else is here once, so the two transports
cannot drift apart:

- the decision (:func:`authz.decision.decide_read`);
- durable audit mode: the answer waits for the record, and no record means no access;
- an answer that cannot be built becomes a 500 deny, and the record says so;
- a cancelled Check (Envoy's timeout) is recorded, never answered;
- metrics and detection see every decision; a fault in either costs nothing else;
- exactly one audit record per Check, in a ``finally``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from authz import canonical, detect, metrics, telemetry
from authz import decision as decision_model
from authz import request as request_model

__all__ = ["Reader", "Recorder", "Runtime", "run"]

_log = logging.getLogger(__name__)

Reader = Callable[[], request_model.HttpRequest]  # an edge's adapter: raises canonical.RequestRejected


class Recorder(Protocol):
    @property
    def durable(self) -> bool:
        """True: :meth:`record` returns only once the record is on disk, and False if it cannot be."""

    async def record(self, decision: decision_model.Decision) -> bool: ...

    async def close(self) -> None:
        """Write what is pending and end the log's session (called once, at shutdown)."""


class Runtime(Protocol):
    """What a Check reads; the server swaps ``snapshot`` on reload."""

    @property
    def snapshot(self) -> Any: ...
    @property
    def identity(self) -> decision_model.IdentityStage: ...
    @property
    def recorder(self) -> Recorder | None: ...
    @property
    def default_allow(self) -> bool: ...
    @property
    def strict_paths(self) -> bool: ...
    @property
    def tracing(self) -> telemetry.Tracing: ...
    @property
    def check_metrics(self) -> metrics.CheckMetrics | None: ...
    @property
    def detection(self) -> detect.Detection | None: ...


async def run[T](
    runtime: Runtime,
    read: Reader | None,
    carrier: Callable[[], Mapping[str, str]],
    encode: Callable[[decision_model.Decision], T],
    encode_failed: Callable[[decision_model.Decision], T],
    *,
    edge: str = "grpc",
) -> T:
    """Decide one Check and return the edge's answer (``edge``: "grpc" or "http", for its span).

    ``read``: the edge's adapter (``None``: the message is not a check request at all, a 400
    ``request_parse_error``). ``carrier``: the caller's trace context (asked only when someone reads
    trace ids). ``encode``: the decision as the edge's answer; ``encode_failed``: the answer for a
    decision whose first answer could not be built."""
    recorder = runtime.recorder
    tracing = runtime.tracing
    traced = tracing.enabled or recorder is not None  # else nobody reads the trace ids
    headers: Mapping[str, str] = carrier() if traced and read is not None else _NO_HEADERS
    span = tracing.start(headers, edge) if traced else None
    decision: decision_model.Decision | None = None
    recorded = False
    tally = runtime.check_metrics
    if tally is not None:
        tally.in_flight += 1
    try:
        if read is None:
            decision = decision_model.unparseable(runtime.snapshot.revision)
        else:
            decision = await decision_model.decide_read(
                read, runtime.snapshot, runtime.identity, default_allow=runtime.default_allow
            )
        if recorder is not None and recorder.durable:
            # Durable mode: the answer waits for the record, and no record means no access.
            answer = _answer(decision, encode, encode_failed)  # the record must say what Envoy receives
            recorded = True
            tracing.annotate(decision, headers, span)
            if not await recorder.record(decision):
                answer = _answer(decision_model.audit_unavailable(decision), encode, encode_failed)
            return answer
        return _answer(decision, encode, encode_failed)
    except asyncio.CancelledError:
        # Only an await can be cancelled: inside decide_read() (no decision yet) or, in durable
        # mode, while waiting for the record (already handed over). Only the first needs a record.
        if decision is None:
            request = None
            if read is not None:
                with contextlib.suppress(canonical.RequestRejected):
                    request = read()
            decision = decision_model.cancelled(runtime.snapshot.revision, request)
        raise
    finally:
        if tally is not None:
            tally.in_flight -= 1
        if decision is not None and (tally is not None or runtime.detection is not None):
            _observe(tally, runtime.detection, decision)
        if decision is not None and not recorded and traced:
            tracing.annotate(decision, headers, span)
            if recorder is not None:
                await recorder.record(decision)
        if span is not None:
            span.end()


_NO_HEADERS: Mapping[str, str] = {}


def _observe(
    tally: metrics.CheckMetrics | None, detection: detect.Detection | None, decision: decision_model.Decision
) -> None:
    """Count the decision and show it to the detectors. A fault in either is logged and goes no
    further: it must not cost the Check its answer, nor the decision its audit record."""
    try:
        if tally is not None:
            tally.observe(decision)
        if detection is not None:
            detection.observe(decision)
    except Exception as error:
        _log.exception("metrics or detection failed: %s", error.__class__.__name__)


def _answer[T](
    decision: decision_model.Decision,
    encode: Callable[[decision_model.Decision], T],
    encode_failed: Callable[[decision_model.Decision], T],
) -> T:
    """The encoded answer. If it cannot be built, ``decision`` becomes the 500 deny Envoy gets
    instead (:func:`~authz.decision.answer_failed`), so the audit record says what Envoy received."""
    try:
        return encode(decision)
    except Exception as error:  # fail closed: an answer that cannot be built is a deny
        _log.exception("building the answer failed: %s", error.__class__.__name__)
        return encode_failed(decision_model.answer_failed(decision, error))
