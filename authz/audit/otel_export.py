"""Optional copies of audit records as OpenTelemetry log records (``--audit-otel-logs``).

For log pipelines that collect everything over OTLP. Each record written to the audit log is
also emitted as a log record: the body is the record's exact JSON line, the attributes name its
kind, decision, reason and position (origin, seq), and the trace and span ids link it to the
Check's span.

Integrity lives in the signed files, never here: OTLP is a transport without integrity, a copy
can be dropped, altered or duplicated on its way, and only ``tollgate audit verify`` on the files
(with the pinned key) says what happened. The exporter reads the standard ``OTEL_*`` variables.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import Resource

from authz import telemetry

__all__ = ["LogExport"]


class LogExport:
    """Records as OpenTelemetry log records; ``alert`` records are events named ``tollgate.alert``
    (the detectors use this class too, when only alerts are exported: ``OTEL_LOGS_EXPORTER=otlp``)."""

    def __init__(self, scope: str = "tollgate.audit", *, asked_by: str = "--audit-otel-logs") -> None:
        """``asked_by``: what turned the export on, for the error when it cannot work."""
        if not (os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT")):
            raise telemetry.TracingUnavailable(
                f"{asked_by} needs OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_LOGS_ENDPOINT)"
            )
        try:
            from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter  # noqa: PLC0415
        except ImportError as error:
            raise telemetry.TracingUnavailable(f"the OTLP log exporter cannot load ({error})") from error
        resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "tollgate")})
        self._provider = LoggerProvider(resource=resource)
        self._provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter()))
        self._logger = self._provider.get_logger(scope)

    def emit(self, entry: Mapping[str, Any], line: bytes) -> None:
        trace = entry.get("trace") or {}
        trace_id, span_id = trace.get("trace_id", ""), trace.get("span_id", "")
        kind = entry.get("kind")
        denied = entry.get("decision") in ("deny", "error") or kind in ("loss", "alert")
        attributes: dict[str, str | int] = {
            "tollgate.audit.kind": str(kind or ""),
            "tollgate.audit.origin": str(entry.get("origin", "")),
            "tollgate.audit.seq": int(entry.get("seq", 0)),
            "tollgate.decision": str(entry.get("decision", "")),
            "tollgate.reason": str(entry.get("reason", "")),
        }
        alert = entry.get("alert")
        if kind == "alert" and isinstance(alert, Mapping):
            for name in (
                "alert_id",
                "state",
                "detector",
                "key_kind",
                "key",
                "count",
                "first_decision",
                "last_decision",
            ):
                value = alert.get(name, "")
                attributes[f"tollgate.alert.{name}"] = value if isinstance(value, int) else str(value)
        timestamp = int(entry.get("time_ms", 0)) * 1_000_000
        severity = SeverityNumber.WARN if denied else SeverityNumber.INFO
        body = line.decode().rstrip("\n")
        if kind == "alert":  # an event, and no trace: a detector saw many requests, not one
            log_record = LogRecord(
                timestamp=timestamp,
                body=body,
                severity_number=severity,
                severity_text=severity.name,
                attributes=attributes,
                event_name="tollgate.alert",
            )
        else:
            log_record = LogRecord(
                timestamp=timestamp,
                body=body,
                severity_number=severity,
                severity_text=severity.name,
                trace_id=int(trace_id, 16) if trace_id else None,
                span_id=int(span_id, 16) if span_id else None,
                attributes=attributes,
            )
        self._logger.emit(log_record)

    def shutdown(self) -> None:
        self._provider.shutdown()
