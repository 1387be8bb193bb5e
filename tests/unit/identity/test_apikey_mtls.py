"""authz.identity.apikey and authz.identity.mtls in-process: each deny reason, without Envoy."""

from __future__ import annotations

import hashlib
import pathlib

import pytest

from authz.identity import model, resolve

from .conftest import outcome, resolver_for

CONFIG = """
apiVersion: tollgate.dev/v1alpha1
kind: IdentityProvider
metadata: {name: keys}
spec:
  type: apiKey
  apiKey: {keysFile: keys.yaml, header: authorization, prefix: "ApiKey "}
---
apiVersion: tollgate.dev/v1alpha1
kind: IdentityProvider
metadata: {name: mesh}
spec:
  type: mtls
  mtls: {trustDomains: [corp.test]}
"""
KEY = "robot.secret-value-of-the-robot"


@pytest.fixture
async def resolver(tmp_path: pathlib.Path) -> resolve.IdentityResolver:
    (tmp_path / "config.yaml").write_text(CONFIG)
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    (tmp_path / "keys.yaml").write_text(f"keys:\n  - {{id: robot, sha256: {digest}, subject: robot-1, roles: [ci]}}\n")
    return await resolver_for(tmp_path / "config.yaml")


async def test_api_keys(resolver: resolve.IdentityResolver) -> None:
    identity = await outcome(resolver, {"authorization": f"ApiKey {KEY}"})
    assert isinstance(identity, model.Identity)
    assert (identity.method, identity.subject, identity.roles, identity.key_id) == (
        "apiKey",
        "robot-1",
        ("ci",),
        "robot",
    )
    assert await outcome(resolver, {"authorization": "ApiKey robot.wrong"}) == "apikey_invalid"
    assert await outcome(resolver, {"authorization": "ApiKey nobody.secret"}) == "apikey_invalid"
    assert await outcome(resolver, {"authorization": "ApiKey no-dot"}) == "apikey_invalid"
    assert await outcome(resolver, {"authorization": f"Token {KEY}"}) == "apikey_malformed"


async def test_client_certificates(resolver: resolve.IdentityResolver) -> None:
    identity = await outcome(resolver, principal="spiffe://corp.test/ns/shop/sa/orders")
    assert isinstance(identity, model.Identity)
    assert (identity.method, identity.subject, identity.issuer) == (
        "mtls",
        "spiffe://corp.test/ns/shop/sa/orders",
        "corp.test",
    )
    assert await outcome(resolver, principal="spiffe://evil.test/ns/x/sa/y") == "mtls_untrusted_domain"
    assert await outcome(resolver, principal="spiffe://corp.test/" + "a" * 2000) == "mtls_principal_invalid"
    assert await outcome(resolver, principal="spiffe://corp.test/a b\x01") == "mtls_principal_invalid"


async def test_an_api_key_caller_keeps_its_certificate_principal(resolver: resolve.IdentityResolver) -> None:
    identity = await outcome(resolver, {"authorization": f"ApiKey {KEY}"}, principal="spiffe://corp.test/ns/a/sa/b")
    assert isinstance(identity, model.Identity)
    assert (identity.method, identity.principal) == ("apiKey", "spiffe://corp.test/ns/a/sa/b")
