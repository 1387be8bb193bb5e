"""``tollgate serve --max-connections N``: a connection past the limit is closed at once, through a
real Envoy, over gRPC and over HTTP ext_authz.

Envoy cannot reach Tollgate while someone else holds the port's only connection: its check fails,
and fails closed (403 by ``envoy-config``'s ``status_on_error``; the upstream receives nothing).
When the connection is let go, Envoy's next connection is accepted and checks are decided again.
"""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import socket
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from authz import configuration, envoy_bootstrap, loader, server
from authz.dev import checks, harness, upstream

pytestmark = pytest.mark.envoy

POLICY = """
apiVersion: tollgate.dev/v1alpha1
kind: AccessPolicy
metadata: {name: site}
spec:
  hosts: [site.test]
  rules: [{name: public, action: Allow, to: {paths: [/public, /public/*]}}]
"""


@contextlib.contextmanager
def _holding(tollgate: harness.TollgateProcess, mode: str) -> Iterator[None]:
    """Hold one connection to the port Envoy asks, answered once so it is surely counted."""
    port = tollgate.authz_port(mode)
    if mode == envoy_bootstrap.GRPC_MODE:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)

            def serving() -> bool:  # once the harness's own readiness connection is gone
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1, wait_for_ready=False)
                except grpc.RpcError:
                    return False
                return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

            harness.wait_until(serving, what="the one connection held")
            yield
        return
    with socket.create_connection(("127.0.0.1", port), timeout=5) as held:
        held.sendall(checks.http_check_request(host="site.test", path="/public"))
        assert held.recv(65536).startswith(b"HTTP/1.1 200"), "the held connection must be answered"
        yield


def test_a_check_past_the_connection_limit_fails_closed(
    tmp_path: pathlib.Path, envoy: Callable[..., harness.Envoy], http: Callable[..., Any], transport: str
) -> None:
    (tmp_path / "policy.yaml").write_text(POLICY)
    echo = upstream.EchoUpstream()
    tollgate = harness.TollgateProcess(
        tmp_path / "policy.yaml", extra=["--max-connections", "1"], log_to=tmp_path / "tollgate.log", http=True
    )
    with harness.running(echo, tollgate):
        with _holding(tollgate, transport):
            proxy = envoy(authz_port=tollgate.authz_port(transport), upstream_port=echo.port, authz_mode=transport)
            for _ in range(3):
                reply = http(proxy.port, "GET", "/public", host="site.test")
                assert reply.status == 403, reply.status
            assert echo.served == 0
        harness.wait_until(
            lambda: http(proxy.port, "GET", "/public", host="site.test").status == 200,
            what="a check decided once the held connection is gone",
        )
        assert echo.served >= 1
        assert http(proxy.port, "GET", "/private", host="site.test").status == 401


async def test_the_http_edge_closes_a_connection_past_the_limit_unread(tmp_path: pathlib.Path) -> None:
    (tmp_path / "policy.yaml").write_text(POLICY)
    runtime = server.Runtime(loader.load(tmp_path / "policy.yaml"), default_allow=False)
    runtime.recorder = checks.ListRecorder()
    settings = configuration.ServerSettings(
        config=tmp_path / "policy.yaml", http_listen="127.0.0.1:0", max_connections=2
    )
    edge = await server.start_http(settings, runtime)
    request = checks.http_check_request(host="site.test", path="/public")
    try:
        held = [await asyncio.open_connection("127.0.0.1", edge.port) for _ in range(2)]
        for reader, writer in held:
            writer.write(request)
            assert (await checks.read_answers(reader))[0].status == 200
        assert len(edge.connections) == 2
        refused = await checks.exchange(edge.port, request, timeout=5)
        assert refused == []  # closed before any answer
        assert len(runtime.recorder.decisions) == 2  # and nothing it sent was decided
        held[0][1].close()
        await held[0][1].wait_closed()
        async with asyncio.timeout(10):  # the server sees the close on its loop, this one
            while len(edge.connections) != 1:
                await asyncio.sleep(0.01)
        [answer] = await checks.exchange(edge.port, request)
        assert answer.status == 200
        held[1][1].close()
    finally:
        await edge.stop(1)
