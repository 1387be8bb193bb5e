"""``tollgate serve --workers N`` through a real Envoy: the load reaches every worker (counted by
each worker's own metrics, served together by the supervisor), the metrics add up, a killed worker
is replaced without failed checks beyond those it had in flight, and SIGTERM stops them all."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator

import pytest
from prometheus_client import parser

from authz import cli, envoy_bootstrap
from authz.dev import harness, upstream

pytestmark = pytest.mark.envoy

POLICY = """
apiVersion: tollgate.dev/v1alpha1
kind: AccessPolicy
metadata: {name: app, namespace: demo}
spec:
  hosts: [app.test]
  rules: [{name: open, action: Allow, to: {paths: ["/*"]}}]
"""
CLIENTS = 16


class Pod:
    """The supervisor and its workers, with metrics on the supervisor's --metrics-listen."""

    def __init__(self, process: harness.TollgateProcess, metrics_port: int) -> None:
        self.process = process
        self.metrics_port = metrics_port

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=5) as reply:
                return reply.status, reply.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()
        except OSError:
            return 0, ""

    def checks_by_worker(self) -> dict[str, float]:
        _, text = self.get("/metrics")
        counts: dict[str, float] = {}
        for family in parser.text_string_to_metric_families(text):
            if family.name == "tollgate_checks":
                for sample in family.samples:
                    if sample.name == "tollgate_checks_total":
                        worker = sample.labels["worker"]
                        counts[worker] = counts.get(worker, 0) + sample.value
        return counts

    def process_cpu_by_worker(self) -> dict[str, float]:
        """Each worker's ``process_cpu_seconds_total``, as the supervisor serves it."""
        _, text = self.get("/metrics")
        [family] = [f for f in parser.text_string_to_metric_families(text) if f.name == "process_cpu_seconds"]
        return {sample.labels["worker"]: sample.value for sample in family.samples}

    def restarts(self) -> float:
        _, text = self.get("/metrics")
        [family] = [f for f in parser.text_string_to_metric_families(text) if f.name == "tollgate_worker_restarts"]
        return float(family.samples[0].value)

    def workers(self) -> list[int]:
        """The supervisor's children: the workers' process ids."""
        assert self.process.process is not None
        pid = self.process.process.pid
        children = pathlib.Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return sorted(int(child) for child in children)


@pytest.fixture
def pod(tmp_path: pathlib.Path) -> Iterator[Pod]:
    (tmp_path / "policy.yaml").write_text(POLICY)
    metrics_port = harness.free_port()
    process = harness.TollgateProcess(
        tmp_path / "policy.yaml",
        extra=["--workers", "2", "--metrics-listen", f"127.0.0.1:{metrics_port}", "--grace", "2"],
        http=True,
        log_to=tmp_path / "tollgate.log",
    ).start()
    pod = Pod(process, metrics_port)
    try:
        harness.wait_until(lambda: pod.get("/readyz")[0] == 200, what="both workers ready")
        yield pod
    finally:
        process.stop()


FAILED: list[tuple[int, bytes]] = []  # what the failed requests got, for the assertion messages


def _load(port: int, seconds: float, stop: threading.Event | None = None) -> tuple[int, int]:
    """CLIENTS keep-alive clients through Envoy for ``seconds``: (answered 200, answered otherwise)."""
    deadline = time.monotonic() + seconds

    def client(index: int) -> tuple[int, int]:
        good = bad = 0
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            while time.monotonic() < deadline and not (stop and stop.is_set()):
                connection.request("GET", f"/items/{index}", headers={"Host": "app.test"})
                reply = connection.getresponse()
                body = reply.read()
                if reply.status == 200:
                    good += 1
                else:
                    bad += 1
                    FAILED.append((reply.status, body[:200]))
        finally:
            connection.close()
        return good, bad

    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(client, range(CLIENTS)))
    return sum(r[0] for r in results), sum(r[1] for r in results)


def _envoy(envoy: Callable[..., harness.Envoy], pod: Pod, echo: upstream.EchoUpstream, transport: str) -> harness.Envoy:
    # As tollgate envoy-config --tollgate-workers writes it, with smaller numbers for a short test:
    # gRPC: at most 2 checks per HTTP/2 connection, so Envoy opens several (over HTTP/1.1 it opens
    # one per check in flight anyway); connections renewed every second, so a new worker gets its share.
    streams = 2 if transport == envoy_bootstrap.GRPC_MODE else None
    return envoy(
        authz_port=pod.process.authz_port(transport),
        upstream_port=echo.port,
        authz_mode=transport,
        authz_streams=streams,
        authz_connection_seconds=1.0,
    )


