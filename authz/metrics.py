"""Metrics: counted on the request path in plain Python, exported by the OpenTelemetry SDK.

Who calls it: :mod:`authz.service` calls :meth:`CheckMetrics.observe` once per Check (and moves
``in_flight``); :mod:`authz.cli.serve` builds the :class:`Export`; :mod:`authz.health` serves its
Prometheus text on ``/metrics``. Every other number (audit, JWKS, token cache, reloads, alerts)
is kept by the component that owns it, and read here only when metrics are collected.

Why the request path does not call the SDK's instruments: a synchronous ``Counter.add`` with three
attributes costs ~20 µs on this project's benchmark machine (attribute cleaning and hashing per
call), a histogram ``record`` ~16 µs — together more than 5 % of a whole Check. Here a Check costs
a dict increment and a bisect (~1 µs, guarded by ``make bench``'s metrics-on scenario), and the SDK
reads the tallies through observable instruments at collection time. OpenTelemetry has no
observable histogram, so the two duration histograms are handed to the SDK's readers as
ready-made histogram points, in the SDK's own export types (:class:`_Readers`), the way the
specification's MetricProducer bridges pre-aggregated data; both the Prometheus exposition and
OTLP see them like any other metric.

Labels never carry personal data or values a client chooses: decision, reason (a fixed set),
policy (bounded by the configuration; past :data:`MAX_SERIES` series new ones are counted under
``policy="(other)"``), provider and detector names from the configuration, result words.
"""

from __future__ import annotations

import bisect
import logging
import os
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from opentelemetry.metrics import Observation

if TYPE_CHECKING:
    from authz import decision as decision_model

__all__ = ["BUCKETS_SECONDS", "MAX_SERIES", "CheckMetrics", "Export", "Histogram", "outcome"]

_log = logging.getLogger(__name__)

# Decision latency: tens of µs (a cached token) to seconds (a provider's keys being fetched).
BUCKETS_SECONDS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
# fsync of an audit batch: ~100 µs on a fast disk to seconds on a saturated one.
FSYNC_BUCKETS_SECONDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
MAX_SERIES = 10_000


def outcome(decision: decision_model.Decision) -> str:
    """allow, deny, or error (a failure of Tollgate or a dependency, status ≥ 500): as in the audit record."""
    if decision.allowed:
        return "allow"
    return "error" if decision.status >= 500 else "deny"


class Histogram:
    """Bucket counts, sum, min and max of one duration, by one label value."""

    __slots__ = ("bounds_ns", "bounds_seconds", "series")

    def __init__(self, bounds_seconds: tuple[float, ...]) -> None:
        self.bounds_seconds = bounds_seconds
        self.bounds_ns = tuple(round(bound * 1e9) for bound in bounds_seconds)
        # label → [bucket counts (len(bounds) + 1), count, sum ns, min ns, max ns]
        self.series: dict[str, list[Any]] = {}

    def observe(self, label: str, duration_ns: int) -> None:
        found = self.series.get(label)
        if found is None:
            found = self.series[label] = [[0] * (len(self.bounds_ns) + 1), 0, 0, duration_ns, duration_ns]
        # bucket i counts durations ≤ bounds[i] (Prometheus' "le", OpenTelemetry's explicit buckets)
        found[0][bisect.bisect_left(self.bounds_ns, duration_ns)] += 1
        found[1] += 1
        found[2] += duration_ns
        if duration_ns < found[3]:
            found[3] = duration_ns
        elif duration_ns > found[4]:
            found[4] = duration_ns


