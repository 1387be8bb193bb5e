"""Authorization/Check over the real gRPC server on 127.0.0.1, through a real channel.

Covers the transport edge: health and reflection, malformed CheckRequests (unparseable bytes,
missing attributes, oversized headers), fail-closed on an internal fault, one record per Check,
and TLS / mTLS on the listener.
"""

from __future__ import annotations

import datetime
import json
import pathlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from authz import configuration, decision, detect, loader, metrics, response, server
from authz.dev import checks

POLICY = """
apiVersion: tollgate.dev/v1alpha1
kind: AccessPolicy
metadata: {name: site}
spec:
  hosts: [site.test]
  rules:
    - {name: public, action: Allow, to: {paths: [/public, /public/*]}}
"""


class Running:
    def __init__(self, grpc_server: server.GrpcServer, port: int, runtime: server.Runtime) -> None:
        self.server = grpc_server
        self.port = port
        self.runtime = runtime


async def _start(tmp_path: pathlib.Path, **tls: Any) -> Running:
    config = tmp_path / "policy.yaml"
    config.write_text(POLICY)
    runtime = server.Runtime(loader.load(config), default_allow=False)
    runtime.recorder = checks.ListRecorder()
    settings = configuration.ServerSettings(config=config, listen="127.0.0.1:0", **tls)
    grpc_server, port = await server.start(settings, runtime)
    return Running(grpc_server, port, runtime)


@pytest.fixture
async def running(tmp_path: pathlib.Path) -> AsyncIterator[Running]:
    item = await _start(tmp_path)
    yield item
    await item.server.stop(None)


async def _check(port: int, request: external_auth_pb2.CheckRequest) -> external_auth_pb2.CheckResponse:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        return await external_auth_pb2_grpc.AuthorizationStub(channel).Check(request, timeout=5)


async def test_health_and_reflection(running: Running) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="envoy.service.auth.v3.Authorization"), timeout=5
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = [s.name async for r in responses for s in r.list_services_response.service]
        assert "envoy.service.auth.v3.Authorization" in names and "grpc.health.v1.Health" in names


async def test_allow_and_deny(running: Running) -> None:
    allowed = await _check(running.port, checks.check_request(host="site.test", path="/public/a"))
    assert allowed.status.code == 0 and allowed.HasField("ok_response")
    assert allowed.dynamic_metadata["reason"] == "rule_allow"
    denied = await _check(running.port, checks.check_request(host="site.test", path="/private", request_id="r-9"))
    assert denied.status.code == 16  # UNAUTHENTICATED
    assert denied.denied_response.status.code == 401
    assert json.loads(denied.denied_response.body) == {
        "error": "unauthenticated",
        "reason": "default_deny",
        "request_id": "r-9",
    }
    assert {h.header.key: h.header.value for h in denied.denied_response.headers}["www-authenticate"].startswith(
        "Bearer"
    )


async def test_unparseable_bytes_get_a_deny_not_an_error(running: Running) -> None:
    good = checks.check_request(host="site.test", path="/public", headers={"x-probe": "AAAA"}).SerializeToString()
    assert good.count(b"AAAA") == 1
    broken = good.replace(b"AAAA", b"\xff\xfe\xfd\xfc")  # invalid UTF-8 in a proto3 string field
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        call = channel.unary_unary(
            "/envoy.service.auth.v3.Authorization/Check",
            request_serializer=lambda raw: raw,
            response_deserializer=external_auth_pb2.CheckResponse.FromString,
        )
        reply = await call(broken, timeout=5)
    assert reply.denied_response.status.code == 400
    assert json.loads(reply.denied_response.body)["reason"] == "request_parse_error"
    assert running.runtime.recorder.decisions[-1].reason == "request_parse_error"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        (external_auth_pb2.CheckRequest(), "request_missing_http"),
        (checks.check_request(host="site.test", headers={"x-big": "b" * 100_000}), "request_headers_too_large"),
        (checks.check_request(host="site.test", path="/public%2F..%2Fadmin"), "path_encoded_slash"),
        (checks.check_request(host="site.test", path="/public/\\admin"), "path_backslash"),
    ],
)
async def test_malformed_requests(running: Running, request_: external_auth_pb2.CheckRequest, reason: str) -> None:
    reply = await _check(running.port, request_)
    assert reply.HasField("denied_response") and not reply.HasField("ok_response")
    assert json.loads(reply.denied_response.body)["reason"] == reason


class BrokenIdentity:
    """Fault injection: an internal bug in the identity stage (cannot be caused from outside)."""

    def resolve_now(self, request: Any, scope: Any) -> Any:
        raise RuntimeError("bug")

    async def resolve(self, request: Any, scope: Any) -> Any:
        raise RuntimeError("bug")


async def test_internal_fault_fails_closed_with_distinct_reason(running: Running) -> None:
    running.runtime.identity = BrokenIdentity()  # type: ignore[assignment]
    reply = await _check(running.port, checks.check_request(host="site.test", path="/public"))
    assert not reply.HasField("ok_response")
    assert reply.denied_response.status.code == 500
    assert json.loads(reply.denied_response.body) == {
        "error": "internal_error",
        "reason": "authz_error",
        "request_id": "req-1",
    }
    assert b"bug" not in reply.SerializeToString()  # no internals leak