def test_load_reaches_every_worker_and_the_metrics_add_up(
    pod: Pod, envoy: Callable[..., harness.Envoy], echo_upstream: upstream.EchoUpstream, transport: str
) -> None:
    proxy = _envoy(envoy, pod, echo_upstream, transport)
    before = pod.checks_by_worker()
    good = 0
    # The kernel hashes each of Envoy's connections to a worker, and a 2 s round opens only a few:
    # a round may leave one worker a small share by chance. Up to four rounds, until both have one.
    for _ in range(4):
        answered, bad = _load(proxy.port, 2.0)
        assert bad == 0 and answered > 200, FAILED[:5]
        good += answered
        after = pod.checks_by_worker()
        counted = {worker: after.get(worker, 0) - before.get(worker, 0) for worker in ("0", "1")}
        # Every answer was counted once, by the worker that decided it: the sum is the total.
        assert sum(counted.values()) == good
        if min(counted.values()) > 0.1 * good:
            break
    # And both workers decided a real share (SO_REUSEPORT spreads Envoy's connections).
    assert min(counted.values()) > 0.1 * good, counted
    # Their CPU adds up too: the process_* series are each worker's own, as /proc counts it.
    cpu = pod.process_cpu_by_worker()
    assert set(cpu) == {"0", "1"}
    assert pod.process.process is not None
    split = harness.cpu_split(pod.process.process.pid)  # the supervisor, then each worker
    assert split is not None and len(split) == 3
    assert abs(sum(cpu.values()) - sum(split[1:])) < 0.2, (cpu, split)


def test_a_killed_worker_is_replaced_and_only_its_checks_in_flight_fail(
    pod: Pod, envoy: Callable[..., harness.Envoy], echo_upstream: upstream.EchoUpstream, transport: str
) -> None:
    proxy = _envoy(envoy, pod, echo_upstream, transport)
    first = pod.workers()
    assert len(first) == 2
    results: list[tuple[int, int]] = []
    loader = threading.Thread(target=lambda: results.append(_load(proxy.port, 3.0)))
    loader.start()
    time.sleep(1.0)
    os.kill(first[0], signal.SIGKILL)  # a crash: no drain, its connections reset
    loader.join()
    [(good, bad)] = results
    assert good > 200
    assert bad <= CLIENTS, f"{bad} checks failed; at most the {CLIENTS} in flight may"
    harness.wait_until(lambda: len(pod.workers()) == 2 and first[0] not in pod.workers(), what="a new worker")
    assert pod.restarts() == 1
    harness.wait_until(lambda: pod.get("/readyz")[0] == 200, what="the new worker ready")
    before = pod.checks_by_worker()  # the new worker's counters start again from nothing
    good, bad = _load(proxy.port, 2.5)
    after = pod.checks_by_worker()
    assert bad == 0 and sum(after.values()) - sum(before.values()) == good
    # Both workers take a real share again, the new one included (Envoy renews its connections).
    shares = {worker: after.get(worker, 0) - before.get(worker, 0) for worker in ("0", "1")}
    assert min(shares.values()) > 0.1 * good, (before, after)


def test_each_worker_writes_its_own_audit_instance_and_the_directory_verifies(
    tmp_path: pathlib.Path,
    audit_keys: pathlib.Path,
    envoy: Callable[..., harness.Envoy],
    echo_upstream: upstream.EchoUpstream,
) -> None:
    (tmp_path / "policy.yaml").write_text(POLICY)
    audit_dir = tmp_path / "audit"
    process = harness.TollgateProcess(
        tmp_path / "policy.yaml",
        extra=["--workers", "2", *harness.audit_flags(audit_keys, audit_dir, "--audit-instance", "pod-a")],
        http=True,
        log_to=tmp_path / "tollgate.log",
    ).start()
    try:
        pod = Pod(process, 0)
        harness.wait_until(lambda: len(pod.workers()) == 2, what="two workers")
        time.sleep(1.5)  # both listening
        proxy = _envoy(envoy, pod, echo_upstream, envoy_bootstrap.HTTP_MODE)
        good, bad = _load(proxy.port, 2.0)
        assert bad == 0 and good > 100
    finally:
        assert process.stop() == 0
    assert sorted(path.name for path in audit_dir.iterdir()) == ["pod-a-w0", "pod-a-w1"]
    key = str(audit_keys / "verifier.key")
    assert cli.main(["audit", "verify", str(audit_dir), "--key", key]) == 0
    kinds = [
        json.loads(line)["kind"]
        for segment in audit_dir.glob("pod-a-w*/*/segment-*.jsonl")
        for line in segment.read_text().splitlines()
    ]
    # One record per decision, in one worker's log or the other's (the readiness probes add none).
    assert kinds.count("decision") == good


def test_sigterm_stops_every_worker(pod: Pod) -> None:
    workers = pod.workers()
    assert pod.process.stop() == 0
    for pid in workers:
        assert not pathlib.Path(f"/proc/{pid}").exists() or "zombie" in pathlib.Path(f"/proc/{pid}/status").read_text()


def test_a_setting_every_worker_refuses_stops_the_server_with_status_2(
    tmp_path: pathlib.Path, audit_keys: pathlib.Path
) -> None:
    (tmp_path / "policy.yaml").write_text(POLICY)
    (tmp_path / "signing.key").write_text("not a key\n")  # read by each worker, not by the supervisor
    flags = harness.audit_flags(audit_keys, tmp_path / "audit")
    flags[flags.index("--audit-signing-key") + 1] = str(tmp_path / "signing.key")
    result = subprocess.run(
        [sys.executable, "-m", "authz", "serve", "--config", str(tmp_path / "policy.yaml"), "--workers", "2", *flags],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"{tmp_path / 'signing.key'}" in result.stderr and "cannot use the signing key" in result.stderr