class CheckMetrics:
    """What every Check adds to: checks by (decision, reason, policy), their latency, in flight."""

    __slots__ = ("checks", "in_flight", "latency")

    def __init__(self) -> None:
        self.checks: dict[tuple[str, str, str], int] = {}
        self.latency = Histogram(BUCKETS_SECONDS)
        self.in_flight = 0

    def observe(self, decision: decision_model.Decision) -> None:
        label = outcome(decision)
        key = (label, decision.reason, decision.policy)
        checks = self.checks
        count = checks.get(key)
        if count is None:
            if len(checks) >= MAX_SERIES:
                key = (label, decision.reason, "(other)")
            count = checks.get(key, 0)
        checks[key] = count + 1
        self.latency.observe(label, decision.duration_ns)


# Every metric but the two histograms (:class:`_Histograms`): kind, OpenTelemetry name, unit, the
# Export method that reads it, description. Prometheus names: dots become underscores, the unit
# is appended (``_seconds``), counters end in ``_total`` (docs/operations.md lists them all).
_INSTRUMENTS = (
    ("counter", "tollgate.checks", "{check}", "_checks", "Checks answered, by decision, reason and policy"),
    ("updown", "tollgate.checks.in_flight", "{check}", "_in_flight", "Checks being decided now"),
    ("gauge", "tollgate.audit.queue.depth", "{record}", "_queue_depth", "Audit records waiting to be written"),
    ("counter", "tollgate.audit.records.written", "{record}", "_written", "Audit records written (decisions, alerts)"),
    ("counter", "tollgate.audit.records.lost", "{record}", "_lost", "Decisions that could not be recorded, by reason"),
    ("counter", "tollgate.jwks.refreshes", "{refresh}", "_refreshes", "JWKS fetches, by provider and result"),
    ("gauge", "tollgate.jwks.key_set.age", "s", "_key_age", "Time since the provider's key set was last fetched"),
    ("counter", "tollgate.token_cache.lookups", "{lookup}", "_cache", "Verified-token cache lookups, by result"),
    ("gauge", "tollgate.config.info", "1", "_config", "The configuration revision in force (value 1)"),
    ("counter", "tollgate.config.reloads", "{reload}", "_reloads", "Configuration changes, by result"),
    ("counter", "tollgate.alerts", "{alert}", "_alerts", "Alerts raised, by detector"),
    ("updown", "tollgate.alerts.active", "{alert}", "_active", "Alerts firing now, by detector"),
    (
        "counter",
        "tollgate.alertmanager.notifications",
        "{notification}",
        "_notifications",
        "Alertmanager posts, by result",
    ),
)


