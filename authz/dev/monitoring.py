"""Real Prometheus and Alertmanager (Debian's ``prometheus`` and ``prometheus-alertmanager``) on
loopback, for the tests of metrics, rules, the dashboard and alert notifications.

Process lifecycle and their HTTP APIs only; each is stopped by its ``stop()``. ``missing()`` says
which binary is absent, so a test can skip naming it.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import time
import urllib.parse
import urllib.request
from typing import Any

import yaml

from authz.dev import harness

__all__ = ["ALERTMANAGER", "PROMETHEUS", "PROMTOOL", "Alertmanager", "Prometheus", "missing"]

PROMETHEUS, PROMTOOL, ALERTMANAGER = "prometheus", "promtool", "prometheus-alertmanager"


def missing(*binaries: str) -> list[str]:
    """The binaries among ``binaries`` that are not on PATH."""
    return [name for name in binaries if shutil.which(name) is None]


def _get_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as reply:  # noqa: S310 - loopback, our own URL
        return json.loads(reply.read())


class _Server(harness._Child):
    port: int

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=0.5) as reply:  # noqa: S310
                return bool(reply.status == 200)
        except OSError:
            return False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class Prometheus(_Server):
    """Prometheus scraping ``targets`` (``HOST:PORT`` of /metrics) every ``interval`` seconds."""

    name = "prometheus"

    def __init__(self, directory: pathlib.Path, targets: list[str], *, interval: float = 1.0) -> None:
        self.port = harness.free_port()
        config = {
            "global": {"scrape_interval": f"{int(interval * 1000)}ms", "evaluation_interval": "1s"},
            "scrape_configs": [
                {
                    "job_name": "tollgate",
                    "static_configs": [{"targets": targets, "labels": {"namespace": "test", "pod": "tollgate-0"}}],
                }
            ],
        }
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.args = [
            shutil.which(PROMETHEUS) or PROMETHEUS,
            f"--config.file={directory / 'prometheus.yml'}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        self.env = dict(os.environ)
        self.log_to = directory / "prometheus.log"

    def start(self, timeout: float = 30.0) -> Prometheus:
        self._start(timeout)
        return self

    def query(self, expression: str) -> dict[str, Any]:
        """``/api/v1/query`` at now: the whole answer (``status``, ``data`` or ``error``)."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
        try:
            return dict(_get_json(url))
        except urllib.error.HTTPError as error:  # Prometheus answers a bad query with 400 and a JSON body
            return dict(json.loads(error.read()))

    def metadata(self) -> dict[str, list[dict[str, Any]]]:
        """``/api/v1/metadata``: metric name → its type, help and unit, as scraped."""
        return dict(_get_json(f"{self.url}/api/v1/metadata")["data"])

    def names(self) -> set[str]:
        return set(_get_json(f"{self.url}/api/v1/label/__name__/values")["data"])

    def series(self, match: str) -> list[dict[str, str]]:
        url = f"{self.url}/api/v1/series?" + urllib.parse.urlencode({"match[]": match})
        return list(_get_json(url)["data"])

    def wait_for(self, expression: str, timeout: float = 30.0) -> list[dict[str, Any]]:
        """The result of ``expression`` once it is not empty."""
        deadline = time.monotonic() + timeout
        while True:
            answer = self.query(expression)
            result = answer.get("data", {}).get("result", [])
            if result or time.monotonic() > deadline:
                return list(result)
            time.sleep(0.5)


class Alertmanager(_Server):
    """Alertmanager with one receiver that goes nowhere: the tests read its API."""

    name = "alertmanager"

    def __init__(self, directory: pathlib.Path) -> None:
        self.port = harness.free_port()
        config = {
            "route": {"receiver": "nowhere", "group_by": ["alertname", "detector"]},
            "receivers": [{"name": "nowhere"}],
        }
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "alertmanager.yml").write_text(yaml.safe_dump(config))
        self.args = [
            shutil.which(ALERTMANAGER) or ALERTMANAGER,
            f"--config.file={directory / 'alertmanager.yml'}",
            f"--storage.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--cluster.listen-address=",
            "--log.level=warn",
        ]
        self.env = dict(os.environ)
        self.log_to = directory / "alertmanager.log"

    def start(self, timeout: float = 30.0) -> Alertmanager:
        self._start(timeout)
        return self

    def alerts(self, **filters: str) -> list[dict[str, Any]]:
        """``GET /api/v2/alerts`` (active ones), filtered by label equality."""
        query = urllib.parse.urlencode([("filter", f'{k}="{v}"') for k, v in filters.items()])
        return list(_get_json(f"{self.url}/api/v2/alerts?{query}"))
