"""mTLS identities through a TLS-terminating Envoy, and API keys (hashed, constant-time)."""

from __future__ import annotations

import hashlib
import http.client
import json
import pathlib
import ssl
from collections.abc import Callable
from typing import Any

import pytest

from authz import cli, loader
from authz.dev import harness, pki, upstream
from authz.errors import ConfigErrors
from authz.identity import model, resolve
from authz.request import HttpRequest

MTLS_CONFIG = """
apiVersion: tollgate.dev/v1alpha1
kind: IdentityProvider
metadata: {name: mesh}
spec: {type: mtls, mtls: {trustDomains: [cluster.local]}}
---
apiVersion: tollgate.dev/v1alpha1
kind: AccessPolicy
metadata: {name: orders}
spec:
  hosts: [orders.test]
  rules:
    - {name: shop-workloads, action: Allow, from: {principals: ["spiffe://cluster.local/ns/shop/*"]}}
"""


def _get(port: int, ca: pathlib.Path, cert: pathlib.Path, key: pathlib.Path, headers: dict[str, str]) -> Any:
    context = ssl.create_default_context(cafile=str(ca))
    context.load_cert_chain(str(cert), str(key))
    connection = http.client.HTTPSConnection("localhost", port, context=context, timeout=10)
    try:
        connection.request("GET", "/orders", headers={"Host": "orders.test", **headers})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.mark.envoy
def test_mtls_principal_from_envoy(
    tmp_path: pathlib.Path,
    echo_upstream: upstream.EchoUpstream,
    tollgate: Callable[..., harness.TollgateProcess],
    envoy: Callable[..., harness.Envoy],
    transport: str,
) -> None:
    ca = pki.DevCA(tmp_path / "pki")
    server_cert, server_key = ca.issue("envoy", dns="localhost")
    web_cert, web_key = ca.issue("web", spiffe="spiffe://cluster.local/ns/shop/sa/web")
    dev_cert, dev_key = ca.issue("dev", spiffe="spiffe://cluster.local/ns/dev/sa/web")
    evil_cert, evil_key = ca.issue("evil", spiffe="spiffe://evil.local/ns/shop/sa/web")
    config = tmp_path / "config.yaml"
    config.write_text(MTLS_CONFIG)
    authz = tollgate(config, http=True)
    proxy = envoy(
        authz_port=authz.authz_port(transport),
        upstream_port=echo_upstream.port,
        tls={"cert": str(server_cert), "key": str(server_key), "client_ca": str(ca.ca_file)},
        authz_mode=transport,
    )

    # A spoofed forwarded-certificate header is ignored: only Envoy's TLS stack is believed (over
    # HTTP ext_authz too, where Envoy passes the certificate's names in x-tollgate-envoy-peer-*).
    trusted = "spiffe://cluster.local/ns/shop/sa/web"
    spoof = {
        "x-forwarded-client-cert": f"URI={trusted}",
        "x-tollgate-principal": trusted,
        "x-tollgate-envoy-peer-uri-san": trusted,
        "x-tollgate-envoy-peer-subject": "CN=web",
    }
    status, body = _get(proxy.port, ca.ca_file, web_cert, web_key, spoof)
    assert status == 200, body
    seen = json.loads(body)["headers"]
    assert seen["x-tollgate-principal"] == ["spiffe://cluster.local/ns/shop/sa/web"]
    assert seen["x-tollgate-auth-method"] == ["mtls"]

    status, body = _get(proxy.port, ca.ca_file, dev_cert, dev_key, spoof)
    assert status == 403 and json.loads(body)["reason"] == "default_deny"

    status, body = _get(proxy.port, ca.ca_file, evil_cert, evil_key, {})
    assert status == 401 and json.loads(body)["reason"] == "mtls_untrusted_domain"

    # A verified certificate from an untrusted domain cannot borrow a trusted name by header.
    status, body = _get(proxy.port, ca.ca_file, evil_cert, evil_key, spoof)
    assert status == 401 and json.loads(body)["reason"] == "mtls_untrusted_domain"


def _keys_config(directory: pathlib.Path, entries: str) -> pathlib.Path:
    (directory / "keys.yaml").write_text(entries)
    config = directory / "config.yaml"
    config.write_text("""
apiVersion: tollgate.dev/v1alpha1
kind: IdentityProvider
metadata: {name: machines}
spec: {type: apiKey, apiKey: {header: X-API-Key, keysFile: keys.yaml}}
""")
    return config


async def test_api_keys(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["apikey", "create", "--id", "ci-bot"]) == 0
    out = capsys.readouterr().out
    key = out.split("it is not stored): ")[1].split()[0]
    digest = hashlib.sha256(key.encode()).hexdigest()
    assert digest in out and key.startswith("ci-bot.")
    config = _keys_config(tmp_path, f"keys:\n  - id: ci-bot\n    sha256: {digest}\n    groups: [ci]\n")
    assert key not in config.read_text() + (tmp_path / "keys.yaml").read_text()

    resolver = resolve.IdentityResolver()
    resolver.update(loader.load(config).providers)

    async def who(value: str) -> model.Identity | str:
        request = HttpRequest(method="GET", host="a", path="/", headers={"x-api-key": value})
        try:
            return await resolver.resolve(request, None)
        except model.IdentityFailure as failure:
            return failure.code

    identity = await who(key)
    assert isinstance(identity, model.Identity)
    assert (identity.method, identity.subject, identity.key_id, identity.groups) == (
        "apiKey",
        "apikey:ci-bot",
        "ci-bot",
        ("ci",),
    )
    assert key not in repr(identity)
    assert await who(key[:-1] + ("A" if key[-1] != "A" else "B")) == "apikey_invalid"
    assert await who("other-bot." + key.split(".", 1)[1]) == "apikey_invalid"
    assert await who("no-dot-at-all") == "apikey_invalid"
    anonymous = await resolver.resolve(HttpRequest(method="GET", host="a", path="/"), None)
    assert anonymous is model.ANONYMOUS


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ("keys:\n  - id: bot\n    sha256: plain-text-key\n", "must be 64 hex characters"),
        ("keys:\n  - id: Bad_Id\n    sha256: " + "a" * 64 + "\n", "invalid or duplicate id"),
        ("keys:\n  - id: bot\n    sha256: " + "a" * 64 + "\n  - id: bot\n    sha256: " + "b" * 64 + "\n", "duplicate"),
        ("not: a key list\n", "expected a mapping with a 'keys' list"),
    ],
)
def test_bad_keys_file_is_a_config_error(tmp_path: pathlib.Path, entries: str, message: str) -> None:
    config = _keys_config(tmp_path, entries)
    with pytest.raises(ConfigErrors) as caught:
        loader.load(config)
    text = str(caught.value)
    assert message in text and "spec.apiKey.keysFile" in text and "config.yaml" in text
