"""``tollgate serve``'s gRPC Checks decided on gRPC's threads (authz.threads), through a real Envoy:
the same answers and audit trail whether a Check waits or not (durable audit mode makes every
Check wait for its record, so every one is finished by the loop), a clean drain, and
``--grpc-threads`` refused in one line when it is not a count."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from authz import cli
from authz.dev import harness, idp, upstream

pytestmark = pytest.mark.envoy


@pytest.mark.parametrize("audit_mode", ["async", "sync"])
def test_the_same_answers_audit_and_drain_whether_checks_wait_or_not(
    audit_mode: str,
    tmp_path: pathlib.Path,
    dev_idp: idp.DevIdentityProvider,
    echo_upstream: upstream.EchoUpstream,
    tollgate: Callable[..., harness.TollgateProcess],
    envoy: Callable[..., harness.Envoy],
    audit_keys: pathlib.Path,
    http: Callable[..., Any],
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        dev_idp.app_config("{name: staff, action: Allow, to: {paths: [/private]}, from: {groups: [staff]}}")
    )
    metrics_port = harness.free_port()
    audit_dir = tmp_path / "audit"
    authz = tollgate(
        config,
        "--grpc-threads",
        "2",
        "--metrics-listen",
        f"127.0.0.1:{metrics_port}",
        *harness.audit_flags(audit_keys, audit_dir, "--audit-mode", audit_mode),
    )
    proxy = envoy(authz_port=authz.port, upstream_port=echo_upstream.port)
    staff = {"authorization": "Bearer " + dev_idp.token("alice", groups=["staff"])}
    for _ in range(50):  # the first may wait for the provider's keys (503 until they arrive)
        reply = http(proxy.port, "GET", "/private", host="app.test", headers=staff)
        if reply.status != 503:
            break
    assert reply.status == 200 and reply.json()["headers"]["x-tollgate-subject"] == ["alice"]
    answers = [http(proxy.port, "GET", "/private", host="app.test", headers=staff).status for _ in range(20)]
    assert answers == [200] * 20
    unauthenticated = http(proxy.port, "GET", "/private", host="app.test")
    assert unauthenticated.status == 401 and unauthenticated.json()["reason"] == "default_deny"
    forged = {"authorization": "Bearer forged", "x-tollgate-subject": "root"}
    assert http(proxy.port, "GET", "/private", host="app.test", headers=forged).status == 401
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz", timeout=5) as ready:
        assert ready.status == 200
    assert authz.stop() == 0  # SIGTERM: drained, audit session closed
    assert cli.main(["audit", "verify", str(audit_dir), "--key", str(audit_keys / "verifier.key")]) == 0
    records = [
        json.loads(line) for segment in audit_dir.rglob("segment-*.jsonl") for line in segment.read_bytes().splitlines()
    ]
    decisions = [r for r in records if r["kind"] == "decision"]
    allowed = [r for r in decisions if r["decision"] == "allow"]
    assert len(allowed) == 21 and {r["status"] for r in allowed} == {200}
    assert sum(r["decision"] == "deny" and r["status"] == 401 for r in decisions) == 2


@pytest.mark.parametrize(("value", "says"), [("0", "must be 1 or more"), ("many", "not a whole number")])
def test_grpc_threads_that_is_not_a_count_is_refused_in_one_line(value: str, says: str) -> None:
    config = pathlib.Path(__file__).parents[2] / "examples" / "policies"
    refused = subprocess.run(
        [sys.executable, "-m", "authz", "serve", "--config", str(config), "--grpc-threads", value],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert refused.stderr.strip() == f"tollgate: --grpc-threads '{value}': {says}"
