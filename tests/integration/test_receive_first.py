"""authz.receive_first on a real grpcio synchronous server over loopback: a call gets a thread only
once its message is here, and every other way a call can end is answered as grpcio answers it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from grpc import _server

from authz import receive_first

_METHOD = "/test.Echo/Echo"


def _started(pool: futures.ThreadPoolExecutor, echo: Any, **options: Any) -> tuple[grpc.Server, int]:
    """A started synchronous server on ``pool`` (receive_first installed) whose one method
    ``test.Echo/Echo`` is ``echo``, and its port."""
    receive_first.install()
    server = grpc.server(pool, **options)
    handler = grpc.unary_unary_rpc_method_handler(echo)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", {"Echo": handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


@pytest.fixture
def echo_server() -> Iterator[tuple[int, list[str]]]:
    """A synchronous server with one thread and at most 2 calls at once, answering each message
    with itself; yields its port and the names of the threads that ran the handler."""
    ran_on: list[str] = []

    def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
        ran_on.append(threading.current_thread().name)
        return request

    pool = futures.ThreadPoolExecutor(1, thread_name_prefix="echo")
    server, port = _started(pool, echo, maximum_concurrent_rpcs=2)
    try:
        yield port, ran_on
    finally:
        server.stop(None).wait()
        pool.shutdown(wait=True)


def _stalled(channel: grpc.Channel, release: threading.Event) -> Any:
    def never() -> Iterator[bytes]:
        release.wait()
        yield from ()

    return channel.stream_unary(_METHOD, request_serializer=bytes, response_deserializer=bytes).future(never())


def test_a_call_waiting_for_its_message_holds_no_thread(echo_server: tuple[int, list[str]]) -> None:
    port, ran_on = echo_server
    release = threading.Event()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stalled = _stalled(channel, release)
        time.sleep(0.3)
        echo = channel.unary_unary(_METHOD, request_serializer=bytes, response_deserializer=bytes)
        assert echo(b"hello", timeout=5) == b"hello"  # the one thread was free
        assert ran_on == ["echo_0"]
        release.set()  # the stalled call now closes its side without a message: as grpcio answers it
        with pytest.raises(grpc.RpcError) as refused:
            stalled.result(timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "requires exactly one request message" in (refused.value.details() or "")
        assert ran_on == ["echo_0"]  # the handler never ran for it


def test_a_cancelled_call_is_settled_for_the_servers_count(echo_server: tuple[int, list[str]]) -> None:
    """``maximum_concurrent_rpcs=2``: the server counts a call until the future it was handed is
    done, so calls cancelled before their message must settle it, or the third call is refused."""
    port, ran_on = echo_server
    release = threading.Event()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        for _ in range(3):
            stalled = _stalled(channel, release)
            time.sleep(0.1)
            stalled.cancel()
        time.sleep(0.3)
        echo = channel.unary_unary(_METHOD, request_serializer=bytes, response_deserializer=bytes)
        assert echo(b"after", timeout=5) == b"after"
        assert ran_on == ["echo_0"]
        release.set()


def test_a_stop_with_calls_still_waiting_ends_them() -> None:
    pool = futures.ThreadPoolExecutor(1)
    server, port = _started(pool, lambda request, context: request)
    release = threading.Event()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stalled = [_stalled(channel, release) for _ in range(5)]
        time.sleep(0.3)
        started = time.monotonic()
        assert server.stop(0.5).wait(timeout=5)
        assert time.monotonic() - started < 3
        pool.shutdown(wait=True)
        for call in stalled:
            with pytest.raises(grpc.RpcError) as ended:
                call.result(timeout=5)
            assert ended.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
        release.set()


def test_another_grpcio_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    def receive_message(state: Any, call: Any) -> None:  # a parameter fewer than 1.85's
        raise AssertionError("never called")

    monkeypatch.setattr(receive_first, "_originals", {})  # as if not installed yet
    with monkeypatch.context() as changed:
        changed.setattr(_server, "_receive_message", receive_message)
        assert receive_first.problem() == "grpc._server._receive_message takes other parameters"
        with pytest.raises(receive_first.Unsupported, match=r"^grpcio \S+: grpc\._server\._receive_message takes"):
            receive_first.install()
    with monkeypatch.context() as changed:
        changed.delattr(_server, "_EMPTY_FLAGS")
        assert receive_first.problem() == "grpc._server._EMPTY_FLAGS is missing"
    with monkeypatch.context() as changed:
        changed.delattr(_server, "_handle_unary_stream")
        assert receive_first.problem() == "grpc._server._handle_unary_stream is missing"
    with monkeypatch.context() as changed:

        class Stateless:  # a call's state without the copied context the pool thread runs in
            def __init__(self) -> None:
                self.condition, self.due, self.request, self.client = None, set(), None, "open"

        changed.setattr(_server, "_RPCState", Stateless)
        assert receive_first.problem() == "grpc._server._RPCState has no context"
    assert receive_first.problem() == ""


def test_this_grpcio_is_the_one_it_was_written_for() -> None:
    assert receive_first.problem() == ""
    receive_first.install()
    assert receive_first.installed()


def test_a_message_that_arrives_once_the_pool_is_shut_down_is_answered_unavailable() -> None:
    """The pool is shut down after the server has stopped (authz.server.GrpcServer.stop), so no
    call should find it gone; if one does, it is answered, not left hanging."""
    pool = futures.ThreadPoolExecutor(1)
    server, port = _started(pool, lambda request, context: request)
    send = threading.Event()

    def late() -> Iterator[bytes]:
        send.wait()
        yield b"late"

    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.stream_unary(_METHOD, request_serializer=bytes, response_deserializer=bytes).future(late())
            time.sleep(0.3)
            pool.shutdown(wait=True)
            send.set()
            with pytest.raises(grpc.RpcError) as refused:
                call.result(timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert refused.value.details() == "the server is stopping"
    finally:  # on a thread of its own: a polling thread that died would never let stop() return
        stopper = threading.Thread(target=lambda: server.stop(None).wait(), daemon=True)
        stopper.start()
        stopper.join(10)
    assert not stopper.is_alive(), "the server's polling thread is gone"
