"""grpcio's synchronous server, made to give a call a thread only once the call's message is here.

grpcio's synchronous server (``--grpc-engine threads``) hands each call to a thread of its pool as
soon as the call's headers arrive, and that thread then waits for the call's message for as long as
the client keeps the call open. A client that opens calls and never sends their messages (one
connection will do) held every thread, and no Check was answered until it let go (measured, then
made a test: ``tests/integration/test_grpc_engine.py::test_calls_that_never_send_their_message``).
grpc.aio never had this problem: it waits for the message on the event loop.

:func:`install` replaces the two functions of grpcio's server that start a call with one request
message (``grpc._server._handle_unary_unary`` and ``_handle_unary_stream``: Check, and health's
Check and Watch) with versions that first ask gRPC core for the message -- on the server's own
polling thread, without waiting, as grpc.aio does -- and submit the call to the pool only once the
message (or the end of the call) has arrived. What then runs on the thread is grpcio's own
``_unary_response_in_pool`` / ``_stream_response_in_pool``, handed the request that has already
arrived; a call that ended without one is finished on the polling thread exactly as grpcio's own
``_unary_request`` finishes it (UNIMPLEMENTED for a call with no message, nothing for a cancelled
one). Calls that stream their requests (server reflection) keep grpcio's handling and get a pool of
their own (:mod:`authz.server`).

These are grpcio's private functions. :func:`install` checks every name and parameter list it relies
on and refuses (:class:`Unsupported`) a grpcio whose server differs, so an upgrade cannot quietly
bring the stall back; ``constraints.txt`` pins the grpcio they were read from (1.85.1).
"""

from __future__ import annotations

import inspect
import threading
from concurrent import futures
from typing import Any

import grpc
from grpc import _common, _server
from grpc._cython import cygrpc  # type: ignore[attr-defined]  # not in the type stubs

__all__ = ["Unsupported", "install", "installed"]


class Unsupported(RuntimeError):
    """This grpcio's synchronous server is not the one :func:`install` was written for."""


# grpcio's private functions this module calls or replaces, with their parameters, and its constants.
_START = ("rpc_event", "state", "method_handler", "default_thread_pool")  # a call's start, by kind
_IN_POOL = ("rpc_event", "state", "behavior", "argument_thunk", "request_deserializer", "response_serializer")
_FUNCTIONS = {
    "_handle_unary_unary": _START,
    "_handle_unary_stream": _START,
    "_handle_with_method_handler": ("rpc_event", "state", "method_handler", "thread_pool"),
    "_receive_message": ("state", "call", "request_deserializer"),
    "_unary_response_in_pool": _IN_POOL,
    "_stream_response_in_pool": _IN_POOL,
    "_select_thread_pool_for_behavior": ("behavior", "default_thread_pool"),
    "_abort": ("state", "call", "code", "details"),
    "_is_rpc_state_active": ("state",),
}
_CONSTANTS = ("_RECEIVE_MESSAGE_TOKEN", "_EMPTY_FLAGS", "_CLOSED")
_STATE = ("context", "condition", "due", "request", "client")  # what a call's _RPCState must have

_lock = threading.Lock()
_originals: dict[str, Any] = {}


def problem() -> str:
    """Why :func:`install` would refuse this grpcio ("" if it would not)."""
    for name, parameters in _FUNCTIONS.items():
        function = getattr(_server, name, None)
        if function is None:
            return f"grpc._server.{name} is missing"
        if tuple(inspect.signature(function).parameters) != parameters:
            return f"grpc._server.{name} takes other parameters"
    for name in _CONSTANTS:
        if not hasattr(_server, name):
            return f"grpc._server.{name} is missing"
    if not hasattr(cygrpc, "ReceiveMessageOperation"):
        return "cygrpc.ReceiveMessageOperation is missing"
    try:
        state = _server._RPCState()  # type: ignore[no-untyped-call]  # grpcio private, untyped
    except Exception as error:  # any way it fails means "not this grpcio"
        return f"grpc._server._RPCState() fails ({error.__class__.__name__})"
    for name in _STATE:
        if not hasattr(state, name):
            return f"grpc._server._RPCState has no {name}"
    return ""


