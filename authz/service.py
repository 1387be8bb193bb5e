"""``envoy.service.auth.v3.Authorization/Check``: transport only.

Bytes in, bytes out. The request is parsed here with our own deserializer so that a message the
protobuf runtime rejects (e.g. invalid UTF-8 in a string field) still gets an answer — a deny
with reason ``request_parse_error`` — instead of a gRPC error and a traceback in the log. The
decision itself is made in :mod:`authz.decision`, the answer built and serialized in
:mod:`authz.response`, and exactly one record per Check is handed to the recorder in a ``finally``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Protocol

import grpc
from envoy.service.auth.v3 import external_auth_pb2
from google.protobuf import message as protobuf_message

from authz import canonical, detect, metrics, response, telemetry
from authz import check_request as envoy_request
from authz import decision as decision_model

__all__ = ["SERVICE_NAME", "AuthorizationService", "Recorder", "Runtime"]

SERVICE_NAME = external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"].full_name
_log = logging.getLogger(__name__)


class _Unparseable:
    """Stands in for a CheckRequest the protobuf runtime could not parse."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


class Recorder(Protocol):
    @property
    def durable(self) -> bool:
        """True: :meth:`record` returns only once the record is on disk, and False if it cannot be."""

    async def record(self, decision: decision_model.Decision) -> bool: ...

    async def close(self) -> None:
        """Write what is pending and end the log's session (called once, at shutdown)."""


class Runtime(Protocol):
    """What the service reads per request; the server swaps ``snapshot`` on reload."""

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


_NO_HEADERS: dict[str, str] = {}


Parsed = tuple[external_auth_pb2.CheckRequest, int]  # the request and its serialized length


def _parse(data: bytes) -> Parsed | _Unparseable:
    try:
        return external_auth_pb2.CheckRequest.FromString(data), len(data)
    except protobuf_message.DecodeError as error:
        return _Unparseable(str(error))


class AuthorizationService:
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    def method_handlers(self) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
        """``{"Check": handler}``, for both ``add_registered_method_handlers`` and a generic handler.

        Registering the method (as the generated ``add_..._to_server`` functions do) lets gRPC core
        route each call itself instead of a Python lookup per call: measurably cheaper per Check.
        """
        return {
            "Check": grpc.unary_unary_rpc_method_handler(
                self.check,
                request_deserializer=_parse,
                response_serializer=None,  # check() answers with the serialized CheckResponse
            )
        }

    async def check(self, parsed: Parsed | _Unparseable, context: Any) -> bytes:
        runtime = self._runtime
        recorder = runtime.recorder
        tracing = runtime.tracing
        traced = tracing.enabled or recorder is not None  # else nobody reads the trace ids
        check_request, wire_size = (None, 0) if isinstance(parsed, _Unparseable) else parsed
        headers: Any = _NO_HEADERS
        if traced and check_request is not None:
            headers = _trace_carrier(check_request.attributes.request.http.headers, context)
        span = tracing.start(headers) if traced else None
        decision: decision_model.Decision | None = None
        recorded = False
        tally = runtime.check_metrics
        if tally is not None:
            tally.in_flight += 1
        try:
            if check_request is None:
                decision = decision_model.unparseable(runtime.snapshot.revision)
            else:
                decision = await decision_model.decide_check(
                    check_request,
                    runtime.snapshot,
                    runtime.identity,
                    default_allow=runtime.default_allow,
                    strict_paths=runtime.strict_paths,
                    wire_size=wire_size,
                )
            if recorder is not None and recorder.durable:
                # Durable mode: the answer waits for the record, and no record means no access.
                answer = _answer(decision)  # the record must say what Envoy receives
                recorded = True
                tracing.annotate(decision, headers, span)
                if not await recorder.record(decision):
                    answer = _answer(decision_model.audit_unavailable(decision))
                return answer
            return _answer(decision)
        except asyncio.CancelledError:
            # Only an await can be cancelled: inside decide_check() (no decision yet) or, in durable
            # mode, while waiting for the record (already handed over). Only the first needs a record.
            if decision is None:
                request = None
                if check_request is not None:
                    with contextlib.suppress(canonical.RequestRejected):
                        strict = runtime.strict_paths
                        request = envoy_request.from_check_request(check_request, wire_size, strict=strict)
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


def _answer(decision: decision_model.Decision) -> bytes:
    """The serialized answer. If it cannot be built, ``decision`` becomes the 500 deny Envoy gets
    instead (:func:`~authz.decision.answer_failed`), so the audit record says what Envoy received."""
    try:
        return response.encode(decision)
    except Exception as error:  # fail closed: an answer that cannot be built is a deny
        _log.exception("building the answer failed: %s", error.__class__.__name__)
        return response.encode_failed(decision_model.answer_failed(decision, error))


_TRACE_KEYS = frozenset(
    {
        "traceparent",
        "tracestate",
        "b3",
        "x-b3-traceid",
        "x-b3-spanid",
        "x-b3-sampled",
        "x-b3-flags",
        "x-b3-parentspanid",
    }
)


def _trace_carrier(headers: Any, context: Any) -> Any:
    """Where the caller's trace context is: Envoy's ext_authz client puts its span in the gRPC
    metadata of the Check call (the exact parent); other callers may only have it in the HTTP
    headers of the CheckRequest."""
    metadata = context.invocation_metadata() if context is not None else None
    if metadata:
        carrier = {item[0]: item[1] for item in metadata if item[0] in _TRACE_KEYS}
        if carrier:
            return carrier
    return headers
