"""The audit trail of a real `tollgate serve` behind a real Envoy: privacy, search and export,
durability under SIGKILL, fail-closed on a real write failure, and loss accounting."""

from __future__ import annotations

import concurrent.futures
import contextlib
import csv
import io
import json
import pathlib
import resource
import signal
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

from authz import cli
from authz.audit import pseudonym
from authz.dev import checks, harness, idp, upstream

pytestmark = pytest.mark.envoy

CONFIG = """
apiVersion: tollgate.dev/v1alpha1
kind: IdentityProvider
metadata: {{name: dev}}
spec: {{type: jwt, jwt: {{issuer: "{issuer}", audiences: [tollgate-demo]}}}}
---
apiVersion: tollgate.dev/v1alpha1
kind: AccessPolicy
metadata: {{name: app}}
spec:
  hosts: [app.test]
  rules:
    - {{name: staff, action: Allow, to: {{paths: ["/orders", "/orders/*"]}}, from: {{groups: [staff]}}}}
"""


def test_audit_through_envoy_is_private_searchable_and_verifiable(
    tmp_path: pathlib.Path,
    audit_keys: pathlib.Path,
    dev_idp: idp.DevIdentityProvider,
    echo_upstream: upstream.EchoUpstream,
    tollgate: Callable[..., harness.TollgateProcess],
    envoy: Callable[..., harness.Envoy],
    http: Callable[..., Any],
    capsys: pytest.CaptureFixture[str],
    eventually: Callable[..., None],
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(issuer=dev_idp.issuer))
    audit_dir = tmp_path / "audit"
    authz = tollgate(
        config,
        *harness.audit_flags(audit_keys, audit_dir, "--audit-instance", "pod-1", "--audit-checkpoint-every", "5"),
    )
    proxy = envoy(authz_port=authz.port, upstream_port=echo_upstream.port)
    alice = dev_idp.token("alice-7731", groups=["staff"], email="alice.secret@corp.example")
    mallory = dev_idp.token("mallory-0042", groups=["guests"], email="mallory.secret@corp.example")
    eventually(
        lambda: (
            http(proxy.port, "GET", "/orders", host="app.test", headers={"Authorization": f"Bearer {alice}"}).status
            == 200
        )
    )
    statuses = []
    for index in range(12):
        statuses.append(
            http(
                proxy.port,
                "GET",
                f"/orders/{index}?token=qs-secret-{index}&page=2",
                host="app.test",
                headers={
                    "Authorization": f"Bearer {alice}",
                    "Cookie": "session=cookie-secret",
                    "User-Agent": "it-test/1.0",
                },
            ).status
        )
        statuses.append(
            http(proxy.port, "GET", "/orders", host="app.test", headers={"Authorization": f"Bearer {mallory}"}).status
        )
        statuses.append(
            http(proxy.port, "GET", "/orders", host="app.test", headers={"Authorization": "Bearer not.a.token"}).status
        )
    assert statuses.count(200) == 12 and statuses.count(403) == 12 and statuses.count(401) == 12
    assert authz.stop() == 0  # SIGTERM flushes and closes the session

    # Privacy: no token, cookie, query value, subject, email or address appears anywhere, in any byte.
    secrets = [
        alice,
        mallory,
        alice.split(".")[1],
        "not.a.token",
        "cookie-secret",
        "qs-secret",
        "alice-7731",
        "mallory-0042",
        "alice.secret@corp.example",
        "mallory.secret@corp.example",
    ]
    for path in audit_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for secret in secrets:
                assert secret.encode() not in data, f"{secret!r} found in {path}"

    assert cli.main(["audit", "verify", str(audit_dir), "--key", str(audit_keys / "verifier.key")]) == 0
    capsys.readouterr()

    # Search by the real subject, with the pseudonym keys; export as CSV and JSON.
    assert (
        cli.main(
            [
                "audit",
                "query",
                str(audit_dir),
                "--subject",
                "alice-7731",
                "--pseudonym-keys",
                str(audit_keys / "pseudonyms.yaml"),
                "--format",
                "csv",
                "--path-prefix",
                "/orders/",
            ]
        )
        == 0
    )
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 12 and {r["decision"] for r in rows} == {"allow"}
    keys = pseudonym.load_keys(audit_keys / "pseudonyms.yaml")
    assert {r["subject"] for r in rows} == {keys("alice-7731")}
    assert (
        cli.main(
            ["audit", "query", str(audit_dir), "--decision", "deny", "--reason", "token_malformed", "--format", "json"]
        )
        == 0
    )
    denied = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(denied) == 12 and all(r["status"] == 401 for r in denied)
    allowed = [
        json.loads(line)
        for line in subprocess.run(
            [
                sys.executable,
                "-m",
                "authz",
                "audit",
                "query",
                str(audit_dir),
                "--since",
                "1h",
                "--decision",
                "allow",
                "--format",
                "json",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
    ]
    record = next(r for r in allowed if r["request"]["path"] == "/orders/3")
    assert record["request"]["query_params"] == ["page", "token"]
    assert record["request"]["user_agent"] == "it-test/1.0"
    assert record["identity"]["groups"] == ["staff"] and record["policy"] == "default/app"
    assert record["time"].endswith("Z") and len(record["time"]) == 24
    # On loopback source and destination are both 127.0.0.1: the source (personal) is a pseudonym,
    # the destination (our own listener) is not personal and stays readable.
    assert record["request"]["source_ip"] == keys("127.0.0.1")
    assert record["request"]["destination"] == "127.0.0.1"

    # Report: repeated failed authentication from one source is called out.
    assert cli.main(["audit", "report", str(audit_dir), "--threshold", "10", "--window", "300"]) == 0
    text = capsys.readouterr().out
    assert "token_malformed" in text and "12 failures between" in text


class Load:
    """Checks sent straight to tollgate over gRPC from threads; acknowledged decision ids kept."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.acknowledged: list[str] = []
        self.failures: dict[str, int] = {}
        self.stop = threading.Event()

    def run(self, workers: int = 4) -> concurrent.futures.Future[list[None]]:
        pool = concurrent.futures.ThreadPoolExecutor(workers)
        futures = [pool.submit(self._worker, n) for n in range(workers)]
        pool.shutdown(wait=False)
        combined: concurrent.futures.Future[list[None]] = concurrent.futures.Future()
        threading.Thread(target=lambda: combined.set_result([f.result() for f in futures]), daemon=True).start()
        return combined

    def _worker(self, number: int) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)
            sent = 0
            while not self.stop.is_set():
                sent += 1
                try:
                    reply = stub.Check(checks.check_request(host="app.test", path=f"/x/{number}/{sent}"), timeout=5)
                except grpc.RpcError as error:
                    self.failures[error.code().name] = self.failures.get(error.code().name, 0) + 1
                    continue
                reason = reply.dynamic_metadata["reason"]
                if reason == "audit_unavailable":
                    self.failures[reason] = self.failures.get(reason, 0) + 1
                else:
                    self.acknowledged.append(reply.dynamic_metadata["decision_id"])


def test_sync_mode_survives_sigkill_without_losing_an_acknowledged_record(
    tmp_path: pathlib.Path,
    audit_keys: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
    eventually: Callable[..., None],
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(issuer="http://127.0.0.1:1"))
    audit_dir = tmp_path / "audit"
    authz = harness.TollgateProcess(
        config,
        extra=harness.audit_flags(
            audit_keys, audit_dir, "--audit-instance", "pod-1", "--audit-mode", "sync", "--audit-checkpoint-every", "50"
        ),
        log_to=tmp_path / "tollgate.log",
    ).start()
    load = Load(authz.port)
    done = load.run()
    eventually(lambda: len(load.acknowledged) > 300, timeout=30)
    assert authz.process is not None
    authz.process.send_signal(signal.SIGKILL)
    authz.process.wait(10)
    load.stop.set()
    done.result(timeout=30)
    acknowledged = set(load.acknowledged)
    assert len(acknowledged) > 300

    logged = set()
    for segment in audit_dir.rglob("segment-*.jsonl"):
        for line in segment.read_bytes().split(b"\n"):
            with contextlib.suppress(ValueError, KeyError):  # a torn last line: never acknowledged
                logged.add(json.loads(line)["id"])
    missing = acknowledged - logged
    assert not missing, f"{len(missing)} acknowledged decisions are not in the log"
    code = cli.main(["audit", "verify", str(audit_dir), "--key", str(audit_keys / "verifier.key")])
    out = capsys.readouterr()
    assert code in (0, 3), out  # crash artefacts at most: never a sign of tampering
    assert "INTEGRITY" not in out.err


def test_sync_mode_fails_closed_when_the_log_cannot_be_written(
    tmp_path: pathlib.Path, audit_keys: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(issuer="http://127.0.0.1:1"))
    audit_dir = tmp_path / "audit"
    limit = 48 * 1024

    def small_files() -> None:  # a real write failure (EFBIG) that even root cannot bypass
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    http_port = harness.free_port()
    flags = ["--audit-instance", "pod-1", "--audit-mode", "sync", "--metrics-listen", f"127.0.0.1:{http_port}"]
    process = harness.TollgateProcess(
        config, extra=harness.audit_flags(audit_keys, audit_dir, *flags), log_to=tmp_path / "tollgate.log"
    )
    process.preexec = small_files
    process.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{process.port}") as channel:
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)
            reasons = []
            for n in range(400):
                reply = stub.Check(checks.check_request(host="app.test", path=f"/x/{n}"), timeout=5)
                reasons.append(reply.dynamic_metadata["reason"])
                if reasons[-1] == "audit_unavailable":
                    assert reply.denied_response.status.code == 503
                    assert not reply.HasField("ok_response")
                    # ...and /readyz takes the pod out of the Service meanwhile (it retries a second later).
                    with pytest.raises(urllib.error.HTTPError) as unready:
                        urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=5)
                    assert unready.value.code == 503 and b"audit log not writable" in unready.value.read()
                    break
        assert reasons[-1] == "audit_unavailable", "the file size limit was never reached"
        assert "default_deny" in reasons  # normal decisions were recorded before the failure
    finally:
        process.stop()
    assert "audit log cannot be written" in (tmp_path / "tollgate.log").read_text()


def test_async_overflow_is_counted_in_a_loss_record(
    tmp_path: pathlib.Path, audit_keys: pathlib.Path, eventually: Callable[..., None]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(issuer="http://127.0.0.1:1"))
    audit_dir = tmp_path / "audit"
    process = harness.TollgateProcess(
        config,
        extra=harness.audit_flags(audit_keys, audit_dir, "--audit-instance", "pod-1", "--audit-queue-size", "1"),
        log_to=tmp_path / "tollgate.log",
    ).start()
    load = Load(process.port)
    done = load.run(workers=8)
    eventually(lambda: len(load.acknowledged) > 400, timeout=30)
    load.stop.set()
    done.result(timeout=30)
    assert process.stop() == 0
    records = [
        json.loads(line)
        for segment in sorted(audit_dir.rglob("segment-*.jsonl"))
        for line in segment.read_bytes().splitlines()
    ]
    decisions = [r for r in records if r["kind"] == "decision"]
    losses = [r for r in records if r["kind"] == "loss"]
    lost = sum(r["loss"]["count"] for r in losses)
    assert losses and all(r["loss"]["reason"] == "queue_full" for r in losses)
    assert len(decisions) + lost == len(load.acknowledged)  # every decision is either recorded or counted


def test_a_check_cancelled_by_the_caller_is_still_recorded(
    tmp_path: pathlib.Path, audit_keys: pathlib.Path, eventually: Callable[..., None]
) -> None:
    provider = idp.DevIdentityProvider(tmp_path / "idp").start()
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(issuer=provider.issuer))
    audit_dir = tmp_path / "audit"
    process = harness.TollgateProcess(
        config,
        extra=harness.audit_flags(audit_keys, audit_dir, "--audit-instance", "pod-1"),
        log_to=tmp_path / "tollgate.log",
    ).start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{process.port}") as channel:
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)
            warm = checks.check_request(host="app.test", headers={"authorization": f"Bearer {provider.token('a')}"})
            eventually(lambda: stub.Check(warm, timeout=5).dynamic_metadata["reason"] != "identity_unavailable")
            provider.rotate()  # a new key the server has not fetched yet...
            provider.delay = 3.0  # ...from a slow provider: the Check waits for the refetch
            slow = checks.check_request(
                host="app.test", request_id="slow-one", headers={"authorization": f"Bearer {provider.token('b')}"}
            )
            with pytest.raises(grpc.RpcError) as caught:
                stub.Check(slow, timeout=0.5)  # the caller gives up, as Envoy does at its timeout
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        time.sleep(0.3)
    finally:
        assert process.stop() == 0
        provider.stop()
    records = [
        json.loads(line) for segment in audit_dir.rglob("segment-*.jsonl") for line in segment.read_bytes().splitlines()
    ]
    cancelled = [r for r in records if r.get("reason") == "request_cancelled"]
    assert len(cancelled) == 1 and cancelled[0]["decision"] == "error" and cancelled[0]["status"] == 504
    assert cancelled[0]["request"]["request_id"] == "slow-one" and cancelled[0]["request"]["host"] == "app.test"
    assert not [r for r in records if r.get("request", {}).get("request_id") == "slow-one" and r is not cancelled[0]]


def test_a_running_servers_log_verifies_as_live_and_a_killed_ones_as_a_crash(
    tmp_path: pathlib.Path, audit_keys: pathlib.Path, eventually: Callable[..., None]
) -> None:
    # What a monitoring CronJob sees: exit 0 while the server runs (its newest checkpoint is recent),
    # exit 3 once it has stopped checkpointing without closing its session.
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(issuer="http://127.0.0.1:1"))
    audit_dir = tmp_path / "audit"
    flags = ["--audit-instance", "pod-1", "--audit-checkpoint-seconds", "1"]
    authz = harness.TollgateProcess(config, extra=harness.audit_flags(audit_keys, audit_dir, *flags)).start()
    tollgate = pathlib.Path(sys.executable).with_name("tollgate")
    verify = [str(tollgate), "audit", "verify", str(audit_dir), "--key", str(audit_keys / "verifier.key")]
    try:
        with grpc.insecure_channel(f"127.0.0.1:{authz.port}") as channel:
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)
            for index in range(20):
                stub.Check(checks.check_request(host="app.test", path=f"/orders/{index}"), timeout=5)
        time.sleep(1.5)  # a heartbeat checkpoint covers them
        live = subprocess.run(verify, capture_output=True, text=True, timeout=60, check=False)
        assert live.returncode == 0, live.stdout + live.stderr
        assert "live: every record is covered" in live.stdout + live.stderr
    finally:
        assert authz.process is not None
        authz.process.send_signal(signal.SIGKILL)
        authz.process.wait(10)
    # What the real server wrote is readable by its group at most, and nothing is world-readable.
    for path in [audit_dir / "pod-1", *audit_dir.rglob("*")]:
        mode = path.stat().st_mode & 0o777
        assert mode in ((0o750,) if path.is_dir() else (0o640, 0o440)), (path, oct(mode))
    # Within the bound (twice the 1 s interval plus 2 s) the session still counts as live ...
    as_of_now = subprocess.run(verify, capture_output=True, text=True, timeout=60, check=False)
    assert as_of_now.returncode == 0, as_of_now.stdout + as_of_now.stderr
    # ... and once it has passed, the session that stopped checkpointing without closing is a crash.
    time.sleep(4.2)
    crashed = subprocess.run(verify, capture_output=True, text=True, timeout=60, check=False)
    assert crashed.returncode == 3, crashed.stdout + crashed.stderr
    assert "session never closed and its newest checkpoint is" in crashed.stdout + crashed.stderr