class Export:
    """The OpenTelemetry MeterProvider over the runtime's numbers: a Prometheus registry for
    ``/metrics`` and, with ``otlp`` (``OTEL_METRICS_EXPORTER`` names otlp: see
    :func:`authz.telemetry.otlp_requested`), a periodic OTLP exporter (``OTEL_EXPORTER_OTLP_*``,
    ``OTEL_METRIC_EXPORT_INTERVAL``)."""

    def __init__(self, runtime: Any, *, otlp: bool = False) -> None:
        # The SDK and prometheus_client load only when metrics are on.
        from opentelemetry.exporter.prometheus import PrometheusMetricReader  # noqa: PLC0415
        from opentelemetry.sdk.metrics import MeterProvider  # noqa: PLC0415
        from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
        from prometheus_client import CollectorRegistry, ProcessCollector  # noqa: PLC0415

        from authz import __version__  # noqa: PLC0415

        self._runtime = runtime
        self.checks = runtime.check_metrics
        self.registry = CollectorRegistry(auto_describe=True)
        # Prometheus' standard process_* series (CPU seconds, memory, open and allowed file
        # descriptors), read from /proc at each scrape: CPU per Check and descriptor exhaustion,
        # visible in production. Prometheus only; OTLP carries the tollgate.* instruments.
        ProcessCollector(registry=self.registry)
        histograms = _Histograms(self)
        readers: list[Any] = [
            _with_histograms(PrometheusMetricReader)(histograms, registry=self.registry, scope_info_enabled=False)
        ]
        if otlp:
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter  # noqa: PLC0415
            from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader  # noqa: PLC0415

            readers.append(_with_histograms(PeriodicExportingMetricReader)(histograms, OTLPMetricExporter()))
        resource = Resource.create(
            {"service.name": os.environ.get("OTEL_SERVICE_NAME", "tollgate"), "service.version": __version__}
        )
        self._provider = MeterProvider(resource=resource, metric_readers=readers)
        self._instruments(self._provider.get_meter("tollgate", __version__))

    def exposition(self) -> tuple[bytes, str]:
        """The Prometheus text exposition of every metric, and its content type. About 50 µs of CPU
        per series (the SDK's collection and the exposition): call it off the event loop."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest  # noqa: PLC0415

        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def shutdown(self) -> None:
        self._provider.shutdown()

    # -- the instruments: each callback reads one owner's numbers ---------------------------
    def _instruments(self, meter: Any) -> None:
        create = {
            "counter": meter.create_observable_counter,
            "updown": meter.create_observable_up_down_counter,
            "gauge": meter.create_observable_gauge,
        }
        for kind, name, unit, callback, description in _INSTRUMENTS:
            create[kind](name, [getattr(self, callback)], unit=unit, description=description)

    def _checks(self, options: Any) -> Iterator[Any]:
        for (decision, reason, policy), count in list(self.checks.checks.items()):
            yield Observation(count, {"decision": decision, "reason": reason, "policy": policy})

    def _in_flight(self, options: Any) -> Iterable[Any]:
        return _one(self.checks.in_flight)

    def _queue_depth(self, options: Any) -> Iterable[Any]:
        recorder = self._runtime.recorder
        return _one(recorder.queue_depth) if recorder is not None else ()

    def _written(self, options: Any) -> Iterable[Any]:
        recorder = self._runtime.recorder
        return _one(recorder.written) if recorder is not None else ()

    def _lost(self, options: Any) -> Iterator[Any]:
        recorder = self._runtime.recorder
        if recorder is None:
            return
        for reason in ("queue_full", "write_failed"):
            yield from _one(recorder.lost_total.get(reason, 0), reason=reason)

    def _refreshes(self, options: Any) -> Iterator[Any]:
        for name, verifier in list(self._runtime.identity.jwt_verifiers.items()):
            if verifier.uses_jwks:
                yield from _one(verifier.keys.refreshes, provider=name, result="success")
                yield from _one(verifier.keys.refresh_failures, provider=name, result="failure")

    def _key_age(self, options: Any) -> Iterator[Any]:
        now = time.monotonic()
        for name, verifier in list(self._runtime.identity.jwt_verifiers.items()):
            fetched = verifier.keys.fetched_at
            if verifier.uses_jwks and fetched is not None:
                yield from _one(now - fetched, provider=name)

    def _cache(self, options: Any) -> Iterator[Any]:
        hits, misses = self._runtime.identity.cache_lookups()
        yield from _one(hits, result="hit")
        yield from _one(misses, result="miss")

    def _config(self, options: Any) -> Iterable[Any]:
        return _one(1, revision=self._runtime.snapshot.revision)

    def _reloads(self, options: Any) -> Iterator[Any]:
        yield from _one(self._runtime.reloads_applied, result="applied")
        yield from _one(self._runtime.reloads_rejected, result="rejected")

    def _alerts(self, options: Any) -> Iterator[Any]:
        detection = self._runtime.detection
        if detection is not None:
            for name, count in detection.raised.items():
                yield from _one(count, detector=name)

    def _active(self, options: Any) -> Iterator[Any]:
        detection = self._runtime.detection
        if detection is not None:
            for name, count in detection.active_by_detector().items():
                yield from _one(count, detector=name)

    def _notifications(self, options: Any) -> Iterator[Any]:
        detection = self._runtime.detection
        notifier = detection.notifier if detection is not None else None
        if notifier is not None:
            for result, count in notifier.results.items():
                yield from _one(count, result=result)


def _one(value: float, **attributes: str) -> Iterator[Any]:
    yield Observation(value, attributes)


class _Histograms:
    """The two histograms counted outside the SDK, as the SDK's own export types."""

    def __init__(self, export: Export) -> None:
        self._export = export
        self._start_ns = time.time_ns()

    def metrics(self) -> list[Any]:
        runtime = self._export._runtime
        found = [
            self._metric(
                "tollgate.check.duration",
                "Time to decide a Check, by decision",
                self._export.checks.latency,
                "decision",
            )
        ]
        recorder = runtime.recorder
        if recorder is not None and recorder.durable:
            description = "Time to fsync one batch of audit records (sync mode)"
            found.append(self._metric("tollgate.audit.fsync.duration", description, recorder.fsync_latency, ""))
        return found

    def _metric(self, name: str, description: str, histogram: Histogram, label: str) -> Any:
        from opentelemetry.sdk.metrics.export import (  # noqa: PLC0415
            AggregationTemporality,
            HistogramDataPoint,
            Metric,
        )
        from opentelemetry.sdk.metrics.export import Histogram as HistogramData  # noqa: PLC0415

        now = time.time_ns()
        points = []
        # Collections run on the exporter's thread (a scrape, or the OTLP reader's) while Checks add
        # on the event loop: copy each series first, and count what the copied buckets hold, so that
        # the count always equals the +Inf bucket.
        for value, series in list(histogram.series.items()):
            buckets = list(series[0])
            count, total_ns, low_ns, high_ns = sum(buckets), series[2], series[3], series[4]
            points.append(
                HistogramDataPoint(
                    attributes={label: value} if label else {},
                    start_time_unix_nano=self._start_ns,
                    time_unix_nano=now,
                    count=count,
                    sum=total_ns / 1e9,
                    bucket_counts=list(buckets),
                    explicit_bounds=list(histogram.bounds_seconds),
                    min=low_ns / 1e9,
                    max=high_ns / 1e9,
                )
            )
        data = HistogramData(data_points=points, aggregation_temporality=AggregationTemporality.CUMULATIVE)
        return Metric(name=name, description=description, unit="s", data=data)


