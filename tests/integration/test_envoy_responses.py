"""What clients and upstreams see through a real Envoy: trusted identity headers (never spoofable),
deny bodies and challenges, and the decision in Envoy's access log via dynamic metadata — with
Envoy asking Tollgate over gRPC and over HTTP."""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import Any

import pytest

from authz import response
from authz.dev import harness, idp, upstream

pytestmark = pytest.mark.envoy

POLICIES = """
apiVersion: tollgate.dev/v1alpha1
kind: IdentityProvider
metadata: {name: dev}
spec:
  type: jwt
  jwt: {issuer: "ISSUER", audiences: [tollgate-demo]}
---
apiVersion: tollgate.dev/v1alpha1
kind: AccessPolicy
metadata: {name: app, namespace: demo}
spec:
  hosts: [app.test]
  rules:
    - {name: public, action: Allow, to: {paths: [/public]}}
    - {name: staff, action: Allow, to: {paths: [/staff]}, from: {groups: [staff]}}
    - {name: upload, action: Allow, to: {methods: [POST], paths: [/upload]}}
    - {name: plain-http, action: Deny, to: {paths: [/scheme/denied]}, when: [{header: ":scheme", values: [http]}]}
    - {name: over-http, action: Allow, to: {paths: [/scheme/allowed]}, when: [{header: ":scheme", values: [http]}]}
    - {name: over-https, action: Allow, to: {paths: [/scheme/secure]}, when: [{header: ":scheme", values: [https]}]}
"""

SPOOFED = {name: "spoofed" for name in response.IDENTITY_HEADERS}


@pytest.fixture
def authz_port(
    tmp_path: pathlib.Path,
    dev_idp: idp.DevIdentityProvider,
    tollgate: Callable[..., harness.TollgateProcess],
    transport: str,
) -> int:
    """Tollgate on this module's policies: the port Envoy asks over ``transport``."""
    path = tmp_path / "policies.yaml"
    path.write_text(POLICIES.replace("ISSUER", dev_idp.issuer))
    return tollgate(path, http=True).authz_port(transport)


@pytest.fixture
def proxy(
    authz_port: int, echo_upstream: upstream.EchoUpstream, envoy: Callable[..., harness.Envoy], transport: str
) -> harness.Envoy:
    """Envoy in front of the echo upstream, with Tollgate on this module's policies."""
    return envoy(authz_port=authz_port, upstream_port=echo_upstream.port, access_log=True, authz_mode=transport)


def test_identity_headers_cannot_be_spoofed(
    proxy: harness.Envoy, dev_idp: idp.DevIdentityProvider, http: Callable[..., Any]
) -> None:
    anonymous = http(proxy.port, "GET", "/public", host="app.test", headers=SPOOFED)
    assert anonymous.status == 200
    seen = anonymous.json()["headers"]
    for name in (response.SUBJECT, response.GROUPS, response.ROLES, response.METHOD, response.PRINCIPAL):
        assert name not in seen, f"client-sent {name} reached the upstream"
    assert seen[response.DECISION_ID][0] != "spoofed" and len(seen[response.DECISION_ID]) == 1
    assert seen["x-request-id"][0]  # Envoy's request id reaches the upstream; ours is the decision id

    token = dev_idp.token("alice", groups=["staff", "ops"])
    signed_in = http(
        proxy.port, "GET", "/staff", host="app.test", headers={**SPOOFED, "Authorization": f"Bearer {token}"}
    )
    assert signed_in.status == 200
    seen = signed_in.json()["headers"]
    assert seen[response.SUBJECT] == ["alice"]
    assert seen[response.GROUPS] == ['"staff", "ops"']  # an RFC 9651 list of strings
    assert seen[response.METHOD] == ["jwt"]
    assert "spoofed" not in str(seen)


