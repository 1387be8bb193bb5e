"""OpenTelemetry through a real Envoy: Envoy traces the request and exports its spans, Tollgate
exports a server span parented on Envoy's, both to an OTLP receiver on loopback; the audit record
carries the same trace id and span id."""

from __future__ import annotations

import json
import pathlib
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from authz.dev import harness, upstream

pytestmark = pytest.mark.envoy

POLICY = """
apiVersion: tollgate.dev/v1alpha1
kind: AccessPolicy
metadata: {name: app}
spec:
  hosts: [app.test]
  rules: [{name: public, action: Allow, to: {paths: [/public]}}]
"""


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """A minimal OTLP/gRPC trace receiver: keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, Any]] = []  # (service.name, span)
        self._lock = threading.Lock()

    def Export(self, request: Any, context: Any) -> Any:
        with self._lock:
            for resource_spans in request.resource_spans:
                service = next(
                    (a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name"), ""
                )
                for scope in resource_spans.scope_spans:
                    self.spans.extend((service, span) for span in scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, int]]:
    sink = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield sink, port
    server.stop(None)


def test_check_span_is_parented_on_envoy_and_matches_the_audit_record(
    tmp_path: pathlib.Path,
    receiver: tuple[Receiver, int],
    echo_upstream: upstream.EchoUpstream,
    tollgate: Callable[..., harness.TollgateProcess],
    envoy: Callable[..., harness.Envoy],
    http: Callable[..., Any],
    audit_keys: pathlib.Path,
    transport: str,
) -> None:
    sink, port = receiver
    config = tmp_path / "policy.yaml"
    config.write_text(POLICY)
    audit_dir = tmp_path / "audit"
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_SERVICE_NAME": "tollgate-test",
    }
    authz = tollgate(config, *harness.audit_flags(audit_keys, audit_dir), env=env, http=True)
    proxy = envoy(
        authz_port=authz.authz_port(transport),
        upstream_port=echo_upstream.port,
        tracing_port=port,
        authz_mode=transport,
    )
    assert http(proxy.port, "GET", "/public", host="app.test").status == 200
    assert http(proxy.port, "GET", "/private", host="app.test").status == 401

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        ours = [s for name, s in sink.spans if name == "tollgate-test"]
        theirs = [s for name, s in sink.spans if name == "envoy"]
        if len(ours) >= 2 and theirs:
            break
        time.sleep(0.2)
    ours = [s for name, s in sink.spans if name == "tollgate-test"]
    theirs = {s.span_id: s for name, s in sink.spans if name == "envoy"}
    assert len(ours) >= 2 and theirs, f"spans received: {[(n, s.name) for n, s in sink.spans]}"
    for span in ours:
        assert span.kind == span.SPAN_KIND_SERVER
        assert span.parent_span_id in theirs, "Tollgate's span is not a child of an Envoy span"
        assert theirs[span.parent_span_id].trace_id == span.trace_id
        attributes = {a.key: a.value for a in span.attributes}
        if transport == "grpc":
            assert span.name == "envoy.service.auth.v3.Authorization/Check"
            assert attributes["rpc.system"].string_value == "grpc"
        else:
            assert span.name == "ext_authz check"
            assert attributes["network.protocol.name"].string_value == "http"
        assert attributes["tollgate.decision"].string_value in ("allow", "deny")
        assert not any(key.startswith(("enduser", "client.address", "url")) for key in attributes)

    assert authz.stop() == 0
    records = [
        json.loads(line) for segment in audit_dir.rglob("segment-*.jsonl") for line in segment.read_bytes().splitlines()
    ]
    decisions = [r for r in records if r["kind"] == "decision"]
    exported = {(s.trace_id.hex(), s.span_id.hex()) for s in ours}
    assert {(r["trace"]["trace_id"], r["trace"]["span_id"]) for r in decisions} <= exported
    assert len(decisions) == 2


class LogsReceiver(logs_service_pb2_grpc.LogsServiceServicer):
    """A minimal OTLP/gRPC logs receiver: keeps every log record it is sent."""

    def __init__(self) -> None:
        self.records: list[Any] = []
        self._lock = threading.Lock()

    def Export(self, request: Any, context: Any) -> Any:
        with self._lock:
            for resource_logs in request.resource_logs:
                for scope in resource_logs.scope_logs:
                    self.records.extend(scope.log_records)
        return logs_service_pb2.ExportLogsServiceResponse()


def test_audit_records_as_otel_log_records(
    tmp_path: pathlib.Path,
    echo_upstream: upstream.EchoUpstream,
    tollgate: Callable[..., harness.TollgateProcess],
    envoy: Callable[..., harness.Envoy],
    http: Callable[..., Any],
    audit_keys: pathlib.Path,
    eventually: Callable[..., None],
) -> None:
    sink = LogsReceiver()
    server = grpc.server(futures.ThreadPoolExecutor(2))
    logs_service_pb2_grpc.add_LogsServiceServicer_to_server(sink, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        config = tmp_path / "policy.yaml"
        config.write_text(POLICY)
        audit_dir = tmp_path / "audit"
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_BLRP_SCHEDULE_DELAY": "100",
            "OTEL_TRACES_EXPORTER": "none",
        }
        authz = tollgate(
            config,
            *harness.audit_flags(audit_keys, audit_dir),
            "--audit-otel-logs",
            env=env,
        )
        proxy = envoy(authz_port=authz.port, upstream_port=echo_upstream.port)
        assert http(proxy.port, "GET", "/public", host="app.test").status == 200
        assert http(proxy.port, "GET", "/private", host="app.test").status == 401
        eventually(lambda: len(sink.records) >= 2)
        assert authz.stop() == 0
    finally:
        server.stop(None)
    lines = [
        line.decode()
        for segment in audit_dir.rglob("segment-*.jsonl")
        for line in segment.read_bytes().splitlines()
        if b'"kind":"decision"' in line
    ]
    bodies = [r.body.string_value for r in sink.records]
    assert sorted(bodies) == sorted(lines)  # exact copies of the signed lines
    for log_record in sink.records:
        entry = json.loads(log_record.body.string_value)
        assert log_record.trace_id.hex() == entry["trace"]["trace_id"]
        attributes = {a.key: a.value for a in log_record.attributes}
        assert attributes["tollgate.decision"].string_value == entry["decision"]
        assert attributes["tollgate.audit.seq"].int_value == entry["seq"]