def _with_histograms(reader_class: Any) -> Any:
    """``reader_class`` (a MetricReader) whose every collection also carries :class:`_Histograms`'
    metrics, in the scope of the SDK's own (``_receive_metrics`` is the method MetricReader
    subclasses implement to receive each collection)."""

    class Reader(reader_class):  # type: ignore[misc]
        def __init__(self, histograms: _Histograms, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._histograms = histograms

        def _receive_metrics(self, metrics_data: Any, timeout_millis: float = 10_000, **kwargs: Any) -> None:
            if metrics_data is not None:
                metrics_data = _merged(metrics_data, self._histograms.metrics())
            super()._receive_metrics(metrics_data, timeout_millis, **kwargs)

    Reader.__name__ = Reader.__qualname__ = f"Tollgate{reader_class.__name__}"
    return Reader


def _merged(metrics_data: Any, extra: list[Any]) -> Any:
    from opentelemetry.sdk.metrics.export import MetricsData, ResourceMetrics, ScopeMetrics  # noqa: PLC0415

    resources = list(metrics_data.resource_metrics)
    if not resources or not extra:
        return metrics_data
    first = resources[0]
    scopes = list(first.scope_metrics)
    if scopes:
        own = scopes[0]
        scopes[0] = ScopeMetrics(scope=own.scope, metrics=[*own.metrics, *extra], schema_url=own.schema_url)
    else:
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope  # noqa: PLC0415

        scopes = [ScopeMetrics(scope=InstrumentationScope("tollgate"), metrics=extra, schema_url="")]
    resources[0] = ResourceMetrics(resource=first.resource, scope_metrics=scopes, schema_url=first.schema_url)
    return MetricsData(resource_metrics=resources)
