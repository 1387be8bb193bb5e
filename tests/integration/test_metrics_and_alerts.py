"""Metrics and real-time detection, end to end: requests through a real Envoy, a real Tollgate
with --metrics-listen and --alertmanager-url, Debian's Prometheus scraping it and Debian's
Alertmanager receiving its alerts.

- A brute force (50 bad tokens from one address) raises exactly one alert: one firing record in
  the signed audit log, one Alertmanager alert, one warning line, one count in the metric; it is
  resolved when the burst is over, in the log and in Alertmanager.
- Prometheus scrapes every metric with the type docs/operations.md gives it (this validates the
  exposition format), and no label carries a subject, an address or a path.
- Every PromQL expression of the Grafana dashboard the chart ships evaluates, on metrics that exist.
"""

from __future__ import annotations

import json
import pathlib
import re
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from authz import cli
from authz.audit import pseudonym
from authz.dev import harness, idp, monitoring, upstream

ROOT = pathlib.Path(__file__).resolve().parents[2]
_MISSING = monitoring.missing(monitoring.PROMETHEUS, monitoring.ALERTMANAGER)
pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(
        bool(_MISSING),
        reason=f"needs Debian's {' and '.join(_MISSING)} (make test installs them when run as root)",
    ),
]

# A window of a few seconds, so that the test sees the alert resolved without waiting a minute.
DETECTORS = "detectors:\n  authFailuresBySource: {threshold: 20, windowSeconds: 3}\n"

# Every metric, with the type Prometheus must see (docs/operations.md lists the same).
TYPES = {
    "tollgate_checks": "counter",
    "tollgate_check_duration_seconds": "histogram",
    "tollgate_checks_in_flight": "gauge",
    "tollgate_audit_queue_depth": "gauge",
    "tollgate_audit_records_written": "counter",
    "tollgate_audit_records_lost": "counter",
    "tollgate_audit_fsync_duration_seconds": "histogram",
    "tollgate_jwks_refreshes": "counter",
    "tollgate_jwks_key_set_age_seconds": "gauge",
    "tollgate_token_cache_lookups": "counter",
    "tollgate_config_info": "gauge",
    "tollgate_config_reloads": "counter",
    "tollgate_alerts": "counter",
    "tollgate_alerts_active": "gauge",
    "tollgate_alertmanager_notifications": "counter",
}


class Stack:
    def __init__(self, **parts: Any) -> None:
        self.__dict__.update(parts)

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as reply:
            return str(reply.read().decode())

    def sample(self, name: str, **labels: str) -> float | None:
        wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
        for line in self.metrics_text().splitlines():
            if line.startswith(f"{name}{{") or line.startswith(f"{name} "):
                found = line[len(name) :].split(" ")[0].strip("{}")
                if ",".join(sorted(found.split(","))) == wanted:
                    return float(line.rsplit(" ", 1)[1])
        return None

    def log(self) -> str:
        return str(self.log_path.read_text())


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    dev_idp: idp.DevIdentityProvider,
    echo_upstream: upstream.EchoUpstream,
    module_audit_keys: pathlib.Path,
) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("monitoring")
    config = directory / "config.yaml"
    config.write_text(
        dev_idp.app_config(
            "{name: public, action: Allow, to: {paths: [/public]}}",
            "{name: staff, action: Allow, to: {paths: [/private]}, from: {groups: [staff]}}",
            namespace="shop",
        )
    )
    detectors = directory / "detectors.yaml"
    detectors.write_text(DETECTORS)
    started: list[Any] = []
    try:
        alertmanager = monitoring.Alertmanager(directory / "alertmanager").start()
        started.append(alertmanager)
        metrics_port = harness.free_port()
        audit_dir = directory / "audit"
        log_path = directory / "tollgate.log"
        authz = harness.TollgateProcess(
            config,
            extra=[
                "--metrics-listen",
                f"127.0.0.1:{metrics_port}",
                "--alertmanager-url",
                alertmanager.url,
                "--detectors",
                str(detectors),
                *harness.audit_flags(module_audit_keys, audit_dir, "--audit-mode", "sync"),
            ],
            log_to=log_path,
        ).start()
        started.append(authz)
        proxy = harness.Envoy(authz_port=authz.port, upstream_port=echo_upstream.port, log_to=directory / "envoy.log")
        started.append(proxy.start())
        prometheus = monitoring.Prometheus(directory / "prometheus", [f"127.0.0.1:{metrics_port}"]).start()
        started.append(prometheus)
        yield Stack(
            alertmanager=alertmanager,
            prometheus=prometheus,
            authz=authz,
            proxy=proxy,
            metrics_port=metrics_port,
            audit_dir=audit_dir,
            keys=module_audit_keys,
            log_path=log_path,
            idp=dev_idp,
            upstream=echo_upstream,
        )
    finally:
        for process in reversed(started):
            process.stop()


def ordinary_traffic(stack: Stack, http: Callable[..., Any]) -> None:
    """Allowed, denied and refused requests, with and without a token: every metric gets data."""
    staff = {"authorization": "Bearer " + stack.idp.token("alice", groups=["staff"])}
    guest = {"authorization": "Bearer " + stack.idp.token("bob")}
    for _ in range(3):
        assert http(stack.proxy.port, "GET", "/public", host="app.test").status == 200
        assert http(stack.proxy.port, "GET", "/private", host="app.test", headers=staff).status == 200
        assert http(stack.proxy.port, "GET", "/private", host="app.test", headers=guest).status == 403
        assert http(stack.proxy.port, "GET", "/private", host="app.test").status == 401