def install() -> None:
    """Make this process's synchronous gRPC servers receive a call's message before giving the call
    a thread. Idempotent; raises :class:`Unsupported` (naming what differs) on another grpcio."""
    with _lock:
        if _originals:
            return
        found = problem()
        if found:
            raise Unsupported(f"grpcio {grpc.__version__}: {found}")
        _originals["_handle_unary_unary"] = _server._handle_unary_unary
        _originals["_handle_unary_stream"] = _server._handle_unary_stream
        _server._handle_unary_unary = _handle_unary_unary
        _server._handle_unary_stream = _handle_unary_stream


def installed() -> bool:
    return _server._handle_unary_unary is _handle_unary_unary


def _handle_unary_unary(
    rpc_event: Any, state: Any, method_handler: grpc.RpcMethodHandler[Any, Any], default_thread_pool: Any
) -> futures.Future[None]:
    behavior = method_handler.unary_unary
    return _receive_then_submit(
        rpc_event, state, method_handler, behavior, _server._unary_response_in_pool, default_thread_pool
    )


def _handle_unary_stream(
    rpc_event: Any, state: Any, method_handler: grpc.RpcMethodHandler[Any, Any], default_thread_pool: Any
) -> futures.Future[None]:
    behavior = method_handler.unary_stream
    return _receive_then_submit(
        rpc_event, state, method_handler, behavior, _server._stream_response_in_pool, default_thread_pool
    )


def _receive_then_submit(  # noqa: PLR0917 - grpcio's own arguments, passed through
    rpc_event: Any,
    state: Any,
    method_handler: grpc.RpcMethodHandler[Any, Any],
    behavior: Any,
    in_pool: Any,
    default_thread_pool: Any,
) -> futures.Future[None]:
    """Called on the polling thread with ``state.condition`` held (``_handle_with_method_handler``),
    as grpcio's own ``_unary_request`` starts the same receive. Returns the future the server counts
    the call by (``maximum_concurrent_rpcs``): done once the call needs nothing more of the pool."""
    pool = _server._select_thread_pool_for_behavior(behavior, default_thread_pool)
    deserializer = method_handler.request_deserializer
    received = _server._receive_message(state, rpc_event.call, deserializer)
    settled: futures.Future[None] = futures.Future()

    def on_message(event: Any) -> Any:
        """On the polling thread: the message is here, or the call ended without one."""
        outcome = received(event)  # grpcio's own: keeps the request, or marks the call closed
        with state.condition:
            request = _take_request(rpc_event, state)
        if request is None:
            settled.set_result(None)
            return outcome
        try:
            job = pool.submit(
                state.context.run,
                in_pool,
                rpc_event,
                state,
                behavior,
                lambda: request,
                deserializer,
                method_handler.response_serializer,
            )
        except RuntimeError:  # the pool has shut down: the server is stopping
            with state.condition:
                _server._abort(state, rpc_event.call, cygrpc.StatusCode.unavailable, b"the server is stopping")
            settled.set_result(None)
            return outcome
        job.add_done_callback(lambda _: settled.set_result(None))
        return outcome

    rpc_event.call.start_server_batch((cygrpc.ReceiveMessageOperation(_server._EMPTY_FLAGS),), on_message)
    state.due.add(_server._RECEIVE_MESSAGE_TOKEN)
    return settled


def _take_request(rpc_event: Any, state: Any) -> Any:
    """What grpcio's ``_unary_request`` returns once its wait is over (``state.condition`` held):
    the request; or None, after answering UNIMPLEMENTED to a client that closed its side without
    sending one (a cancelled or already answered call gets nothing)."""
    if not _server._is_rpc_state_active(state):
        return None
    request, state.request = state.request, None
    if request is None and state.client is _server._CLOSED:
        details = f'"{rpc_event.call_details.method}" requires exactly one request message.'  # as grpcio
        _server._abort(state, rpc_event.call, cygrpc.StatusCode.unimplemented, _common.encode(details))
    return request