def test_policies_read_the_scheme_envoy_set_in_every_mode(proxy: harness.Envoy, http: Callable[..., Any]) -> None:
    """``:scheme`` as Envoy set it, also over HTTP ext_authz (whose check request carries no
    pseudo-headers): a Deny rule on it fires, and with a client's ``X-Forwarded-Proto`` the rule
    that holds is the one for the scheme the upstream is told."""
    denied = http(proxy.port, "GET", "/scheme/denied", host="app.test")
    assert denied.status == 401 and denied.json()["reason"] == "rule_deny"  # anonymous: 401
    allowed = http(proxy.port, "GET", "/scheme/allowed", host="app.test")
    assert allowed.status == 200 and allowed.json()["path"] == "/scheme/allowed"
    assert allowed.json()["headers"]["x-forwarded-proto"] == ["http"]
    claimed = {"x-forwarded-proto": "https"}
    secure = http(proxy.port, "GET", "/scheme/secure", host="app.test", headers=claimed)
    plain = http(proxy.port, "GET", "/scheme/allowed", host="app.test", headers=claimed)
    assert sorted([secure.status, plain.status]) == [200, 401]
    passed, scheme = (secure, "https") if secure.status == 200 else (plain, "http")
    assert passed.json()["headers"]["x-forwarded-proto"] == [scheme]  # what the upstream acts on


def test_deny_bodies_and_status(
    proxy: harness.Envoy, dev_idp: idp.DevIdentityProvider, http: Callable[..., Any]
) -> None:
    unauthenticated = http(proxy.port, "GET", "/staff", host="app.test", headers={"x-request-id": "rid-1"})
    assert unauthenticated.status == 401
    assert unauthenticated.headers["www-authenticate"].startswith("Bearer")
    assert unauthenticated.headers["content-type"] == "application/json"
    assert unauthenticated.json() == {"error": "unauthenticated", "reason": "default_deny", "request_id": "rid-1"}

    outsider = dev_idp.token("mallory", groups=["guests"])
    forbidden = http(proxy.port, "GET", "/staff", host="app.test", headers={"Authorization": f"Bearer {outsider}"})
    assert forbidden.status == 403
    assert "www-authenticate" not in forbidden.headers
    assert forbidden.json()["error"] == "forbidden"
    assert set(forbidden.json()) == {"error", "reason", "request_id"}


def test_decision_in_envoy_access_log(tmp_path: pathlib.Path, proxy: harness.Envoy, http: Callable[..., Any]) -> None:
    assert http(proxy.port, "GET", "/public", host="app.test").status == 200
    assert http(proxy.port, "GET", "/secret", host="app.test").status == 401
    proxy.stop()  # Envoy buffers its access log; stopping flushes it
    text = (tmp_path / "envoy.log").read_text()
    assert "GET /public 200 policy=demo/app reason=rule_allow" in text
    assert "GET /secret 401 policy=demo/app reason=default_deny" in text


def test_unreachable_tollgate_fails_closed(
    echo_upstream: upstream.EchoUpstream, envoy: Callable[..., harness.Envoy], http: Callable[..., Any], transport: str
) -> None:
    proxy = envoy(authz_port=harness.free_port(), upstream_port=echo_upstream.port, authz_mode=transport)
    reply = http(proxy.port, "GET", "/public", host="app.test")
    assert reply.status == 403  # Envoy's failure_mode_allow=false: nothing reaches the upstream


def test_a_large_buffered_body_is_not_mistaken_for_large_headers(
    authz_port: int,
    echo_upstream: upstream.EchoUpstream,
    envoy: Callable[..., harness.Envoy],
    http: Callable[..., Any],
    transport: str,
) -> None:
    # With `with_request_body`, Envoy sends the buffered body inside the CheckRequest; Tollgate's
    # header-size bound must not count it.
    proxy = envoy(
        authz_port=authz_port, upstream_port=echo_upstream.port, request_body_bytes=256 * 1024, authz_mode=transport
    )
    reply = http(proxy.port, "POST", "/upload", host="app.test", body=b"x" * 100_000)
    assert reply.status == 200, reply.body
    assert reply.json()["method"] == "POST"
