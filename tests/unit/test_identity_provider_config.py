"""IdentityProvider validation: unsafe or broken settings are configuration errors, named by field."""

from __future__ import annotations

import pathlib

import pytest

from authz import loader
from authz.errors import ConfigErrors
from authz.identity import providers

BASE = "apiVersion: tollgate.dev/v1alpha1\nkind: IdentityProvider\nmetadata: {name: idp}\n"


@pytest.mark.parametrize(
    ("spec", "field", "message"),
    [
        ("spec: {type: saml}", "spec.type", "must be one of jwt, mtls, apiKey"),
        ("spec: {type: jwt}", "spec.jwt", "is required"),
        ("spec: {type: jwt, jwt: {issuer: idp.example}}", "spec.jwt.issuer", "http(s) URL"),
        (
            "spec: {type: jwt, jwt: {issuer: 'https://i', algorithms: [none]}}",
            "spec.jwt.algorithms[0]",
            "never accepted",
        ),
        (
            "spec: {type: jwt, jwt: {issuer: 'https://i', algorithms: [RS256, HS256]}}",
            "spec.jwt.algorithms[1]",
            "needs hmacSecretFile",
        ),
        ("spec: {type: jwt, jwt: {issuer: 'https://i', algorithms: [XS999]}}", "spec.jwt.algorithms[0]", "unsupported"),
        ("spec: {type: jwt, jwt: {issuer: 'https://i', jwksUri: 'ftp://x'}}", "spec.jwt.jwksUri", "http(s) URL"),
        ("spec: {type: jwt, jwt: {issuer: 'https://i', leewaySeconds: 9999}}", "spec.jwt.leewaySeconds", "between 0"),
        ("spec: {type: jwt, jwt: {issuer: 'https://i', claims: {tenant: t}}}", "spec.jwt.claims", "claims maps only"),
        (
            "spec: {type: jwt, jwt: {issuer: 'https://i', refresh: {minSeconds: -1}}}",
            "spec.jwt.refresh.minSeconds",
            "positive",
        ),
        (
            "spec: {type: jwt, jwt: {issuer: 'https://i', refresh: {minSeconds: 100, maxSeconds: 10}}}",
            "spec.jwt.refresh.minSeconds",
            "must not exceed",
        ),
        (
            "spec: {type: jwt, jwt: {issuer: 'https://i', tokenSources: [{header: a, cookie: b}]}}",
            "spec.jwt.tokenSources[0]",
            "exactly one of",
        ),
        ("spec: {type: jwt, jwt: {issuer: 'https://i', audience: x}}", "spec.jwt.audience", "unknown field"),
        ("spec: {type: apiKey, apiKey: {header: x}}", "spec.apiKey.keysFile", "is required"),
        (
            "spec: {type: jwt, jwt: {issuer: 'https://i', algorithms: [HS256], hmacSecretFile: missing.txt}}",
            "spec.jwt.hmacSecretFile",
            "cannot read",
        ),
    ],
)
def test_invalid_provider(tmp_path: pathlib.Path, spec: str, field: str, message: str) -> None:
    path = tmp_path / "idp.yaml"
    path.write_text(BASE + spec + "\n")
    with pytest.raises(ConfigErrors) as caught:
        loader.load(path)
    text = str(caught.value)
    assert f"{path}: document 1 (IdentityProvider default/idp): {field}: " in text
    assert message in text


def test_short_hmac_secret_is_refused(tmp_path: pathlib.Path) -> None:
    (tmp_path / "secret.txt").write_text("too-short")
    path = tmp_path / "idp.yaml"
    path.write_text(
        BASE + "spec: {type: jwt, jwt: {issuer: 'https://i', algorithms: [HS256], hmacSecretFile: secret.txt}}\n"
    )
    with pytest.raises(ConfigErrors, match="at least 32 bytes"):
        loader.load(path)


def test_defaults_are_safe() -> None:
    spec = providers.parse_provider(
        {"metadata": {"name": "x"}, "spec": {"type": "jwt", "jwt": {"issuer": "https://i"}}}
    )
    assert spec.jwt is not None
    assert "none" not in [a.lower() for a in spec.jwt.algorithms]
    assert not set(spec.jwt.algorithms) & set(providers.HMAC_ALGORITHMS)
    assert spec.jwt.sources == (providers.TokenSource(header="authorization", prefix="Bearer "),)
    assert spec.jwt.max_token_bytes == 8 * 1024


def test_a_provider_name_is_unique_across_namespaces(tmp_path: pathlib.Path) -> None:
    """Policies and the resolver name a provider by name alone: a second provider of one name in
    another namespace must be refused, never silently stand in for the first."""
    provider = """apiVersion: tollgate.dev/v1alpha1
kind: IdentityProvider
metadata: {{name: corp, namespace: {namespace}}}
spec: {{type: jwt, jwt: {{issuer: "https://{namespace}.example", jwksUri: "https://{namespace}.example/keys"}}}}
"""
    (tmp_path / "a.yaml").write_text(provider.format(namespace="team-a"))
    (tmp_path / "b.yaml").write_text(provider.format(namespace="team-b"))
    with pytest.raises(ConfigErrors) as caught:
        loader.load(tmp_path)
    [error] = caught.value.errors
    assert error.field == "metadata.name" and "team-a/corp" in str(error) and str(error).startswith(str(tmp_path))
