"""Metrics over OTLP (``OTEL_METRICS_EXPORTER=otlp``) and alerts as OpenTelemetry log events
(``OTEL_LOGS_EXPORTER=otlp``), to OTLP/gRPC receivers on loopback, for requests through a real Envoy."""

from __future__ import annotations

import pathlib
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc

from authz.dev import harness, idp, upstream

pytestmark = pytest.mark.envoy


class Receiver(metrics_service_pb2_grpc.MetricsServiceServicer, logs_service_pb2_grpc.LogsServiceServicer):
    """A minimal OTLP/gRPC receiver: keeps the metrics and log records it is sent."""

    def __init__(self) -> None:
        self.metrics: dict[str, Any] = {}  # name → the newest Metric
        self.logs: list[Any] = []
        self._lock = threading.Lock()

    def Export(self, request: Any, context: Any) -> Any:
        with self._lock:
            if isinstance(request, metrics_service_pb2.ExportMetricsServiceRequest):
                for resource in request.resource_metrics:
                    for scope in resource.scope_metrics:
                        self.metrics.update((metric.name, metric) for metric in scope.metrics)
                return metrics_service_pb2.ExportMetricsServiceResponse()
            for resource in request.resource_logs:
                for scope in resource.scope_logs:
                    self.logs.extend(scope.log_records)
            return logs_service_pb2.ExportLogsServiceResponse()


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, int]]:
    sink = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(4))
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(sink, server)
    logs_service_pb2_grpc.add_LogsServiceServicer_to_server(sink, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield sink, port
    server.stop(None)


def test_metrics_and_alert_events_over_otlp(
    tmp_path: pathlib.Path,
    receiver: tuple[Receiver, int],
    echo_upstream: upstream.EchoUpstream,
    dev_idp: idp.DevIdentityProvider,
    tollgate: Callable[..., harness.TollgateProcess],
    envoy: Callable[..., harness.Envoy],
    http: Callable[..., Any],
) -> None:
    sink, port = receiver
    config = tmp_path / "policy.yaml"
    config.write_text(dev_idp.app_config("{name: public, action: Allow, to: {paths: [/public]}}"))
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_METRIC_EXPORT_INTERVAL": "300",
        "OTEL_LOGS_EXPORTER": "otlp",
        "OTEL_BLRP_SCHEDULE_DELAY": "100",
        "OTEL_TRACES_EXPORTER": "none",
    }
    authz = tollgate(config, env=env)  # no --metrics-listen: OTLP alone turns the metrics on
    proxy = envoy(authz_port=authz.port, upstream_port=echo_upstream.port)
    for _ in range(3):
        assert http(proxy.port, "GET", "/public", host="app.test").status == 200
    for index in range(20):
        bad = {"authorization": f"Bearer bad{index}"}
        assert http(proxy.port, "GET", "/public", host="app.test", headers=bad).status == 401

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not (_checks(sink) >= 23 and sink.logs):
        time.sleep(0.2)
    assert _checks(sink) >= 23
    duration = sink.metrics["tollgate.check.duration"]
    assert duration.unit == "s" and duration.WhichOneof("data") == "histogram"
    points = {p.attributes[0].value.string_value: p for p in duration.histogram.data_points}
    assert points["allow"].count == 3 and points["deny"].count == 20
    assert list(points["allow"].explicit_bounds)[:3] == [0.00005, 0.0001, 0.00025]
    assert sum(points["deny"].bucket_counts) == 20
    assert sink.metrics["tollgate.checks.in_flight"].WhichOneof("data") == "sum"

    (event,) = sink.logs
    attributes = {a.key: a.value for a in event.attributes}
    assert event.event_name == "tollgate.alert" and event.severity_text == "WARN"
    assert attributes["tollgate.alert.detector"].string_value == "auth_failures_by_source"
    assert attributes["tollgate.alert.state"].string_value == "firing"
    assert "127.0.0.1" not in str(event)


def _checks(sink: Receiver) -> int:
    metric = sink.metrics.get("tollgate.checks")
    return sum(int(p.as_int) for p in metric.sum.data_points) if metric is not None else 0
