"""authz.identity.jwt in-process: every ``token_*`` reason, without Envoy."""

from __future__ import annotations

import json
import pathlib
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from authz.dev import idp
from authz.identity import jwt as jwt_identity
from authz.identity import model, providers, resolve

from .conftest import outcome, resolver_for

CONFIG = """
apiVersion: tollgate.dev/v1alpha1
kind: IdentityProvider
metadata: {{name: dev}}
spec:
  type: jwt
  jwt:
    issuer: "{issuer}{slash}"
    jwksUri: "{issuer}/jwks.json"
    audiences: [tollgate-demo]
    tokenSources: [{{header: authorization, prefix: "Bearer "}}, {{cookie: session}}]
"""


def _claims(provider: idp.DevIdentityProvider, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": provider.issuer, "sub": "mallory", "aud": "tollgate-demo", "iat": now, "exp": now + 600, **overrides}


def _signed(provider: idp.DevIdentityProvider, claims: dict[str, Any], **headers: Any) -> str:
    key = provider.state["keys"][0]
    return jwt.encode(claims, key["pem"], algorithm="RS256", headers={"kid": key["kid"], **headers})


@pytest.fixture
async def resolver(provider: idp.DevIdentityProvider, tmp_path: pathlib.Path) -> resolve.IdentityResolver:
    provider.extra_keys = [
        {
            **json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()).public_key())),
            "kid": "ec-1",
        }
    ]
    (tmp_path / "config.yaml").write_text(CONFIG.format(issuer=provider.issuer, slash=""))
    return await resolver_for(tmp_path / "config.yaml")


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def test_a_valid_token_maps_to_its_identity(
    resolver: resolve.IdentityResolver, provider: idp.DevIdentityProvider
) -> None:
    identity = await outcome(resolver, bearer(provider.token("alice", groups=["staff"], mfa=True)))
    assert isinstance(identity, model.Identity)
    assert (identity.subject, identity.groups, identity.mfa, identity.provider) == ("alice", ("staff",), True, "dev")


CASES: list[tuple[str, Any]] = [
    ("token_ambiguous", lambda p: {**bearer(p.token("a")), "cookie": f"session={p.token('b')}"}),
    ("token_ambiguous", lambda p: {"authorization": f"Bearer {p.token('a')},Bearer {p.token('b')}"}),
    ("token_too_large", lambda p: bearer(p.token("a", extra={"pad": "x" * 9000}))),
    ("token_malformed", lambda p: bearer("only.two")),
    ("token_malformed", lambda p: bearer("abc.!!!.def")),
    ("token_malformed", lambda p: bearer(idp.b64url(b"[" * 40 + b"]" * 40) + "." + idp.b64url(b"{}") + ".sig")),
    ("token_unknown_issuer", lambda p: bearer(_signed(p, _claims(p, iss="https://evil.example")))),
    ("token_unsupported_crit", lambda p: bearer(_signed(p, _claims(p), crit=["urn:x"], **{"urn:x": 1}))),
    ("token_algorithm_not_allowed", lambda p: bearer(idp.unsigned_token({"alg": "none"}, _claims(p)) + ".")),
    (
        "token_algorithm_not_allowed",
        lambda p: bearer(idp.unsigned_token({"alg": "HS256", "kid": "k"}, _claims(p)) + ".c2ln"),
    ),
    ("token_unknown_kid", lambda p: bearer(_signed(p, _claims(p), kid="forged"))),
    ("token_key_mismatch", lambda p: bearer(_signed(p, _claims(p), kid="ec-1"))),
    ("token_bad_signature", lambda p: bearer(_signed(p, _claims(p))[:-6] + "AAAAAA")),
    ("token_expired", lambda p: bearer(p.token("a", lifetime=-300))),
    ("token_not_yet_valid", lambda p: bearer(_signed(p, _claims(p, nbf=int(time.time()) + 600)))),
    ("token_wrong_audience", lambda p: bearer(p.token("a", audience="other-app"))),
    ("token_missing_claim", lambda p: bearer(_signed(p, {k: v for k, v in _claims(p).items() if k != "exp"}))),
    ("token_missing_claim", lambda p: bearer(_signed(p, {k: v for k, v in _claims(p).items() if k != "sub"}))),
    ("token_invalid", lambda p: bearer(_signed(p, _claims(p, iat="yesterday")))),
    ("token_invalid_claims", lambda p: bearer(_signed(p, _claims(p, sub="")))),
    ("token_invalid_claims", lambda p: bearer(_signed(p, _claims(p, groups=["a\nb"])))),
    ("token_invalid_claims", lambda p: bearer(_signed(p, _claims(p, sub="caf\u00e9")))),
]


@pytest.mark.parametrize(("reason", "headers"), CASES, ids=[f"{reason}-{i}" for i, (reason, _) in enumerate(CASES)])
async def test_every_token_reason(
    resolver: resolve.IdentityResolver, provider: idp.DevIdentityProvider, reason: str, headers: Any
) -> None:
    assert await outcome(resolver, headers(provider)) == reason


async def test_token_wrong_issuer(provider: idp.DevIdentityProvider, tmp_path: pathlib.Path) -> None:
    # The provider is chosen by issuer without a trailing slash; verification compares it exactly.
    (tmp_path / "config.yaml").write_text(CONFIG.format(issuer=provider.issuer, slash="/"))
    resolver = await resolver_for(tmp_path / "config.yaml")
    assert await outcome(resolver, bearer(provider.token("a"))) == "token_wrong_issuer"


async def test_keys_never_fetched_is_unavailable(tmp_path: pathlib.Path) -> None:
    (tmp_path / "config.yaml").write_text(
        CONFIG.format(issuer="http://127.0.0.1:9", slash="").replace(
            "audiences: [tollgate-demo]", "audiences: [tollgate-demo]\n    refresh: {timeoutSeconds: 0.5}"
        )
    )
    resolver = resolve.IdentityResolver()
    from authz import loader  # noqa: PLC0415

    resolver.update(loader.load(tmp_path / "config.yaml").providers)
    token = idp.unsigned_token({"alg": "RS256", "kid": "k"}, {"iss": "http://127.0.0.1:9", "sub": "a"}) + ".c2ln"
    assert await outcome(resolver, bearer(token)) == "identity_unavailable"


def test_claim_mapping_reads_mfa_from_amr_or_acr() -> None:
    mapping = providers.ClaimMapping(subject="preferred_username", groups="realm_access.roles")
    claims = {"preferred_username": "dana", "realm_access": {"roles": ["admins"]}, "acr": "mfa"}
    identity = jwt_identity.identity_from_claims(claims, mapping, provider="kc", issuer="https://sso")
    assert (identity.subject, identity.groups, identity.mfa, identity.provider) == ("dana", ("admins",), True, "kc")
    assert not jwt_identity.identity_from_claims({"sub": "x", "amr": ["pwd"]}, providers.ClaimMapping()).mfa
