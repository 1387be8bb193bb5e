"""OpenTelemetry: one server span per Check, parented on the trace Envoy is propagating.

Called by :mod:`authz.service` around each decision. Configuration is the standard one:

- Tracing is on when an OTLP endpoint is configured (``OTEL_EXPORTER_OTLP_ENDPOINT`` or
  ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``), ``OTEL_SDK_DISABLED`` is not ``true`` and
  ``OTEL_TRACES_EXPORTER`` is not ``none``; the exporter,
  batching and sampling read the other ``OTEL_*`` variables themselves (``OTEL_SERVICE_NAME``
  defaults to ``tollgate``).
- The parent context is the one Envoy sends: its ext_authz client span, in the gRPC metadata of
  the Check call, or else the trace headers of the request in the CheckRequest (see
  :func:`authz.service._trace_carrier`; the HTTP edge reads its request's headers); W3C
  ``traceparent`` first, then B3 (``b3``, ``x-b3-*``).

Span attributes follow the RPC semantic conventions plus ``tollgate.*`` decision attributes.
They never carry personal data: no subject, no address, no path.

With tracing off, audit records still carry Envoy's trace id and span id, read from the same
headers without the SDK (a string split, no allocation of spans).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.propagators import b3
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.trace.propagation import tracecontext

from authz import decision as decision_model

__all__ = ["Tracing", "TracingUnavailable", "ids_from_headers", "otlp_requested"]

_log = logging.getLogger(__name__)
# The server span of one Check, by the edge it came by: the gRPC method (RPC conventions), or
# Envoy's HTTP ext_authz request (HTTP conventions; its route is the client's path, not ours).
_SPANS: dict[str, tuple[str, dict[str, str | int]]] = {
    "grpc": (
        "envoy.service.auth.v3.Authorization/Check",
        {
            "rpc.system": "grpc",
            "rpc.service": "envoy.service.auth.v3.Authorization",
            "rpc.method": "Check",
            "rpc.grpc.status_code": 0,  # a Check is always answered OK: a deny is an answer, not an error
        },
    ),
    "http": ("ext_authz check", {"network.protocol.name": "http", "tollgate.edge": "http_ext_authz"}),
}


def ids_from_headers(headers: Mapping[str, str]) -> tuple[str, str]:
    """(trace id, span id) Envoy propagated, without the SDK; empty strings when absent or malformed."""
    parent = headers.get("traceparent", "")
    if parent:
        parts = parent.split("-")
        if len(parts) == 4 and len(parts[1]) == 32 and len(parts[2]) == 16:
            return parts[1], parts[2]
    trace_id = headers.get("x-b3-traceid", "")
    if trace_id:
        return trace_id.rjust(32, "0"), headers.get("x-b3-spanid", "")
    single = headers.get("b3", "")
    if single.count("-") >= 1:
        trace_id, span_id = single.split("-")[:2]
        return trace_id.rjust(32, "0"), span_id
    return "", ""


def otlp_requested(variable: str) -> bool:
    """``variable`` (``OTEL_METRICS_EXPORTER``, ``OTEL_LOGS_EXPORTER``) names ``otlp`` among its
    comma-separated exporters, and ``OTEL_SDK_DISABLED`` is not ``true``."""
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    return "otlp" in {name.strip().lower() for name in os.environ.get(variable, "").split(",")}


class TracingUnavailable(Exception):
    """Tracing is configured (OTEL_* variables) but cannot work; the server must not start."""


class Tracing:
    def __init__(self, tracer: trace.Tracer | None) -> None:
        self._tracer = tracer
        self._propagator = CompositePropagator(
            [tracecontext.TraceContextTextMapPropagator(), b3.B3MultiFormat(), b3.B3SingleFormat()]
        )
        self._provider: Any = None

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    @classmethod
    def from_environment(cls) -> Tracing:
        configured = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
        )
        if (
            not configured
            or os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true"
            or os.environ.get("OTEL_TRACES_EXPORTER", "otlp").lower() == "none"
        ):
            return cls(None)
        # Imported only when tracing is on: the SDK and exporter are not needed otherwise.
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter  # noqa: PLC0415
        except ImportError as error:
            raise TracingUnavailable(
                f"OTLP tracing is configured but its exporter cannot load ({error}). If xds-protos was "
                "installed after opentelemetry-proto, it overwrote opentelemetry/proto/*: run "
                "'pip install --force-reinstall --no-deps opentelemetry-proto'"
            ) from error
        from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
        from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
        from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415

        from authz import __version__  # noqa: PLC0415

        resource = Resource.create(
            {"service.name": os.environ.get("OTEL_SERVICE_NAME", "tollgate"), "service.version": __version__}
        )
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        tracing = cls(provider.get_tracer("authz"))
        tracing._provider = provider
        _log.info("tracing: exporting spans over OTLP to %s", configured)
        return tracing

    def start(self, headers: Mapping[str, str], edge: str = "grpc") -> trace.Span | None:
        """Open the server span for one Check that came by ``edge`` ("grpc" or "http"; None when
        tracing is off); :meth:`finish` ends it."""
        if self._tracer is None:
            return None
        parent = self._propagator.extract(carrier=headers)
        name, attributes = _SPANS[edge]
        return self._tracer.start_span(name, context=parent, kind=trace.SpanKind.SERVER, attributes=attributes)

    @staticmethod
    def annotate(decision: decision_model.Decision, headers: Mapping[str, str], span: trace.Span | None) -> None:
        """Give the decision (and so its audit record) the trace it belongs to."""
        if span is None:
            decision.trace_id, decision.span_id = ids_from_headers(headers)
            return
        context = span.get_span_context()
        decision.trace_id = format(context.trace_id, "032x")
        decision.span_id = format(context.span_id, "016x")
        span.set_attributes(
            {
                "tollgate.decision": "allow" if decision.allowed else "deny",
                "tollgate.status": decision.status,
                "tollgate.reason": decision.reason,
                "tollgate.policy": decision.policy,
                "tollgate.rule": decision.rule,
                "tollgate.decision_id": decision.decision_id,
            }
        )
        if decision.status >= 500:
            span.set_status(trace.Status(trace.StatusCode.ERROR, decision.reason))

    def shutdown(self) -> None:
        if self._provider is not None:
            self._provider.shutdown()
