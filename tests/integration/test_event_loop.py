"""The server on either event loop (authz.loops): uvloop, the default where installed, and
asyncio's own — the same answers through a real Envoy, the same audit trail, the same drain; and a
clean fall back when uvloop cannot be imported."""

from __future__ import annotations

import os
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


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_the_same_answers_audit_and_drain_on_either_loop(
    loop: str,
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
        "--event-loop",
        loop,
        "--metrics-listen",
        f"127.0.0.1:{metrics_port}",
        *harness.audit_flags(audit_keys, audit_dir),
    )
    proxy = envoy(authz_port=authz.port, upstream_port=echo_upstream.port)
    staff = {"authorization": "Bearer " + dev_idp.token("alice", groups=["staff"])}
    for _ in range(50):  # the first may wait for the provider's keys (503 until they arrive)
        reply = http(proxy.port, "GET", "/private", host="app.test", headers=staff)
        if reply.status != 503:
            break
    assert reply.status == 200 and reply.json()["headers"]["x-tollgate-subject"] == ["alice"]
    assert http(proxy.port, "GET", "/private", host="app.test").status == 401
    forged = {"authorization": "Bearer forged", "x-tollgate-subject": "root"}
    assert http(proxy.port, "GET", "/private", host="app.test", headers=forged).status == 401
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz", timeout=5) as ready:
        assert ready.status == 200
    assert authz.stop() == 0  # SIGTERM: drained, audit session closed
    log = (tmp_path / "tollgate.log").read_text()
    assert f"event loop: {loop}" in log
    assert cli.main(["audit", "verify", str(audit_dir), "--key", str(audit_keys / "verifier.key")]) == 0


def test_without_uvloop_auto_falls_back_and_uvloop_refuses_in_one_line(tmp_path: pathlib.Path) -> None:
    """uvloop made unimportable for real: a package of that name that fails to import comes first."""
    shadow = tmp_path / "shadow" / "uvloop"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise ImportError("uvloop is not available on this machine")\n')
    env = {**os.environ, "PYTHONPATH": str(shadow.parent)}
    config = pathlib.Path(__file__).parents[2] / "examples" / "policies"
    process = harness.TollgateProcess(config, extra=["--event-loop", "auto"], env=env, log_to=tmp_path / "log")
    process.start()
    assert process.stop() == 0
    assert "event loop: asyncio (uvloop cannot be imported: uvloop is not available" in (tmp_path / "log").read_text()
    refused = subprocess.run(
        [sys.executable, "-m", "authz", "serve", "--config", str(config), "--event-loop", "uvloop"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines() == [
        "tollgate: --event-loop uvloop: uvloop cannot be imported (uvloop is not available on this machine)"
    ]