def test_a_brute_force_through_envoy_raises_one_alert_everywhere_and_resolves(
    stack: Stack, http: Callable[..., Any], capsys: pytest.CaptureFixture[str]
) -> None:
    seen = stack.upstream.served
    for index in range(50):
        reply = http(
            stack.proxy.port, "GET", "/private", host="app.test", headers={"authorization": f"Bearer bad{index}"}
        )
        assert reply.status == 401
    assert stack.upstream.served == seen  # not one of them reached the upstream
    source = pseudonym.load_keys(stack.keys / "pseudonyms.yaml")("127.0.0.1")

    received = harness.wait_until(
        lambda: stack.alertmanager.alerts(alertname="TollgateSuspiciousAccess"), what="Alertmanager"
    )
    (alert,) = received
    assert alert["labels"]["detector"] == "auth_failures_by_source"
    assert alert["labels"]["key"] == source and alert["labels"]["key_kind"] == "source_ip"
    assert "127.0.0.1" not in json.dumps(alert)
    assert stack.sample("tollgate_alerts_total", detector="auth_failures_by_source") == 1.0
    assert stack.log().count("alert firing detector=auth_failures_by_source") == 1

    # The burst is over: resolved after the 3-second window, in the log and in Alertmanager.
    harness.wait_until(lambda: "alert resolved detector=auth_failures_by_source" in stack.log(), what="the resolution")
    harness.wait_until(
        lambda: not stack.alertmanager.alerts(alertname="TollgateSuspiciousAccess"), what="Alertmanager resolved"
    )
    assert stack.sample("tollgate_alerts_active", detector="auth_failures_by_source") == 0.0
    assert stack.sample("tollgate_alertmanager_notifications_total", result="sent") >= 2

    # One firing and one resolved record in the signed log, which verifies; they name the
    # first and last of the decisions they counted.
    key = str(stack.keys / "verifier.key")
    assert cli.main(["audit", "verify", str(stack.audit_dir), "--key", key]) == 0
    capsys.readouterr()
    assert cli.main(["audit", "query", str(stack.audit_dir), "--kind", "alert", "--format", "json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["alert"]["state"] for r in records] == ["firing", "resolved"]
    firing, resolved = (r["alert"] for r in records)
    assert firing["alert_id"] == resolved["alert_id"] == records[0]["id"] == alert["annotations"]["alert_id"]
    assert (firing["count"], resolved["count"], firing["key"]) == (20, 50, source)
    assert cli.main(["audit", "query", str(stack.audit_dir), "--reason", "token_malformed", "--format", "json"]) == 0
    denials = [json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()]
    assert firing["first_decision"] == denials[-50] and resolved["last_decision"] == denials[-1]
    assert firing["last_decision"] == denials[-31]


def test_prometheus_scrapes_every_metric_with_its_type_and_no_personal_data(
    stack: Stack, http: Callable[..., Any]
) -> None:
    ordinary_traffic(stack, http)
    prometheus = stack.prometheus
    scraped = 'tollgate_checks_total{reason="rule_allow"} > 5'
    harness.wait_until(lambda: prometheus.query(scraped)["data"]["result"], what="a scrape")
    metadata = prometheus.metadata()
    types = {name.removesuffix("_total"): m[0]["type"] for name, m in metadata.items() if name.startswith("tollgate_")}
    assert types == TYPES
    series = prometheus.series('{__name__=~"tollgate_.+"}')
    # instance and job are Prometheus' own target labels (the scrape address), not Tollgate's.
    ours = [{name: value for name, value in item.items() if name not in ("instance", "job")} for item in series]
    values = {value for item in ours for name, value in item.items() if name != "__name__"}
    for secret in ("127.0.0.1", "alice", "bob", "/private", "/public", "app.test"):
        assert not any(secret in value for value in values), secret
    allowed = prometheus.query('sum(tollgate_checks_total{decision="allow",policy="shop/app"})')["data"]["result"]
    assert float(allowed[0]["value"][1]) >= 6
    hits = prometheus.query('tollgate_token_cache_lookups_total{result="hit"}')["data"]["result"]
    assert float(hits[0]["value"][1]) >= 4  # each token verified once, then served from the cache
    assert prometheus.query("tollgate_audit_fsync_duration_seconds_count")["data"]["result"]
    # Prometheus' standard process series come from the same target, and the fd rule's join
    # (charts/tollgate/files/prometheus-rules.yaml) selects it by them.
    [usage] = prometheus.query(
        "(process_open_fds / process_max_fds) and on (namespace, pod, instance) tollgate_config_info"
    )["data"]["result"]
    assert 0 < float(usage["value"][1]) < 0.8
    assert float(prometheus.query("process_cpu_seconds_total")["data"]["result"][0]["value"][1]) > 0


def test_every_dashboard_expression_evaluates_on_real_metrics(stack: Stack, http: Callable[..., Any]) -> None:
    ordinary_traffic(stack, http)
    prometheus = stack.prometheus
    harness.wait_until(
        lambda: prometheus.query("tollgate_audit_records_written_total > 0")["data"]["result"], what="a scrape"
    )
    dashboard = json.loads((ROOT / "charts" / "tollgate" / "files" / "grafana-dashboard.json").read_text())
    names = prometheus.names()
    expressions = [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        if panel["type"] != "row"
        for target in panel["targets"]
    ]
    assert len(expressions) >= 15
    time.sleep(2)  # two more scrapes: every rate() has its two samples
    for title, expression in expressions:
        promql = expression.replace("$__rate_interval", "1m").replace("$pod", ".*")
        assert "$" not in promql, (title, promql)
        for metric in re.findall(r"\btollgate_[a-z_]+", promql):
            assert metric in names, f"panel {title!r}: no metric {metric}"
        answer = prometheus.query(promql)
        assert answer["status"] == "success", (title, answer.get("error"))
        assert answer["data"]["result"], f"panel {title!r} shows nothing: {promql}"
