"""`tollgate serve` as a real process: start-up errors, hot reload under load, SIGTERM drain."""

from __future__ import annotations

import asyncio
import concurrent.futures
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from authz import configuration, loader, server
from authz.dev import checks, harness, idp, upstream

pytestmark = pytest.mark.envoy

POLICY = """
apiVersion: tollgate.dev/v1alpha1
kind: AccessPolicy
metadata: {{name: app}}
spec:
  hosts: [app.test]
  rules:
    - {{name: open, action: Allow, to: {{paths: [{path}]}}}}
"""


def test_invalid_config_at_start_exits_2_naming_the_field(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(POLICY.format(path="'/a*b'"))
    result = subprocess.run(
        [sys.executable, "-m", "authz", "serve", "--config", str(path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert f"{path}: document 1 (AccessPolicy default/app): spec.rules[0].to.paths[0]" in result.stderr
    assert "Traceback" not in result.stderr


def test_flags_from_environment(tmp_path: pathlib.Path, tollgate: Callable[..., harness.TollgateProcess]) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(POLICY.format(path="/x"))
    port = harness.free_port()
    process = harness.TollgateProcess(path, log_to=tmp_path / "env.log", port=port)
    process.args = [sys.executable, "-m", "authz", "serve"]  # everything from TOLLGATE_*
    process.env.update(TOLLGATE_CONFIG=str(path), TOLLGATE_LISTEN=f"127.0.0.1:{port}", TOLLGATE_DEFAULT_ACTION="Allow")
    process.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = external_auth_pb2_grpc.AuthorizationStub(channel).Check(
                checks.check_request(host="uncovered.test"), timeout=5
            )
        assert reply.HasField("ok_response")  # TOLLGATE_DEFAULT_ACTION=Allow took effect
    finally:
        process.stop()


def test_hot_reload_under_load_and_bad_config_keeps_last_good(
    tmp_path: pathlib.Path,
    echo_upstream: upstream.EchoUpstream,
    tollgate: Callable[..., harness.TollgateProcess],
    envoy: Callable[..., harness.Envoy],
    http: Callable[..., Any],
    eventually: Callable[..., None],
) -> None:
    config = tmp_path / "config"
    config.mkdir()
    policy = config / "app.yaml"
    policy.write_text(POLICY.format(path="/v1"))
    authz = tollgate(config, "--reload-interval", "0.2")
    proxy = envoy(authz_port=authz.port, upstream_port=echo_upstream.port)
    assert http(proxy.port, "GET", "/v1", host="app.test").status == 200
    assert http(proxy.port, "GET", "/v2", host="app.test").status == 401

    # Load: /always is allowed by every revision below, so any failure is a reload fault.
    policy.write_text(POLICY.format(path="/always").replace("paths: [/always]", "paths: [/always, /v1]"))
    eventually(lambda: http(proxy.port, "GET", "/always", host="app.test").status == 200)
    stop = threading.Event()
    failures: list[int] = []
    counts = [0]

    def hammer() -> None:
        while not stop.is_set():
            status = http(proxy.port, "GET", "/always", host="app.test").status
            counts[0] += 1
            if status != 200:
                failures.append(status)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        workers = [pool.submit(hammer) for _ in range(4)]
        for revision in range(6):
            target = f"/r{revision}"
            policy.write_text(POLICY.format(path="/always").replace("paths: [/always]", f"paths: [/always, {target}]"))
            eventually(lambda t=target: http(proxy.port, "GET", t, host="app.test").status == 200)  # type: ignore[misc]
        stop.set()
        for worker in workers:
            worker.result()
    assert counts[0] > 50
    assert failures == []

    # An invalid change is rejected with file and field in the log; the last good config stays.
    (config / "broken.yaml").write_text(POLICY.format(path="'/bad*path*'").replace("name: app", "name: other"))
    eventually(lambda: "configuration rejected" in (tmp_path / "tollgate.log").read_text())
    log = (tmp_path / "tollgate.log").read_text()
    assert "broken.yaml: document 1 (AccessPolicy default/other): spec.rules[0].to.paths[0]" in log
    assert http(proxy.port, "GET", "/r5", host="app.test").status == 200
    assert http(proxy.port, "GET", "/always", host="app.test").status == 200
    # Fixing it is picked up again.
    (config / "broken.yaml").unlink()
    policy.write_text(POLICY.format(path="/fixed"))
    eventually(lambda: http(proxy.port, "GET", "/fixed", host="app.test").status == 200)
    assert http(proxy.port, "GET", "/always", host="app.test").status == 401


PROVIDER = """
apiVersion: tollgate.dev/v1alpha1
kind: IdentityProvider
metadata: {{name: dev}}
spec:
  type: jwt
  jwt: {{issuer: "{issuer}", audiences: [tollgate-demo], refresh: {{unknownKidSeconds: 0.1, timeoutSeconds: 10}}}}
---
apiVersion: tollgate.dev/v1alpha1
kind: AccessPolicy
metadata: {{name: app}}
spec:
  hosts: [app.test]
  rules: [{{name: users, action: Allow, from: {{authenticated: true}}}}]
"""


def test_sigterm_drains_in_flight_requests(tmp_path: pathlib.Path, eventually: Callable[..., None]) -> None:
    provider = idp.DevIdentityProvider(tmp_path / "idp").start()
    config = tmp_path / "config.yaml"
    config.write_text(PROVIDER.format(issuer=provider.issuer))
    http_port = harness.free_port()
    authz = harness.TollgateProcess(
        config, extra=["--grace", "10", "--metrics-listen", f"127.0.0.1:{http_port}"], log_to=tmp_path / "tollgate.log"
    ).start()
    try:
        assert _http(http_port, "/healthz") == (200, "ok\n")
        status, text = _http(http_port, "/readyz")
        assert status == 200 and text.startswith("ready: configuration revision ")
        channel = grpc.insecure_channel(f"127.0.0.1:{authz.port}")
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        warm = checks.check_request(host="app.test", headers={"authorization": f"Bearer {provider.token('alice')}"})
        # Keys arrive in the background after start; until then the answer is identity_unavailable.
        eventually(lambda: stub.Check(warm, timeout=10).HasField("ok_response"))
        # A token signed by a key the server has not seen yet makes it refetch the JWKS, and the
        # provider is slow: the Check is genuinely in flight when SIGTERM arrives.
        provider.rotate()
        provider.delay = 2.0
        token = provider.token("bob")
        future = stub.Check.future(
            checks.check_request(host="app.test", headers={"authorization": f"Bearer {token}"}), timeout=15
        )
        time.sleep(0.5)
        assert authz.process is not None
        authz.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        health = health_pb2_grpc.HealthStub(channel)
        try:
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=2).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        except grpc.RpcError as refused:  # already refusing new RPCs: also correct
            assert refused.code() == grpc.StatusCode.UNAVAILABLE
        assert _http(http_port, "/readyz") == (503, "draining: shutting down\n")  # as gRPC health says
        assert _http(http_port, "/healthz")[0] == 200  # alive until the in-flight Check is answered
        reply = future.result()
        assert reply.HasField("ok_response"), reply
        assert authz.process.wait(15) == 0
        channel.close()
        with pytest.raises(grpc.RpcError), grpc.insecure_channel(f"127.0.0.1:{authz.port}") as fresh:
            external_auth_pb2_grpc.AuthorizationStub(fresh).Check(checks.check_request(), timeout=1)
    finally:
        authz.stop()
        provider.stop()


def _http(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_undoing_a_rejected_change_says_which_revision_is_in_force(
    tmp_path: pathlib.Path, tollgate: Callable[..., harness.TollgateProcess], eventually: Callable[..., None]
) -> None:
    policy = tmp_path / "app.yaml"
    good = POLICY.format(path="/v1")
    policy.write_text(good)
    tollgate(policy, "--reload-interval", "0.1")
    log = tmp_path / "tollgate.log"
    policy.write_text(POLICY.format(path="'/a*b'"))
    eventually(lambda: "configuration rejected" in log.read_text())
    policy.write_text(good)  # the same revision as at start: nothing to install, but it must be said
    eventually(lambda: "in force again (the rejected change was undone)" in log.read_text())


async def test_a_change_made_while_the_server_starts_is_not_missed(tmp_path: pathlib.Path) -> None:
    # The files are read before the server starts, and the reload watcher begins later: a change
    # in between must be read, not taken for the revision in force (it was once, and stayed unread
    # until the next change).
    policy = tmp_path / "app.yaml"
    policy.write_text(POLICY.format(path="/v1"))
    time.sleep(0.2)  # older than the read below by more than the mtime slack
    snapshot = loader.load(policy)
    policy.write_text(POLICY.format(path="/v2"))  # meanwhile, the server is still starting
    runtime = server.Runtime(snapshot, default_allow=False)
    settings = configuration.ServerSettings(config=policy, reload_interval=0.05)
    watcher = asyncio.create_task(server.watch(settings, runtime))
    try:
        async with asyncio.timeout(5):
            while runtime.snapshot.revision == snapshot.revision:
                await asyncio.sleep(0.05)
    finally:
        watcher.cancel()
    assert runtime.snapshot.revision == loader.load(policy).revision


async def test_files_unchanged_since_they_were_read_are_not_read_again(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = tmp_path / "app.yaml"
    policy.write_text(POLICY.format(path="/v1"))
    time.sleep(0.2)
    runtime = server.Runtime(loader.load(policy), default_allow=False)
    loads: list[pathlib.Path] = []
    monkeypatch.setattr(loader, "load", loads.append)  # a read would be recorded here
    watcher = asyncio.create_task(
        server.watch(configuration.ServerSettings(config=policy, reload_interval=0.05), runtime)
    )
    await asyncio.sleep(0.3)
    watcher.cancel()
    assert loads == []


def _configmap_revision(directory: pathlib.Path, name: str, policy: str) -> None:
    """What the kubelet does for a ConfigMap volume: files in a timestamped directory, ``..data``
    pointing at it, and each key a symlink through ``..data``; an update swaps ``..data`` atomically
    (a rename of a new symlink over the old) and removes the old directory."""
    revision = directory / f"..{name}"
    revision.mkdir()
    (revision / "app.yaml").write_text(policy)
    link = directory / "..data_tmp"
    link.symlink_to(revision.name)
    old = (directory / "..data").resolve() if (directory / "..data").exists() else None
    link.replace(directory / "..data")
    if not (directory / "app.yaml").is_symlink():
        (directory / "app.yaml").symlink_to("..data/app.yaml")
    if old is not None:
        for path in old.iterdir():
            path.unlink()
        old.rmdir()


def test_a_configmap_volume_update_is_followed_without_failed_checks(
    tmp_path: pathlib.Path, tollgate: Callable[..., harness.TollgateProcess], eventually: Callable[..., None]
) -> None:
    mount = tmp_path / "config"
    mount.mkdir()
    _configmap_revision(mount, "2026_11_30_00_00_00.000000001", POLICY.format(path="/always"))
    authz = tollgate(mount, "--reload-interval", "0.1")
    stop = threading.Event()
    failures: list[str] = []
    answered = [0]

    def hammer() -> None:
        with grpc.insecure_channel(f"127.0.0.1:{authz.port}") as channel:
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)
            while not stop.is_set():
                reply = stub.Check(checks.check_request(host="app.test", path="/always"), timeout=5)
                answered[0] += 1
                if not reply.HasField("ok_response"):
                    failures.append(reply.denied_response.body)

    def allowed(path: str) -> bool:
        with grpc.insecure_channel(f"127.0.0.1:{authz.port}") as channel:
            reply = external_auth_pb2_grpc.AuthorizationStub(channel).Check(
                checks.check_request(host="app.test", path=path), timeout=5
            )
        return reply.HasField("ok_response")

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        workers = [pool.submit(hammer) for _ in range(2)]
        for index in range(1, 6):
            target = f"/v{index}"
            policy = POLICY.format(path="/always").replace("paths: [/always]", f"paths: [/always, {target}]")
            _configmap_revision(mount, f"2026_11_30_00_00_0{index}.000000001", policy)
            eventually(lambda t=target: allowed(t))  # type: ignore[misc]
        stop.set()
        for worker in workers:
            worker.result()
    assert answered[0] > 20 and failures == []
    assert not allowed("/v1")  # the old revisions are gone, not merged
    assert sorted(p.name for p in mount.iterdir()) == ["..2026_11_30_00_00_05.000000001", "..data", "app.yaml"]


def test_an_http_listen_address_in_use_is_one_line_and_exit_2(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(POLICY.format(path="/x"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "authz", "serve", "--config", str(path), "--http-listen", f"127.0.0.1:{port}"],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [f"tollgate: --http-listen 127.0.0.1:{port}: address already in use"]
