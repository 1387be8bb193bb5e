"""Each way of running gRPC Checks, through a real Envoy: grpc.aio (the default) on uvloop and
on asyncio's loop, and ``--grpc-engine threads`` (authz.threads) whether a Check waits or not
(durable audit mode makes every Check wait for its record, so every one is finished by the loop):
the same answers, audit trail and drain. ``--grpc-threads`` refused in one line when it is not a
count; calls whose message never arrives, and calls that stay open, delay no Check on either
engine."""

from __future__ import annotations

import contextlib
import json
import pathlib
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2_grpc

from authz import cli
from authz.dev import checks, harness, idp, upstream

pytestmark = pytest.mark.envoy


@pytest.mark.parametrize(
    ("engine", "loop", "audit_mode", "logged"),
    [
        ("aio", "uvloop", "async", "gRPC engine: aio; event loop: uvloop"),
        ("aio", "asyncio", "async", "gRPC engine: aio; event loop: asyncio"),
        ("auto", "auto", "async", "gRPC engine: threads (auto); event loop: asyncio, locked"),
        ("auto", "uvloop", "async", "gRPC engine: aio (auto: --event-loop uvloop); event loop: uvloop"),
        ("auto", "auto", "sync", "gRPC engine: aio (auto: --audit-mode sync, where every Check waits"),
        ("threads", "auto", "async", "gRPC engine: threads; event loop: asyncio, locked"),
        ("threads", "auto", "sync", "gRPC engine: threads; event loop: asyncio, locked"),
    ],
)
def test_the_same_answers_audit_and_drain_on_each_engine_and_loop(
    engine: str,
    loop: str,
    audit_mode: str,
    logged: str,
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
        "--grpc-engine",
        engine,
        "--event-loop",
        loop,
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
    assert logged in (tmp_path / "tollgate.log").read_text()
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
        [
            sys.executable,
            "-m",
            "authz",
            "serve",
            "--config",
            str(config),
            "--grpc-engine",
            "threads",
            "--grpc-threads",
            value,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert refused.stderr.strip() == f"tollgate: --grpc-threads '{value}': {says}"


_CHECK = "/envoy.service.auth.v3.Authorization/Check"
_HEALTH_CHECK = "/grpc.health.v1.Health/Check"
_HEALTH_WATCH = "/grpc.health.v1.Health/Watch"
_REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


def _stall(channel: grpc.Channel, method: str, calls: int, release: threading.Event) -> list[Any]:
    """``calls`` calls of ``method`` that send their headers and never a message, as a slow client
    does (a stream-unary call on the wire is what a unary one is, until its message)."""

    def never() -> Iterator[bytes]:
        release.wait()
        yield from ()

    stalled = channel.stream_unary(method, request_serializer=bytes, response_deserializer=bytes)
    return [stalled.future(never()) for _ in range(calls)]


def _open_streams(channel: grpc.Channel, method: str, request: bytes, calls: int) -> list[Any]:
    """``calls`` calls of ``method`` that send one message and stay open (health's Watch streams
    its answers for as long as the client listens; reflection reads requests until the client
    closes its side)."""
    if method == _HEALTH_WATCH:
        watch = channel.unary_stream(method, request_serializer=bytes, response_deserializer=bytes)
        return [watch(request) for _ in range(calls)]
    release = threading.Event()

    def one_then_wait() -> Iterator[bytes]:
        yield request
        release.wait()

    reflect = channel.stream_stream(method, request_serializer=bytes, response_deserializer=bytes)
    opened = [reflect(one_then_wait()) for _ in range(calls)]
    # Reflection is being served: some stream has its first answer. Which ones do is the server's
    # choice (the threads engine serves two at a time), so each is read on a thread of its own.
    served = threading.Event()

    def first_answer(call: Any) -> None:
        with contextlib.suppress(grpc.RpcError):
            next(call)
            served.set()

    for call in opened:
        threading.Thread(target=first_answer, args=(call,), daemon=True).start()
    assert served.wait(10), "no reflection stream was answered"
    return [*opened, release]


def _answered_within(port: int, seconds: float) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            external_auth_pb2_grpc.AuthorizationStub(channel).Check(checks.check_request(), timeout=seconds)
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            return False
    return True


@pytest.mark.parametrize("engine", ["aio", "threads"])
@pytest.mark.parametrize("method", [_CHECK, _HEALTH_CHECK, _HEALTH_WATCH])
def test_calls_that_never_send_their_message(
    engine: str, method: str, tollgate: Callable[..., harness.TollgateProcess]
) -> None:
    """A call whose message has not arrived holds nothing but a little memory on either engine:
    200 of them (50 times ``--grpc-threads``) do not delay anyone's Check. On the threads engine
    that is :mod:`authz.receive_first`: grpcio's own synchronous server gave each such call a
    thread that waited for the message, so 4 of them kept every Check from being answered."""
    config = pathlib.Path(__file__).parents[2] / "examples" / "policies"
    authz = tollgate(config, "--grpc-engine", engine, "--grpc-threads", "4")
    assert _answered_within(authz.port, 5)
    release = threading.Event()
    channel = grpc.insecure_channel(f"127.0.0.1:{authz.port}")
    futures = _stall(channel, method, 200, release)
    try:
        time.sleep(0.5)
        assert _answered_within(authz.port, 5)
        assert not any(future.done() for future in futures)  # still open: they were waiting all along
    finally:
        release.set()
        for future in futures:
            future.cancel()
        channel.close()
    assert _answered_within(authz.port, 5)


@pytest.mark.parametrize("engine", ["aio", "threads"])
@pytest.mark.parametrize(
    ("method", "request_bytes"),
    [
        (_HEALTH_WATCH, b""),  # HealthCheckRequest{service: ""}
        (_REFLECTION, b"\x3a\x00"),  # ServerReflectionRequest{list_services: ""}
    ],
)
def test_calls_that_stay_open(
    engine: str, method: str, request_bytes: bytes, tollgate: Callable[..., harness.TollgateProcess]
) -> None:
    """Calls that stream and stay open (health's Watch, server reflection) do not take the threads
    Checks are decided on: Watch answers without holding a thread (grpc_health's non-blocking
    Watch), reflection runs on threads of its own (authz.server._Reflection)."""
    config = pathlib.Path(__file__).parents[2] / "examples" / "policies"
    authz = tollgate(config, "--grpc-engine", engine, "--grpc-threads", "4")
    channel = grpc.insecure_channel(f"127.0.0.1:{authz.port}")
    try:
        calls = _open_streams(channel, method, request_bytes, 8)
        time.sleep(0.5)
        assert _answered_within(authz.port, 5)
    finally:
        for call in calls:
            if isinstance(call, threading.Event):
                call.set()
            else:
                call.cancel()
        channel.close()
