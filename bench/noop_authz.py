"""The baseline: a do-nothing grpc.aio ext_authz server that allows everything.

Same gRPC stack and server options as Tollgate, no parsing beyond protobuf, no decision, an empty
OK response: the cost of "an ext_authz server in Python" that Tollgate is compared against.

``threads N``: the same answers from grpcio's synchronous server, its handlers on N threads and no
event loop at all -- what the gRPC stack costs when a Check does not cross from gRPC's threads to
an event loop (docs/performance.md, "The gRPC stack without an event loop").
"""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
from concurrent import futures

import grpc
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.rpc import code_pb2, status_pb2

_OK = external_auth_pb2.CheckResponse(
    status=status_pb2.Status(code=code_pb2.OK), ok_response=external_auth_pb2.OkHttpResponse()
)


_OPTIONS = [("grpc.max_receive_message_length", 4 * 1024 * 1024), ("grpc.so_reuseport", 0)]  # as Tollgate's


class AllowAll(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]  # generated, untyped
    async def Check(self, request: external_auth_pb2.CheckRequest, context: object) -> external_auth_pb2.CheckResponse:
        return _OK


async def main(port: int) -> None:
    server = grpc.aio.server(options=_OPTIONS)
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(AllowAll(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(1)


def main_threads(port: int, threads: int) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(threads), options=_OPTIONS)
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(AllowAllThreads(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.stop(1).wait()


class AllowAllThreads(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]  # generated, untyped
    def Check(self, request: external_auth_pb2.CheckRequest, context: object) -> external_auth_pb2.CheckResponse:
        return _OK


if __name__ == "__main__":
    # python noop_authz.py PORT [uvloop | threads N]: on uvloop's event loop; on the sync server
    if sys.argv[2:3] == ["threads"]:
        main_threads(int(sys.argv[1]), int(sys.argv[3]))
    elif sys.argv[2:] == ["uvloop"]:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main(int(sys.argv[1])))
    else:
        asyncio.run(main(int(sys.argv[1])))
