"""The JWT attack suite, through a real Envoy, against keys served over real HTTP.

Every forged, broken or misused token must be refused with 401 and its own reason, never reach
the upstream, and never put a traceback in Tollgate's log.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import pathlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from authz import envoy_bootstrap
from authz.dev import harness, idp, upstream

pytestmark = pytest.mark.envoy


class Stack:
    def __init__(self, provider: idp.DevIdentityProvider, proxy: harness.Envoy, log: pathlib.Path) -> None:
        self.idp = provider
        self.proxy = proxy
        self.log = log

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        return {
            "iss": self.idp.issuer,
            "sub": "mallory",
            "aud": "tollgate-demo",
            "iat": now,
            "exp": now + 600,
            **overrides,
        }


@pytest.fixture(scope="module", params=["grpc-threads", "grpc-aio", envoy_bootstrap.HTTP_MODE, "http-threads"])
def stack(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Stack]:
    """The whole stack once per transport: Envoy asks Tollgate over gRPC, then over HTTP (each on
    each engine; plain ``http`` on what ``auto`` picks)."""
    transport = str(request.param)
    named = {"grpc-threads": "threads", "grpc-aio": "aio", "http-threads": "threads"}.get(transport)
    engine = ["--grpc-engine", named] if named else []
    transport = envoy_bootstrap.GRPC_MODE if transport.startswith("grpc-") else envoy_bootstrap.HTTP_MODE
    directory = tmp_path_factory.mktemp("attacks")
    provider = idp.DevIdentityProvider(directory / "idp").start()
    ec_public = ec.generate_private_key(ec.SECP256R1()).public_key()
    provider.extra_keys = [{**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_public)), "kid": "ec-1"}]
    (directory / "config.yaml").write_text(
        provider.app_config(
            "{name: public, action: Allow, to: {paths: [/public]}}",
            "{name: users, action: Allow, from: {authenticated: true}}",
            cookie="session",
        )
    )
    echo = upstream.EchoUpstream().start()
    log = directory / "tollgate.log"
    authz = harness.TollgateProcess(directory / "config.yaml", extra=engine, log_to=log, http=True).start()
    proxy = harness.Envoy(authz_port=authz.authz_port(transport), upstream_port=echo.port, authz_mode=transport).start()
    try:
        yield Stack(provider, proxy, log)
    finally:
        proxy.stop()
        authz.stop()
        echo.stop()
        provider.stop()


def _wait_until_keys(stack: Stack, http: Callable[..., Any]) -> None:
    token = stack.idp.token("alice")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if (
            http(stack.proxy.port, "GET", "/x", host="app.test", headers={"Authorization": f"Bearer {token}"}).status
            == 200
        ):
            return
        time.sleep(0.1)
    raise AssertionError("keys never arrived")


def _rsa_public_pem(stack: Stack) -> bytes:
    private = serialization.load_pem_private_key(stack.idp.state["keys"][0]["pem"].encode(), password=None)
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _hs256_with_public_key(stack: Stack) -> str:
    """The classic algorithm-confusion forgery: HMAC keyed with the RSA public key."""
    signing_input = idp.unsigned_token(
        {"alg": "HS256", "typ": "JWT", "kid": stack.idp.state["keys"][0]["kid"]}, stack.claims()
    )
    signature = hmac.new(_rsa_public_pem(stack), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{idp.b64url(signature)}"


ATTACKS: list[tuple[str, Callable[[Stack], dict[str, str]], str]] = [
    (
        "alg-none",
        lambda s: {"Authorization": "Bearer " + idp.unsigned_token({"alg": "none"}, s.claims()) + "."},
        "token_algorithm_not_allowed",
    ),
    (
        "alg-none-capitalised",
        lambda s: {"Authorization": "Bearer " + idp.unsigned_token({"alg": "None"}, s.claims()) + "."},
        "token_algorithm_not_allowed",
    ),
    (
        "hs256-with-rsa-public-key",
        lambda s: {"Authorization": "Bearer " + _hs256_with_public_key(s)},
        "token_algorithm_not_allowed",
    ),
    ("expired", lambda s: {"Authorization": "Bearer " + s.idp.token("mallory", lifetime=-300)}, "token_expired"),
    (
        "not-yet-valid",
        lambda s: {"Authorization": "Bearer " + s.idp.token("mallory", extra={"nbf": int(time.time()) + 600})},
        "token_not_yet_valid",
    ),
    (
        "wrong-issuer",
        lambda s: {"Authorization": "Bearer " + s.idp.token("mallory", extra={"iss": "https://evil.example"})},
        "token_unknown_issuer",
    ),
    (
        "wrong-audience",
        lambda s: {"Authorization": "Bearer " + s.idp.token("mallory", audience="other-app")},
        "token_wrong_audience",
    ),
    (
        "unknown-kid",
        lambda s: {"Authorization": "Bearer " + s.idp.token("mallory", headers={"kid": "forged"})},
        "token_unknown_kid",
    ),
    (
        "kid-of-wrong-key-type",
        lambda s: {"Authorization": "Bearer " + s.idp.token("mallory", headers={"kid": "ec-1"})},
        "token_key_mismatch",
    ),
    (
        "bad-signature",
        lambda s: {"Authorization": "Bearer " + s.idp.token("mallory")[:-6] + "AAAAAA"},
        "token_bad_signature",
    ),
    (
        "larger-than-8kib",
        lambda s: {"Authorization": "Bearer " + s.idp.token("mallory", extra={"pad": "x" * 9000})},
        "token_too_large",
    ),
    ("malformed-base64", lambda s: {"Authorization": "Bearer abc.!!!$$$.def"}, "token_malformed"),
    (
        "malformed-json",
        lambda s: {"Authorization": "Bearer " + idp.b64url(b"{not json") + "." + idp.b64url(b"{}") + ".sig"},
        "token_malformed",
    ),
    ("two-parts", lambda s: {"Authorization": "Bearer onlyone.part"}, "token_malformed"),
    (
        "unsupported-crit",
        lambda s: {
            "Authorization": "Bearer "
            + s.idp.token("mallory", headers={"crit": ["urn:example:ext"], "urn:example:ext": 1})
        },
        "token_unsupported_crit",
    ),
    (
        "missing-exp",
        lambda s: {
            "Authorization": "Bearer "
            + jwt.encode(
                {k: v for k, v in s.claims().items() if k != "exp"},
                s.idp.state["keys"][0]["pem"],
                algorithm="RS256",
                headers={"kid": s.idp.state["keys"][0]["kid"]},
            )
        },
        "token_missing_claim",
    ),
    (
        "bearer-and-cookie-disagree",
        lambda s: {"Authorization": "Bearer " + s.idp.token("alice"), "Cookie": "session=" + s.idp.token("mallory")},
        "token_ambiguous",
    ),
]


@pytest.mark.parametrize(("make_headers", "reason"), [pytest.param(a[1], a[2], id=a[0]) for a in ATTACKS])
def test_attack_is_refused(
    stack: Stack, http: Callable[..., Any], make_headers: Callable[[Stack], dict[str, str]], reason: str
) -> None:
    _wait_until_keys(stack, http)
    reply = http(stack.proxy.port, "GET", "/orders", host="app.test", headers=make_headers(stack))
    assert reply.status == 401, reply.body
    assert reply.json()["reason"] == reason
    assert "path" not in reply.json()  # the upstream echo never answered
    assert reply.headers["www-authenticate"].startswith("Bearer")
    assert "Traceback" not in stack.log.read_text()


def test_bad_token_is_refused_even_on_a_public_path(stack: Stack, http: Callable[..., Any]) -> None:
    reply = http(stack.proxy.port, "GET", "/public", host="app.test", headers={"Authorization": "Bearer abc.def"})
    assert (reply.status, reply.json()["reason"]) == (401, "token_malformed")
    assert http(stack.proxy.port, "GET", "/public", host="app.test").status == 200


def test_valid_token_from_header_or_cookie(stack: Stack, http: Callable[..., Any]) -> None:
    _wait_until_keys(stack, http)
    token = stack.idp.token("alice", groups=["staff"])
    for headers in (
        {"Authorization": f"Bearer {token}"},
        {"Cookie": f"other=1; session={token}"},
        {"Authorization": f"Bearer {token}", "Cookie": f"session={token}"},
    ):
        reply = http(stack.proxy.port, "GET", "/orders", host="app.test", headers=headers)
        assert reply.status == 200, (headers, reply.body)
        assert reply.json()["headers"]["x-tollgate-subject"] == ["alice"]
