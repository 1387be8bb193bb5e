"""``--grpc-engine threads``: gRPC Checks decided on the server's own threads (authz.threads), through a real channel.

A Check that never waits is decided on a gRPC thread, under the loop's lock, and the loop's thread
never sees it. One that waits (durable audit mode: the answer waits for its record) hands its thread's
lock back to the loop while it waits, and ``--grpc-threads`` bounds how many are decided at once. A
caller that gives up cancels its Check and frees its thread. Stopping lets a waiting Check finish
within the grace period.
"""

from __future__ import annotations

import asyncio
import pathlib
import threading
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc

from authz import configuration, loader, loops, server
from authz.dev import checks

POLICY = """
apiVersion: tollgate.dev/v1alpha1
kind: AccessPolicy
metadata: {name: site}
spec:
  hosts: [site.test]
  rules:
    - {name: public, action: Allow, to: {paths: [/public]}}
"""


class Recorder:
    """Records where each decision was handed over; durable ones wait for ``release``."""

    def __init__(self, *, durable: bool) -> None:
        self.durable = durable
        self.release = asyncio.Event()
        self.seen: list[tuple[str, bool, str]] = []  # (thread name, loop lock held, request id)
        self.cancelled: list[str] = []

    async def record(self, decision: Any) -> bool:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, loops.LockedLoop)
        request_id = decision.request.request_id if decision.request else ""
        self.seen.append((threading.current_thread().name, loop.lock.locked(), request_id))
        if self.durable:
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled.append(request_id)
                raise
        return True


class Running:
    def __init__(self, grpc_server: server.GrpcServer, port: int, recorder: Recorder) -> None:
        self.server, self.port, self.recorder = grpc_server, port, recorder


async def _start(tmp_path: pathlib.Path, *, durable: bool, threads: int = 16) -> Running:
    config = tmp_path / "policy.yaml"
    config.write_text(POLICY)
    runtime = server.Runtime(loader.load(config), default_allow=False)
    recorder = Recorder(durable=durable)
    runtime.recorder = recorder
    settings = configuration.ServerSettings(
        config=config, listen="127.0.0.1:0", grpc_engine="threads", grpc_threads=threads
    )
    grpc_server, port = await server.start(settings, runtime)
    return Running(grpc_server, port, recorder)


@pytest.fixture
async def channel() -> AsyncIterator[Any]:
    channels: list[grpc.aio.Channel] = []

    def open_to(port: int) -> Any:
        channels.append(grpc.aio.insecure_channel(f"127.0.0.1:{port}"))
        return external_auth_pb2_grpc.AuthorizationStub(channels[-1])

    yield open_to
    for opened in channels:
        await opened.close()


def _request(request_id: str) -> external_auth_pb2.CheckRequest:
    return checks.check_request(host="site.test", path="/public", request_id=request_id)


async def test_a_check_is_decided_on_a_grpc_thread_under_the_loops_lock(tmp_path: pathlib.Path, channel: Any) -> None:
    running = await _start(tmp_path, durable=False)
    try:
        stub = channel(running.port)
        for number in range(3):
            reply = await stub.Check(_request(f"r-{number}"), timeout=5)
            assert reply.HasField("ok_response")
        assert [request_id for _, _, request_id in running.recorder.seen] == ["r-0", "r-1", "r-2"]
        for thread, locked, _ in running.recorder.seen:
            assert thread.startswith("grpc") and thread != threading.current_thread().name
            assert locked  # under the loop's lock: Tollgate's code runs one thread at a time
    finally:
        await running.server.stop(None)


async def test_a_check_that_waits_lets_the_loop_run_and_grpc_threads_bound_how_many_at_once(
    tmp_path: pathlib.Path, channel: Any
) -> None:
    running = await _start(tmp_path, durable=True, threads=1)
    try:
        stub = channel(running.port)
        first = asyncio.ensure_future(stub.Check(_request("first"), timeout=10))
        await asyncio.sleep(0.3)  # the loop runs: the waiting Check's thread does not hold its lock
        second = asyncio.ensure_future(stub.Check(_request("second"), timeout=10))
        await asyncio.sleep(0.3)
        assert not first.done() and not second.done()
        # One thread: the second Check waits its turn, not yet decided.
        assert [request_id for _, _, request_id in running.recorder.seen] == ["first"]
        running.recorder.release.set()
        assert (await first).HasField("ok_response") and (await second).HasField("ok_response")
        assert [request_id for _, _, request_id in running.recorder.seen] == ["first", "second"]
    finally:
        await running.server.stop(None)


async def test_a_caller_that_gives_up_cancels_its_check_and_frees_the_thread(
    tmp_path: pathlib.Path, channel: Any
) -> None:
    running = await _start(tmp_path, durable=True, threads=1)
    try:
        stub = channel(running.port)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Check(_request("gives-up"), timeout=0.3)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        for _ in range(50):
            if running.recorder.cancelled:
                break
            await asyncio.sleep(0.05)
        assert running.recorder.cancelled == ["gives-up"]
        running.recorder.release.set()
        reply = await stub.Check(_request("next"), timeout=5)  # the one thread is free again
        assert reply.HasField("ok_response")
    finally:
        await running.server.stop(None)


async def test_stopping_lets_a_waiting_check_finish_within_the_grace_period(
    tmp_path: pathlib.Path, channel: Any
) -> None:
    running = await _start(tmp_path, durable=True)
    stub = channel(running.port)
    waiting = asyncio.ensure_future(stub.Check(_request("in-flight"), timeout=10))
    await asyncio.sleep(0.3)
    stopping = asyncio.ensure_future(running.server.stop(5))
    await asyncio.sleep(0.3)
    assert not stopping.done()  # the in-flight Check holds the stop within its grace
    running.recorder.release.set()
    assert (await waiting).HasField("ok_response")
    await asyncio.wait_for(stopping, 10)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Check(_request("after"), timeout=2)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_stop_returns_after_a_check_cut_off_by_the_grace_period_has_ended(
    tmp_path: pathlib.Path, channel: Any
) -> None:
    """The audit log is closed right after the server stops: a Check whose call gRPC cancelled at
    the end of the grace period must have ended (and said so to the recorder) by then."""
    running = await _start(tmp_path, durable=True)
    stub = channel(running.port)
    waiting = asyncio.ensure_future(stub.Check(_request("cut-off"), timeout=10))
    await asyncio.sleep(0.3)
    await running.server.stop(0.2)  # the grace passes with the Check still waiting for its record
    assert running.recorder.cancelled == ["cut-off"]
    with pytest.raises(grpc.aio.AioRpcError):
        await waiting
