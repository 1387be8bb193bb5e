"""An experiment, not part of Tollgate: gRPC Checks decided on grpcio's synchronous server threads.

It reproduces runs T, U and V of docs/performance.md ("The gRPC stack without an event loop").
Python imports it at start-up when this directory is on ``PYTHONPATH``; it does nothing unless
``TOLLGATE_EXPERIMENT_GRPC_THREADS`` is set. It patches ``tollgate serve`` from outside:

- ``TOLLGATE_EXPERIMENT_GRPC_THREADS=N``: the Check is served by ``grpc.server`` with N handler
  threads, each Check's coroutine (``service.check``, unchanged) driven to its end on the gRPC
  thread under one lock. Only Checks that never suspend work (a cached token, async audit):
  anything else fails. grpc.aio still runs, on a port of its own nobody calls.
- ``TOLLGATE_EXPERIMENT_LOOP_LOCK=1``: the event loop is asyncio's own, and holds that lock except
  while it waits in ``select()``: Tollgate's code runs on one thread at a time (run U).
- ``TOLLGATE_EXPERIMENT_INLINE_AUDIT=1``: the audit record is built and appended on the gRPC
  thread; the writer only flushes and signs checkpoints (run V; no segment rotation).

    PYTHONPATH=bench/experiments/grpc_threads TOLLGATE_EXPERIMENT_GRPC_THREADS=2 \\
      BENCH_PIN=1 BENCH_CONNECTIONS=16 BENCH_ROUNDS=4 \\
      BENCH_SCENARIOS=noop-authz-uvloop,noop-authz-threads,tollgate-jwt-1000,audit-jwt-1000 \\
      .venv/bin/python bench/run.py
"""

from __future__ import annotations

import os

if os.environ.get("TOLLGATE_EXPERIMENT_GRPC_THREADS"):
    import asyncio
    import dataclasses
    import selectors
    import threading
    import time
    from concurrent import futures
    from typing import Any

    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    from authz import loops, server, service
    from authz.audit import record, recorder

    _THREADS = int(os.environ["TOLLGATE_EXPERIMENT_GRPC_THREADS"])
    _LOCK = threading.Lock()
    _LOOP_LOCK = bool(os.environ.get("TOLLGATE_EXPERIMENT_LOOP_LOCK"))
    _INLINE_AUDIT = bool(os.environ.get("TOLLGATE_EXPERIMENT_INLINE_AUDIT"))
    _keep: list[Any] = []

    class _Wake:
        """The recorder's wake-up event, set safely from a gRPC thread."""

        def __init__(self, event: asyncio.Event, loop: asyncio.AbstractEventLoop) -> None:
            self.event, self.loop, self.thread = event, loop, threading.get_ident()

        def set(self) -> None:
            if threading.get_ident() == self.thread:
                self.event.set()
            else:
                self.loop.call_soon_threadsafe(self.event.set)

        def clear(self) -> None:
            self.event.clear()

        async def wait(self) -> bool:
            return await self.event.wait()

    _recorder_start = recorder.AuditRecorder.start

    async def _start_recorder(self: recorder.AuditRecorder) -> None:
        await _recorder_start(self)
        self._wake = _Wake(self._wake, asyncio.get_running_loop())  # type: ignore[assignment]

    recorder.AuditRecorder.start = _start_recorder  # type: ignore[method-assign]

    _server_start = server.start

    async def _start(settings: Any, runtime: Any, *, shared_ports: bool = False) -> Any:
        aio_server, health_servicer, _ = await _server_start(
            dataclasses.replace(settings, listen="127.0.0.1:0"), runtime, shared_ports=shared_ports
        )
        checks = service.AuthorizationService(runtime)

        def check(parsed: Any, context: Any) -> bytes:
            with _LOCK:
                coroutine = checks.check(parsed, context)
                try:
                    coroutine.send(None)
                except StopIteration as done:
                    answer: bytes = done.value
                    return answer
                coroutine.close()
                raise RuntimeError("the experiment cannot decide a Check that waits")

        handler = grpc.unary_unary_rpc_method_handler(check, request_deserializer=service._parse)
        threads = grpc.server(futures.ThreadPoolExecutor(_THREADS), options=[("grpc.so_reuseport", 0)])
        generic = grpc.method_handlers_generic_handler(service.SERVICE_NAME, {"Check": handler})
        threads.add_generic_rpc_handlers((generic,))
        serving = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(serving, threads)
        for name in ("", service.SERVICE_NAME):
            serving.set(name, health_pb2.HealthCheckResponse.SERVING)
        port = threads.add_insecure_port(settings.listen)
        threads.start()
        _keep.append(threads)
        return aio_server, health_servicer, port

    server.start = _start

    if _LOOP_LOCK:

        class _LockingSelector(selectors.DefaultSelector):
            def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
                _LOCK.release()
                try:
                    return super().select(timeout)
                finally:
                    _LOCK.acquire()

        def _factory(choice: str) -> tuple[Any, str]:
            def new() -> asyncio.AbstractEventLoop:
                _LOCK.acquire()  # held by the loop's thread except while it waits
                return asyncio.SelectorEventLoop(_LockingSelector())

            return new, "asyncio with the loop lock (experiment)"

        loops.factory = _factory

    if _INLINE_AUDIT:

        async def _record(self: recorder.AuditRecorder, decision: Any) -> bool:
            self.log.append(record.decision_record(decision, time.time_ns() // 1_000_000, self.pseudonyms))
            self.written += 1
            if not getattr(self, "_flush_due", False):
                self._flush_due = True  # type: ignore[attr-defined]
                self._wake.set()
            return True

        async def _write_loop(self: recorder.AuditRecorder) -> None:
            while True:
                await self._wake.wait()
                self._wake.clear()
                await asyncio.sleep(0.005)
                async with self._lock:
                    self._flush_due = False  # type: ignore[attr-defined]
                    self.log.flush(fsync=False)
                    if self.log.checkpoint_due():
                        await asyncio.to_thread(self.log.checkpoint)

        recorder.AuditRecorder.record = _record  # type: ignore[method-assign]
        recorder.AuditRecorder._write_loop = _write_loop  # type: ignore[method-assign]
