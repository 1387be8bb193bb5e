"""A gRPC Check decided on the gRPC thread that received it, under the event loop's lock.

grpcio's synchronous server calls each handler on a thread of its pool, once the call's
message has arrived (:mod:`authz.receive_first`: a client that never sends it holds no thread).
:func:`decide_on_thread` takes the loop's lock (:class:`authz.loops.LockedLoop`), so Tollgate's
code still runs on one thread at a time, and starts the Check's coroutine as an eager task of that loop: it runs right
here, on the gRPC thread, until it ends or must wait. Almost every Check ends without waiting (a
cached token; the async audit trail only queues its record), and is answered at once, without a
trip through the loop.

A Check that must wait (durable audit mode waits for its record to be on disk; a token whose key
the provider must be asked for) is an ordinary task of the loop from its first wait on: the loop
finishes it, and the gRPC thread waits for its answer without the lock. If the caller gives up
first (Envoy's timeout), the task is cancelled, as grpc.aio would cancel it, so the Check is
recorded as cancelled (:mod:`authz.checks`). The thread is held until the task ends: ``--grpc-threads``
bounds how many Checks are decided at once (docs/operations.md, "How a Check is run").
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import grpc

from authz import loops

__all__ = ["LoopStopped", "behavior", "decide_on_thread"]

Check = Callable[[Any, Any], Coroutine[Any, Any, bytes]]  # (request, grpc context) -> serialized answer


class LoopStopped(RuntimeError):
    """The loop is not running (the server is stopping): nothing would finish a Check now."""


def behavior(loop: loops.LockedLoop, check: Check) -> Callable[[Any, grpc.ServicerContext], bytes]:
    """``check`` as the synchronous server's handler: each call decided on its own gRPC thread.

    A call the server cannot decide ends with a gRPC status, never with an empty answer (an empty
    CheckResponse reads as OK): UNAVAILABLE while the server stops, CANCELLED once its caller has
    gone (nobody reads that one)."""

    def handle(request: Any, context: grpc.ServicerContext) -> bytes:
        try:
            return decide_on_thread(loop, check(request, context), context)
        except LoopStopped:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the server is stopping")
        except asyncio.CancelledError:
            context.abort(grpc.StatusCode.CANCELLED, "the caller cancelled the check")
        raise AssertionError("context.abort() returned")  # it always raises

    return handle


def decide_on_thread(loop: loops.LockedLoop, coroutine: Coroutine[Any, Any, bytes], context: Any) -> bytes:
    """Run ``coroutine`` (one Check) to its answer; called on a gRPC thread, never on the loop's.

    ``context``: the call's ``grpc.ServicerContext``, to cancel a waiting Check when its caller
    goes away. Raises :class:`LoopStopped` when the loop is not running (the coroutine is closed
    unstarted)."""
    with loop.held():
        if not loop.is_running():
            coroutine.close()
            raise LoopStopped("the server is stopping")
        # The loop's thread waits in select() while we hold its lock, so this thread may act as
        # the loop's: asyncio's functions find the loop, and the eager task is the current task.
        asyncio._set_running_loop(loop)  # asyncio's own hook for code that drives a loop
        try:
            task = asyncio.Task(coroutine, loop=loop, eager_start=True)
        finally:
            asyncio._set_running_loop(None)
        if task.done():
            return task.result()
        finished = threading.Event()
        task.add_done_callback(lambda _: finished.set())  # called on the loop's thread
    if not context.add_callback(lambda: _cancel(loop, task)):
        _cancel(loop, task)  # the call ended already
    finished.wait()
    return task.result()


def _cancel(loop: loops.LockedLoop, task: asyncio.Task[bytes]) -> None:
    """gRPC calls this when the call ends, answered or not; cancelling a finished task does nothing."""
    with contextlib.suppress(RuntimeError):  # the loop is closed: the task ended with it
        loop.call_soon_threadsafe(task.cancel)
