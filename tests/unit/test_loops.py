"""The loop ``tollgate serve`` runs on (authz.loops.LockedLoop) and a Check driven from another
thread under its lock (authz.threads): the lock is the loop's while it runs anything and free while
it waits; work scheduled by a thread holding the lock wakes the loop; a Check that never waits ends
on the calling thread, one that waits is finished by the loop; nothing starts once the loop stops."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from authz import loops, receive_first, threads


def _in_thread[T](work: Callable[[], T], timeout: float = 10.0) -> T:
    """``work()`` on a thread of its own; fails the test if it has not returned in ``timeout``."""
    result: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(work())
        except BaseException as error:  # handed to the test
            errors.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"still running after {timeout}s"
    if errors:
        raise errors[0]
    return result[0]


async def test_the_loop_holds_its_lock_while_it_runs_and_lets_go_while_it_waits() -> None:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, loops.LockedLoop)
    assert not loop.lock.acquire(blocking=False)  # held by this thread, which is running a task
    # From another thread: free while the loop waits in select() (the sleep below).
    taken = asyncio.get_running_loop().run_in_executor(None, lambda: _take_and_release(loop.lock))
    assert await asyncio.wait_for(taken, 5) is True


def _take_and_release(lock: threading.Lock) -> bool:
    if not lock.acquire(timeout=5):
        return False
    lock.release()
    return True


def test_the_lock_is_free_once_the_loop_stops_running() -> None:
    loop = loops.new_event_loop()
    try:
        loop.run_until_complete(asyncio.sleep(0))
        assert loop.lock.acquire(blocking=False)
        loop.lock.release()
    finally:
        loop.close()


async def test_a_result_set_by_a_thread_holding_the_lock_wakes_the_waiting_loop() -> None:
    """Without the wake-up the loop would sleep in select() with nothing scheduled: for ever."""
    loop = asyncio.get_running_loop()
    assert isinstance(loop, loops.LockedLoop)
    waiting = loop.create_future()
    event = asyncio.Event()

    def from_another_thread() -> None:
        time.sleep(0.1)  # the loop is in select() by now
        with loop.lock:
            waiting.set_result("answered")  # schedules the waiter's wake-up with call_soon
            event.set()

    thread = threading.Thread(target=from_another_thread)
    thread.start()
    started = time.monotonic()
    assert await asyncio.wait_for(waiting, 5) == "answered"
    await asyncio.wait_for(event.wait(), 5)
    assert time.monotonic() - started < 2
    thread.join()


async def test_a_timer_set_by_a_thread_holding_the_lock_fires_on_time() -> None:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, loops.LockedLoop)
    fired = loop.create_future()
    far = loop.call_later(60, lambda: None)  # select() would otherwise sleep up to a minute

    def from_another_thread() -> None:
        time.sleep(0.1)
        with loop.lock:
            loop.call_later(0.05, fired.set_result, time.monotonic())

    thread = threading.Thread(target=from_another_thread)
    thread.start()
    started = time.monotonic()
    await asyncio.wait_for(fired, 10)
    assert time.monotonic() - started < 2
    far.cancel()
    thread.join()


class _Context:
    """What the synchronous server's ServicerContext offers the driver: callbacks at the call's end."""

    def __init__(self) -> None:
        self.callbacks: list[Callable[[], None]] = []
        self.ended = False

    def add_callback(self, callback: Callable[[], None]) -> bool:
        if self.ended:
            return False
        self.callbacks.append(callback)
        return True

    def end(self) -> None:
        self.ended = True
        for callback in self.callbacks:
            callback()


_CHECK: contextvars.ContextVar[str] = contextvars.ContextVar("check")


async def test_a_check_that_never_waits_ends_on_the_calling_thread_under_the_lock() -> None:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, loops.LockedLoop)
    seen: list[Any] = []

    async def check(name: str) -> bytes:
        seen.append((threading.get_ident(), loop.lock.locked(), asyncio.current_task() is not None, _CHECK.get("")))
        _CHECK.set(name)  # each Check runs in a context of its own, as a task does
        return name.encode()

    def two_checks() -> list[bytes]:
        return [threads.decide_on_thread(loop, check(name), _Context()) for name in ("one", "two")]

    assert await loop.run_in_executor(None, two_checks) == [b"one", b"two"]
    (first_thread, locked, in_task, before), (second_thread, _, _, before_second) = seen
    assert first_thread == second_thread != threading.get_ident()  # not the loop's thread
    assert locked and in_task  # under the loop's lock, inside a task of the loop
    assert before == before_second == ""  # the first Check's context did not leak into the second


async def test_a_check_that_waits_is_finished_by_the_loop_without_holding_the_lock() -> None:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, loops.LockedLoop)
    release = asyncio.Event()
    where: list[int] = []

    async def check() -> bytes:
        await release.wait()  # e.g. durable audit: the record on disk first
        where.append(threading.get_ident())
        return b"after the wait"

    answer = loop.run_in_executor(None, lambda: threads.decide_on_thread(loop, check(), _Context()))
    await asyncio.sleep(0.1)  # the loop runs meanwhile: the waiting thread does not hold the lock
    assert not answer.done()
    release.set()
    assert await asyncio.wait_for(answer, 5) == b"after the wait"
    assert where == [threading.get_ident()]  # the rest of it ran on the loop's thread


async def test_in_asyncio_debug_mode_a_check_may_set_timers_from_a_grpc_thread() -> None:
    """``PYTHONASYNCIODEBUG=1`` makes asyncio refuse ``call_at`` and ``call_soon`` from any thread
    but the loop's; a gRPC thread holding the lock acts as the loop's (``LockedLoop.held``), so a
    Check that waits with a timeout (``asyncio.wait_for``, as a key fetch does) still works."""
    loop = asyncio.get_running_loop()
    assert isinstance(loop, loops.LockedLoop)
    loop.set_debug(True)
    try:

        async def check() -> bytes:
            await asyncio.wait_for(asyncio.sleep(0.01), 5)  # a timer set on the gRPC thread
            return b"waited"

        answer = loop.run_in_executor(None, lambda: threads.decide_on_thread(loop, check(), _Context()))
        assert await asyncio.wait_for(answer, 5) == b"waited"
        with pytest.raises(RuntimeError, match="Non-thread-safe operation"):  # without the lock: refused
            await loop.run_in_executor(None, lambda: loop.call_at(loop.time() + 60, lambda: None))
    finally:
        loop.set_debug(False)


async def test_a_waiting_check_whose_caller_goes_away_is_cancelled() -> None:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, loops.LockedLoop)
    cancelled = asyncio.Event()
    context = _Context()

    async def check() -> bytes:
        try:
            await asyncio.Event().wait()  # never set
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return b"never"

    answer = loop.run_in_executor(None, lambda: threads.decide_on_thread(loop, check(), context))
    await asyncio.sleep(0.1)
    context.end()  # gRPC: the deadline passed
    await asyncio.wait_for(cancelled.wait(), 5)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(answer, 5)


def test_nothing_starts_once_the_loop_has_stopped() -> None:
    loop = loops.new_event_loop()
    started: list[bool] = []

    async def check() -> bytes:
        started.append(True)
        return b""

    try:
        loop.run_until_complete(asyncio.sleep(0))
        with pytest.raises(threads.LoopStopped):
            _in_thread(lambda: threads.decide_on_thread(loop, check(), _Context()))
    finally:
        loop.close()
    with pytest.raises(threads.LoopStopped):
        _in_thread(lambda: threads.decide_on_thread(loop, check(), _Context()))
    assert not started


def test_the_engine_auto_picks_and_why(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--grpc-engine auto``: gRPC's threads, unless the HTTP edge (uvloop), durable audit (every
    Check waits, holding a thread), uvloop by name, or a grpcio the threads engine cannot run on
    asks for grpc.aio; a named engine is taken as named."""
    assert loops.engine("auto", "auto") == ("threads", "threads (auto)")
    assert loops.engine("auto", "asyncio") == ("threads", "threads (auto)")
    assert loops.engine("auto", "auto", http_listen="127.0.0.1:9002") == (
        "aio",
        "aio (auto: --http-listen is set, and the HTTP edge costs less on uvloop)",
    )
    assert loops.engine("auto", "auto", durable=True) == (
        "aio",
        "aio (auto: --audit-mode sync, where every Check waits for its record)",
    )
    assert loops.engine("threads", "auto", durable=True) == ("threads", "threads")
    assert loops.engine("auto", "uvloop") == ("aio", "aio (auto: --event-loop uvloop)")
    assert loops.engine("aio", "auto") == ("aio", "aio")
    assert loops.engine("threads", "asyncio", http_listen="127.0.0.1:9002") == ("threads", "threads")
    monkeypatch.setattr(receive_first, "problem", lambda: "grpc._server._receive_message takes other parameters")
    engine, why = loops.engine("auto", "auto")
    assert engine == "aio"
    assert why.startswith("aio (auto: the threads engine cannot run on grpcio ")
    assert why.endswith(": grpc._server._receive_message takes other parameters)")