@pytest.mark.parametrize("durable", [False, True])
async def test_an_answer_that_cannot_be_built_is_a_deny_and_recorded_as_one(
    running: Running, monkeypatch: pytest.MonkeyPatch, durable: bool
) -> None:
    # A fault that cannot be caused through the data path (the identity stage refuses every value
    # the answer builder would refuse), so it is injected: building the allow answer raises.
    real_encode = response.encode

    def encode(item: decision.Decision) -> bytes:
        if item.allowed:
            raise ValueError("cannot encode")
        return real_encode(item)

    monkeypatch.setattr(response, "encode", encode)
    recorder = running.runtime.recorder
    assert isinstance(recorder, checks.ListRecorder)
    recorder.durable = durable
    reply = await _check(running.port, checks.check_request(host="site.test", path="/public"))
    assert not reply.HasField("ok_response")
    assert reply.denied_response.status.code == 500
    assert json.loads(reply.denied_response.body)["reason"] == "authz_error"
    [record] = recorder.decisions  # what Envoy received, not the allow that was decided
    assert (record.allowed, record.status, record.reason) == (False, 500, "authz_error")
    assert record.message == "the answer could not be built (ValueError); the decision was allow rule_allow"


async def test_a_fault_in_metrics_or_detection_costs_neither_the_answer_nor_the_record(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    # Injected (no request makes the observers fail): both raise on every decision.
    class Broken(metrics.CheckMetrics):
        def observe(self, item: decision.Decision) -> None:
            raise RuntimeError("bug")

    running.runtime.check_metrics = Broken()
    running.runtime.detection = detect.Detection(detect.Settings())
    running.runtime.detection.observe = Broken().observe  # type: ignore[method-assign]
    recorder = running.runtime.recorder
    assert isinstance(recorder, checks.ListRecorder)
    allowed = await _check(running.port, checks.check_request(host="site.test", path="/public"))
    denied = await _check(running.port, checks.check_request(host="site.test", path="/x"))
    assert allowed.HasField("ok_response") and denied.denied_response.status.code == 401
    assert [d.reason for d in recorder.decisions] == ["rule_allow", "default_deny"]
    assert "metrics or detection failed: RuntimeError" in caplog.text
    assert running.runtime.check_metrics.in_flight == 0


async def test_one_record_per_check_whatever_happens(running: Running) -> None:
    recorder = running.runtime.recorder
    assert isinstance(recorder, checks.ListRecorder)
    await _check(running.port, checks.check_request(host="site.test", path="/public"))
    await _check(running.port, checks.check_request(host="site.test", path="/x"))
    await _check(running.port, external_auth_pb2.CheckRequest())
    assert [d.reason for d in recorder.decisions] == ["rule_allow", "default_deny", "request_missing_http"]
    assert len({d.decision_id for d in recorder.decisions}) == 3


def _certificate(
    name: str, key: ec.EllipticCurvePrivateKey, issuer_key: ec.EllipticCurvePrivateKey, issuer: str, *, ca: bool
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(item: Any) -> bytes:
    if isinstance(item, x509.Certificate):
        return item.public_bytes(serialization.Encoding.PEM)
    return bytes(
        item.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


async def test_mtls_listener(tmp_path: pathlib.Path) -> None:
    ca_key, server_key, client_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca = _certificate("test-ca", ca_key, ca_key, "test-ca", ca=True)
    files = {
        "ca.pem": _pem(ca),
        "server.pem": _pem(_certificate("localhost", server_key, ca_key, "test-ca", ca=False)),
        "server.key": _pem(server_key),
        "client.pem": _pem(_certificate("envoy", client_key, ca_key, "test-ca", ca=False)),
        "client.key": _pem(client_key),
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    running = await _start(
        tmp_path, tls_cert=tmp_path / "server.pem", tls_key=tmp_path / "server.key", tls_client_ca=tmp_path / "ca.pem"
    )
    try:
        options = (("grpc.ssl_target_name_override", "localhost"),)
        with_cert = grpc.ssl_channel_credentials(files["ca.pem"], files["client.key"], files["client.pem"])
        async with grpc.aio.secure_channel(f"127.0.0.1:{running.port}", with_cert, options=options) as channel:
            reply = await external_auth_pb2_grpc.AuthorizationStub(channel).Check(
                checks.check_request(host="site.test", path="/public"), timeout=5
            )
            assert reply.HasField("ok_response")
        without_cert = grpc.ssl_channel_credentials(files["ca.pem"])
        async with grpc.aio.secure_channel(f"127.0.0.1:{running.port}", without_cert, options=options) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await external_auth_pb2_grpc.AuthorizationStub(channel).Check(
                    checks.check_request(host="site.test", path="/public"), timeout=5
                )
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await running.server.stop(None)
