"""Mutated CheckRequests at the gRPC port (a bounded, seeded run): never an OK for a denied target,
never a traceback, and the server stays SERVING.

The seeds are requests every configured policy denies — anonymous on ``vault.example.com``,
``x-debug: 1`` on ``headers.test``, a source outside ``ipallow.test``'s block — and the mutations
are both byte-level (flips, cuts, splices, repeats of the serialized message, so the protobuf parser
sees garbage too) and field-level (hosts, paths, methods, headers and source addresses from the
attack classes).
"""

from __future__ import annotations

import random

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from authz.dev import checks

pytestmark = pytest.mark.envoy

_CHECK = "/envoy.service.auth.v3.Authorization/Check"
SEEDS = [
    checks.check_request(host="vault.example.com", path="/"),
    checks.check_request(host="headers.test", path="/", headers={"x-debug": "1"}),
    checks.check_request(host="ipallow.test", path="/", source_ip="198.51.100.7"),
    checks.check_request(host="deny.test", path="/admin/x"),
    checks.check_request(method="DELETE", host="methods.test", path="/items/1"),
]
HOSTS, PATHS = checks.FUZZ_HOSTS, checks.FUZZ_PATHS  # the same attack classes over both edges
SOURCES = ["", "x", "::ffff:127.0.0.1", "fe80::1%eth0", "198.51.100.7:80"]


def _field_mutation(rng: random.Random, seed: external_auth_pb2.CheckRequest) -> bytes:
    message = external_auth_pb2.CheckRequest()
    message.CopyFrom(seed)
    http = message.attributes.request.http
    choice = rng.randrange(5)
    if choice == 0:
        http.host = rng.choice(HOSTS)
    elif choice == 1:
        http.path = rng.choice(PATHS) if http.host != "vault.example.com" else http.path + rng.choice(PATHS)
    elif choice == 2:
        http.method = rng.choice(["get", "GET\n", "", "X" * 40, "POST"])  # POST: disagrees with :method
    elif choice == 3:
        name = rng.choice(["x-debug", "x-http-method-override", "cookie", ":authority", "x_tollgate_subject"])
        if name == "x-debug":  # every copy list still holds a "1": still denied on headers.test
            value = rng.choice(["1,1", "0,1", "1, 0", " 1", "1,"]) if "x-debug" in http.headers else "0"
        else:
            value = rng.choice(["DELETE", 'session="' + "\\" * 2000, "a.wild.example.com", "admins"])
        http.headers[name] = value
    else:
        message.attributes.source.address.socket_address.address = rng.choice(SOURCES)
    data: bytes = message.SerializeToString()
    return data


def test_mutated_check_requests_never_get_an_allow(hardening) -> None:
    rng = random.Random(20261129)
    allowed, answers = [], 0
    with grpc.insecure_channel(f"127.0.0.1:{hardening.tollgate.port}") as channel:
        call = channel.unary_unary(_CHECK, request_serializer=None, response_deserializer=None)
        for index in range(1500):
            seed = SEEDS[index % len(SEEDS)]
            if index % 2:
                data = _field_mutation(rng, seed)
            else:
                # Bytes only on seeds no spelling of which is allowed: a flipped byte on deny.test
                # could turn "/admin" into "/admim", which its default allows, rightly.
                data = checks.mutate_bytes(rng, SEEDS[index % 4 // 2 * 2].SerializeToString())
            try:
                reply = external_auth_pb2.CheckResponse.FromString(call(data, timeout=5))
            except grpc.RpcError as error:
                # A message gRPC itself cannot frame never reaches Tollgate; anything else must be answered.
                assert error.code() in (grpc.StatusCode.INTERNAL,), error
                continue
            answers += 1
            if reply.status.code == 0:
                allowed.append(data)
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert not allowed, f"{len(allowed)} mutated denied requests were allowed, e.g. {allowed[0]!r}"
    assert answers > 1400  # the fuzz reached the decision path, not only the transport
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    log = hardening.log_text()
    assert "Traceback" not in log and "authz_error" not in log
