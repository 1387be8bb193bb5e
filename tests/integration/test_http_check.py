"""The HTTP ext_authz edge over a real socket on 127.0.0.1: what Envoy's ``http_service`` sends,
and what a client of the port may send instead.

Covers the transport: answers for allow and deny (identity headers, removals, decision metadata,
5xx sent as 403), bytes llhttp cannot parse, Envoy's attributes missing or repeated, an ambiguous
certificate name, bounds, bad encodings, pipelining, a connection closed mid-check (recorded as
cancelled), a fault in Tollgate (fails closed), one record per check, and TLS on the listener.
Through a real Envoy, the security suites run in this mode too (``transport`` and ``mode``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import pathlib
import socket
import ssl
from collections.abc import AsyncIterator

import pytest

from authz import configuration, decision, http_request, http_response, http_server, loader, server
from authz.dev import checks, pki
from authz.identity import model

POLICY = """
apiVersion: tollgate.dev/v1alpha1
kind: IdentityProvider
metadata: {name: mesh}
spec: {type: mtls, mtls: {trustDomains: [cluster.local]}}
---
apiVersion: tollgate.dev/v1alpha1
kind: AccessPolicy
metadata: {name: site, namespace: web}
spec:
  hosts: [site.test]
  rules:
    - {name: public, action: Allow, to: {paths: [/public, /public/*]}}
    - {name: workload, action: Allow, to: {paths: [/workload]}, from: {principals: ["spiffe://cluster.local/*"]}}
"""


class Running:
    def __init__(self, edge: http_server.HttpCheckServer, runtime: server.Runtime) -> None:
        self.edge, self.runtime, self.port = edge, runtime, edge.port

    @property
    def decisions(self) -> list[decision.Decision]:
        recorder = self.runtime.recorder
        assert isinstance(recorder, checks.ListRecorder)
        return recorder.decisions

    async def ask(self, data: bytes, answers: int = 1) -> list[checks.HttpAnswer]:
        return await checks.exchange(self.port, data, answers=answers)

    async def one(self, **request: object) -> checks.HttpAnswer:
        [answer] = await self.ask(checks.http_check_request(**request))  # type: ignore[arg-type]
        return answer


async def _start(tmp_path: pathlib.Path, **settings: object) -> Running:
    config = tmp_path / "policy.yaml"
    config.write_text(POLICY)
    runtime = server.Runtime(loader.load(config), default_allow=False)
    runtime.recorder = checks.ListRecorder()
    options = configuration.ServerSettings(config=config, http_listen="127.0.0.1:0", **settings)  # type: ignore[arg-type]
    return Running(await server.start_http(options, runtime), runtime)


@pytest.fixture
async def running(tmp_path: pathlib.Path) -> AsyncIterator[Running]:
    item = await _start(tmp_path)
    yield item
    await item.edge.stop(1)


def _reason(answer: checks.HttpAnswer) -> str:
    return str(json.loads(answer.body)["reason"])


async def test_an_allow_carries_identity_removals_and_decision_metadata(running: Running) -> None:
    answer = await running.one(host="site.test", path="/public", headers=[("x_tollgate_subject", "mallory")])
    assert answer.status == 200 and answer.body == b""
    [record] = running.decisions
    assert answer.headers["x-tollgate-decision-id"] == record.decision_id
    assert (answer.headers["x-tollgate-reason"], answer.headers["x-tollgate-policy"]) == ("rule_allow", "web/site")
    assert answer.headers["x-tollgate-rule"] == "public"
    removed = answer.headers[http_response.REMOVE].split(",")
    # Anonymous: no identity value is vouched for, so every identity name goes, as do the client's
    # reserved spelling and every x-tollgate-envoy-* name (Envoy dropped client copies from the check).
    assert {"x-tollgate-subject", "x-tollgate-groups", "x_tollgate_subject", *http_request.ENVOY_ATTRIBUTES} <= set(
        removed
    )
    assert "x-tollgate-decision-id" not in removed  # set, not removed: Envoy would drop Tollgate's own value


async def test_denials_keep_their_status_body_and_challenge(running: Running) -> None:
    answer = await running.one(host="site.test", path="/private")
    assert answer.status == 401 and answer.headers["www-authenticate"] == 'Bearer realm="tollgate"'
    assert json.loads(answer.body) == {"error": "unauthenticated", "reason": "default_deny", "request_id": "req-1"}
    assert answer.headers["cache-control"] == "no-store"
    assert answer.headers["x-tollgate-reason"] == "default_deny"
    assert http_response.REMOVE not in answer.headers


async def test_the_mtls_principal_is_envoys_uri_san(running: Running) -> None:
    allowed = await running.one(host="site.test", path="/workload", principal="spiffe://cluster.local/ns/a/sa/b")
    assert allowed.status == 200
    assert allowed.headers["x-tollgate-principal"] == "spiffe://cluster.local/ns/a/sa/b"
    assert running.decisions[-1].request is not None
    assert running.decisions[-1].request.source_principal == "spiffe://cluster.local/ns/a/sa/b"
    # Envoy joins several URI SANs with commas, and a URI may hold one: which is the principal?
    two = await running.one(host="site.test", path="/workload", principal="spiffe://cluster.local/a,spiffe://x/b")
    assert (two.status, _reason(two)) == (400, "request_principal_ambiguous")


@pytest.mark.parametrize(
    ("envoy", "reason"),
    [
        ([], "request_envoy_attributes_missing"),  # an Envoy without Tollgate's headers_to_add
        ([(http_request.SOURCE, "")], "request_envoy_attributes_missing"),
        ([(http_request.SOURCE, "127.0.0.1"), (http_request.SOURCE, "203.0.113.9")], "request_ambiguous"),
        ([(http_request.SOURCE, "127.0.0.1"), ("X-Tollgate-Envoy-Source", "203.0.113.9")], "request_ambiguous"),
    ],
)
async def test_envoys_attributes_must_be_there_once(
    running: Running, envoy: list[tuple[str, str]], reason: str
) -> None:
    answer = await running.one(host="site.test", path="/public", envoy=envoy)
    assert (answer.status, _reason(answer)) == (400, reason)


async def test_bytes_llhttp_cannot_parse_get_a_recorded_400_and_the_connection_closes(running: Running) -> None:
    answers = await running.ask(b"GET /public HTTP/1.1\r\nhost: site.test\r\nbad header line\r\n\r\n" * 2, answers=2)
    assert [(a.status, _reason(a)) for a in answers] == [(400, "request_parse_error")]
    assert [d.reason for d in running.decisions] == ["request_parse_error"]


async def test_header_values_must_be_utf8(running: Running) -> None:
    data = checks.http_check_request(host="site.test", path="/public", headers=[("x-name", "\udcff")])
    [answer] = await running.ask(data)
    assert (answer.status, _reason(answer)) == (400, "request_bad_encoding")


@pytest.mark.parametrize(
    "headers",
    [
        [(f"x-h{index}", "v") for index in range(http_request.MAX_HEADER_COUNT + 1)],
        [("x-big", "v" * 8000)] * 9,
    ],
    ids=["count", "bytes"],
)
async def test_oversized_checks_are_refused_and_not_kept(running: Running, headers: list[tuple[str, str]]) -> None:
    answer = await running.one(host="site.test", path="/public", headers=headers)
    assert (answer.status, _reason(answer)) == (400, "request_headers_too_large")


@pytest.mark.parametrize("chunk", [65536, 512], ids=["streamed", "in-small-pieces"])
async def test_a_header_that_never_ends_is_refused_at_the_bound(running: Running, chunk: int) -> None:
    # llhttp hands a header over only once its line ends, and httptools gathers the pieces until
    # then: the bound must hold on the bytes arriving, or one endless header line is kept whole
    # (and, sent in small pieces, re-copied on every one of them).
    reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
    answer = asyncio.create_task(checks.read_answers(reader, answers=1, timeout=10))
    try:
        writer.write(b"GET /public HTTP/1.1\r\nhost: site.test\r\nx-endless: ")
        sent = 0
        with contextlib.suppress(ConnectionError):  # the server may close before all of it is sent
            while sent < 8 * http_request.MAX_HEADER_BYTES and not answer.done():
                writer.write(b"a" * chunk)
                await writer.drain()
                sent += chunk
        # The header line never ends, and the request timeout (30 s) is far off: answered at the bound.
        [refused] = await answer
    finally:
        writer.close()
    assert (refused.status, _reason(refused)) == (400, "request_headers_too_large")
    assert [d.reason for d in running.decisions] == ["request_headers_too_large"]


async def test_a_client_that_does_not_read_its_answers_is_not_read_either(running: Running) -> None:
    # Checks in, answers out: a client that never reads must not make the server buffer answers
    # without end. A small receive window keeps the kernel's buffers from hiding the server's.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", running.port))
    sock.setblocking(False)
    _, writer = await asyncio.open_connection(sock=sock)
    check = checks.http_check_request(host="site.test", path="/private")
    checks_ = check * 32
    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(3):
                while True:  # the server stops reading; then the client's own buffers fill up
                    writer.write(checks_)
                    await writer.drain()
        [connection] = running.edge.connections
        unsent = connection._transport.get_write_buffer_size()  # type: ignore[union-attr]
        decided = len(running.decisions)
        await asyncio.sleep(0.3)
        assert len(running.decisions) == decided  # not reading: nothing more is decided
        # The high-water mark (64 KiB), and the answers to the checks of one read at most (an
        # asyncio transport reads up to 256 KiB at a time; each of its checks is answered).
        answer = len(http_response.encode(running.decisions[-1]))
        assert unsent < 64 * 1024 + (256 * 1024 // len(check) + 1) * answer
        # Stopping does not wait for ever on a peer that will not take its last answers.
        await asyncio.wait_for(running.edge.stop(grace=0.2), 5)
        assert not running.edge.connections
    finally:
        writer.close()


async def test_a_request_that_trickles_in_is_cut_off(running: Running) -> None:
    # Envoy sends a check at once; a client of the port that sends half a request and waits must
    # not hold the connection (and its buffers) for ever.
    running.edge.request_seconds = 0.3
    reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
    writer.write(checks.http_check_request(host="site.test", path="/public")[:40])
    closed = await asyncio.wait_for(reader.read(), 5)  # the server closes: EOF, no answer
    writer.close()
    assert closed == b""
    assert running.decisions == []  # nothing was decided: there was no request
    [answer] = await running.ask(checks.http_check_request(host="site.test", path="/public"))
    assert answer.status == 200  # whole requests still get their answer


async def test_pipelined_checks_are_answered_in_order(running: Running) -> None:
    paths = ["/public", "/private", "/public/x", "/nope"]
    data = b"".join(checks.http_check_request(host="site.test", path=path, request_id=path) for path in paths)
    answers = await running.ask(data, answers=len(paths))
    assert [a.status for a in answers] == [200, 401, 200, 401]
    assert [a.headers["x-tollgate-reason"] for a in answers] == [
        "rule_allow",
        "default_deny",
        "rule_allow",
        "default_deny",
    ]


class GatedIdentity:
    """Resolves the anonymous caller once the gate opens: a check in flight for as long as wanted."""

    def __init__(self) -> None:
        self.waiting = asyncio.Event()  # a check is waiting at the gate
        self.gate = asyncio.Event()

    def resolve_now(self, request: object, scope: object) -> None:
        return None

    async def resolve(self, request: object, scope: object) -> model.Identity:
        self.waiting.set()
        await self.gate.wait()
        return model.ANONYMOUS


async def test_a_connection_closed_mid_check_is_recorded_as_cancelled(running: Running) -> None:
    stuck = GatedIdentity()  # never opened: Envoy gives up first (its timeout)
    running.runtime.identity = stuck  # type: ignore[assignment]
    _, writer = await asyncio.open_connection("127.0.0.1", running.port)
    writer.write(checks.http_check_request(host="site.test", path="/public"))
    await asyncio.wait_for(stuck.waiting.wait(), 5)
    writer.close()
    async with asyncio.timeout(5):
        while not running.decisions:
            await asyncio.sleep(0.01)
    [record] = running.decisions
    assert (record.status, record.reason) == (504, "request_cancelled")
    assert record.request is not None and record.request.path == "/public"


async def test_stop_lets_a_check_in_flight_finish_then_closes_its_connection(running: Running) -> None:
    gated = GatedIdentity()
    running.runtime.identity = gated  # type: ignore[assignment]
    reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
    writer.write(checks.http_check_request(host="site.test", path="/public"))
    await asyncio.wait_for(gated.waiting.wait(), 5)
    stopping = asyncio.create_task(running.edge.stop(5))
    await asyncio.sleep(0.2)
    assert not stopping.done()  # waiting for the check, within the grace period
    gated.gate.set()
    await asyncio.wait_for(stopping, 5)
    answer = await asyncio.wait_for(reader.read(), 5)  # to the end: the connection was closed after it
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert [d.reason for d in running.decisions] == ["rule_allow"]


class BrokenIdentity:
    def resolve_now(self, request: object, scope: object) -> None:
        raise RuntimeError("bug")

    async def resolve(self, request: object, scope: object) -> model.Identity:
        raise RuntimeError("bug")


async def test_a_fault_fails_closed_as_403_and_is_recorded_as_500(running: Running) -> None:
    # Envoy reads any 5xx from an HTTP authorization server as a failure of the service (with
    # failure_mode_allow: an allow), so Tollgate's own error denials travel as 403.
    running.runtime.identity = BrokenIdentity()  # type: ignore[assignment]
    answer = await running.one(host="site.test", path="/public")
    assert answer.status == 403
    assert json.loads(answer.body) == {"error": "internal_error", "reason": "authz_error", "request_id": "req-1"}
    assert b"bug" not in answer.body
    [record] = running.decisions
    assert (record.status, record.reason) == (500, "authz_error")


async def test_one_record_per_check_whatever_happens(running: Running) -> None:
    await running.one(host="site.test", path="/public")
    await running.one(host="site.test", path="/x")
    await running.one(host="site.test", path="/public", envoy=[])
    await running.ask(b"\x16\x03\x01 not http\r\n\r\n")
    assert [d.reason for d in running.decisions] == [
        "rule_allow",
        "default_deny",
        "request_envoy_attributes_missing",
        "request_parse_error",
    ]
    assert len({d.decision_id for d in running.decisions}) == 4


async def test_mtls_listener(tmp_path: pathlib.Path) -> None:
    ca = pki.DevCA(tmp_path / "pki")
    server_cert, server_key = ca.issue("tollgate", dns="localhost")
    client_cert, client_key = ca.issue("envoy", dns="envoy")
    running = await _start(tmp_path, tls_cert=server_cert, tls_key=server_key, tls_client_ca=ca.ca_file)
    try:
        context = ssl.create_default_context(cafile=str(ca.ca_file))
        context.load_cert_chain(client_cert, client_key)
        data = checks.http_check_request(host="site.test", path="/public")
        [answer] = await checks.exchange(running.port, data, context=context)
        assert answer.status == 200
        without = ssl.create_default_context(cafile=str(ca.ca_file))
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            answers = await checks.exchange(running.port, data, context=without)
            assert not answers  # TLS 1.3: the refusal may arrive as a closed connection instead
            raise ConnectionError("closed without an answer")
    finally:
        await running.edge.stop(1)
