"""``tollgate envoy-config``: what it prints passes ``envoy --mode validate`` and, run by a real
Envoy, decides through Tollgate — asserted on what the echo upstream received."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from authz.dev import harness, upstream

pytestmark = pytest.mark.envoy

TOLLGATE = pathlib.Path(sys.executable).with_name("tollgate")
POLICY = """
apiVersion: tollgate.dev/v1alpha1
kind: AccessPolicy
metadata: {name: app}
spec:
  hosts: [app.test]
  rules: [{name: open, action: Allow, to: {paths: [/open]}}]
"""


def _config(*args: str) -> str:
    result = subprocess.run([str(TOLLGATE), "envoy-config", *args], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _validate(path: pathlib.Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [harness.envoy_binary(), "--mode", "validate", "-c", str(path)], capture_output=True, text=True, check=False
    )


@pytest.mark.parametrize(
    "args",
    [
        ["--authz", "tollgate.tollgate-system.svc.cluster.local:9001", "--upstream", "orders.shop.svc:8080"],
        ["--authz", "10.0.0.7:9001", "--upstream", "[fd00::1]:80", "--tracing", "otel-collector:4317", "--access-log"],
        ["--authz", "127.0.0.1:9001", "--upstream", "127.0.0.1:80", "--request-body-bytes", "8192", "--format", "json"],
        ["--authz", "tollgate:9002", "--upstream", "a:80", "--authz-mode", "http", "--access-log"],
        ["--authz", "tollgate:9001", "--upstream", "a:80", "--tollgate-workers", "4"],
        ["--authz", "tollgate:9002", "--upstream", "a:80", "--tollgate-workers", "2", "--authz-mode", "http"],
    ],
)
def test_the_printed_bootstrap_is_valid_for_envoy(tmp_path: pathlib.Path, args: list[str]) -> None:
    path = tmp_path / ("envoy.json" if "json" in args else "envoy.yaml")
    path.write_text(_config(*args))
    result = _validate(path)
    assert result.returncode == 0 and "OK" in result.stdout + result.stderr, result.stderr[-2000:]
    if path.suffix == ".json":
        config = json.loads(path.read_text())
        [authz_filter] = [
            f
            for f in config["staticResources"]["listeners"][0]["filterChains"][0]["filters"][0]["typedConfig"][
                "httpFilters"
            ]
            if f["name"] == "envoy.filters.http.ext_authz"
        ]
        assert authz_filter["typedConfig"].get("failureModeAllow", False) is False  # Envoy's default: fail closed
        assert authz_filter["typedConfig"]["withRequestBody"]["maxRequestBytes"] == 8192


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--authz", "tollgate", "--upstream", "a:1"], "--authz"),
        (["--authz", "a:1", "--upstream", "a:99999"], "--upstream"),
        (["--authz", "a:1", "--upstream", "a:1", "--timeout", "soon"], "--timeout"),
        (["--authz", "a:1", "--upstream", "a:1", "--request-body-bytes", "0"], "--request-body-bytes"),
        (["--authz", "a:1", "--upstream", "a:1", "--tollgate-workers", "0"], "--tollgate-workers"),
        (["--authz", "a:1", "--upstream", "a:1", "--authz-mode", "rest"], "--authz-mode"),
    ],
)
def test_bad_flags_get_one_line(args: list[str], named: str) -> None:
    result = subprocess.run([str(TOLLGATE), "envoy-config", *args], capture_output=True, text=True, check=False)
    assert result.returncode == 2 and named in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.fixture
def envoy_from_config(tmp_path: pathlib.Path) -> Iterator[Callable[[str], int]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(config: str) -> int:
        path = tmp_path / "envoy.yaml"
        path.write_text(config)
        with (tmp_path / "envoy.log").open("ab") as log:  # the child keeps its own copy
            process = subprocess.Popen(
                [harness.envoy_binary(), "-c", str(path), "--base-id", str(harness.free_port())], stdout=log, stderr=log
            )
        started.append(process)
        return process.pid

    try:
        yield start
    finally:
        for process in started:
            process.terminate()
            process.wait(10)


def test_traffic_through_the_printed_bootstrap_is_decided_by_tollgate(
    tmp_path: pathlib.Path,
    tollgate: Callable[..., harness.TollgateProcess],
    echo_upstream: upstream.EchoUpstream,
    envoy_from_config: Callable[[str], int],
    http: Callable[..., Any],
    transport: str,
) -> None:
    (tmp_path / "policy.yaml").write_text(POLICY)
    authz = tollgate(tmp_path / "policy.yaml", http=True)
    port, admin = harness.free_port(), harness.free_port()
    envoy_from_config(
        _config(
            "--authz-mode",
            transport,
            "--authz",
            f"127.0.0.1:{authz.authz_port(transport)}",
            "--upstream",
            f"127.0.0.1:{echo_upstream.port}",
            "--listen",
            f"127.0.0.1:{port}",
            "--admin",
            f"127.0.0.1:{admin}",
        )
    )
    harness.wait_for_port(port)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        reply = http(port, "GET", "/open", host="app.test", headers=[("x-tollgate-subject", "admin")])
        if reply.status != 503:
            break
        time.sleep(0.1)
    assert reply.status == 200 and reply.json()["path"] == "/open"
    received = reply.json()["headers"]
    assert received.get("x-tollgate-subject") != ["admin"], received  # a client never speaks for Tollgate
    refused = http(port, "GET", "/closed", host="app.test")
    assert refused.status in (401, 403) and b'"path"' not in refused.body
