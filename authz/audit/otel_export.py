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
    def __init__(self) -> None:
        if not (os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT")):
            raise telemetry.TracingUnavailable(
                "--audit-otel-logs needs OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_LOGS_ENDPOINT)"
            )
        try:
            from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter  # noqa: PLC0415
        except ImportError as error:
            raise telemetry.TracingUnavailable(f"the OTLP log exporter cannot load ({error})") from error
        resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "tollgate")})
        self._provider = LoggerProvider(resource=resource)
        self._provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter()))
        self._logger = self._provider.get_logger("tollgate.audit")

    def emit(self, entry: Mapping[str, Any], line: bytes) -> None:
        trace = entry.get("trace") or {}
        trace_id, span_id = trace.get("trace_id", ""), trace.get("span_id", "")
        denied = entry.get("decision") in ("deny", "error") or entry.get("kind") == "loss"
        self._logger.emit(
            LogRecord(
                timestamp=int(entry.get("time_ms", 0)) * 1_000_000,
                body=line.decode().rstrip("\n"),
                severity_number=SeverityNumber.WARN if denied else SeverityNumber.INFO,
                severity_text="WARN" if denied else "INFO",
                trace_id=int(trace_id, 16) if trace_id else None,
                span_id=int(span_id, 16) if span_id else None,
                attributes={
                    "tollgate.audit.kind": str(entry.get("kind", "")),
                    "tollgate.audit.origin": str(entry.get("origin", "")),
                    "tollgate.audit.seq": int(entry.get("seq", 0)),
                    "tollgate.decision": str(entry.get("decision", "")),
                    "tollgate.reason": str(entry.get("reason", "")),
                },
            )
        )

    def shutdown(self) -> None:
        self._provider.shutdown()
