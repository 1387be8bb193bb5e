"""Changing a provider's settings on reload invalidates what it verified before."""

from __future__ import annotations

import pathlib
import secrets
import time

import jwt
import pytest

from authz import loader
from authz.identity import model, resolve
from authz.request import HttpRequest

CONFIG = """
apiVersion: tollgate.dev/v1alpha1
kind: IdentityProvider
metadata: {name: internal}
spec:
  type: jwt
  jwt: {issuer: "https://internal.example", algorithms: [HS256], hmacSecretFile: secret.txt}
"""


def _configured(directory: pathlib.Path, secret: str) -> tuple[resolve.IdentityResolver, str]:
    """A resolver for CONFIG with ``secret``, and a token it signed for "svc"."""
    (directory / "secret.txt").write_text(secret)
    (directory / "config.yaml").write_text(CONFIG)
    resolver = resolve.IdentityResolver()
    resolver.update(loader.load(directory / "config.yaml").providers)
    claims = {"iss": "https://internal.example", "sub": "svc", "exp": int(time.time()) + 600}
    return resolver, jwt.encode(claims, secret, algorithm="HS256")


async def test_rotating_an_hmac_secret_invalidates_cached_tokens(tmp_path: pathlib.Path) -> None:
    resolver, token = _configured(tmp_path, secrets.token_hex(32))
    request = HttpRequest(method="GET", host="a", path="/", headers={"authorization": f"Bearer {token}"})
    assert (await resolver.resolve(request, None)).subject == "svc"
    assert (await resolver.resolve(request, None)).subject == "svc"  # now from the cache

    (tmp_path / "secret.txt").write_text(secrets.token_hex(32))  # the secret is rotated
    resolver.update(loader.load(tmp_path / "config.yaml").providers)
    try:
        await resolver.resolve(request, None)
    except model.IdentityFailure as failure:
        assert failure.code == "token_bad_signature"
    else:
        raise AssertionError("a token signed with the old secret was still accepted")


async def test_only_a_token_never_verified_needs_the_awaited_path(tmp_path: pathlib.Path) -> None:
    # resolve_now() answers without waiting when it can (no token, or a cached one) and returns
    # None only when a token must be verified first; decide() relies on exactly that.
    resolver, token = _configured(tmp_path, secrets.token_hex(32))
    request = HttpRequest(
        method="GET",
        host="a",
        path="/",
        headers={"authorization": f"Bearer {token}"},
        source_principal="spiffe://cluster.local/ns/a/sa/b",
    )
    assert resolver.resolve_now(HttpRequest(method="GET", host="a", path="/"), None) is model.ANONYMOUS
    assert resolver.resolve_now(request, None) is None  # not verified yet
    verified = await resolver.resolve(request, None)
    assert (verified.subject, verified.principal) == ("svc", "spiffe://cluster.local/ns/a/sa/b")
    assert resolver.resolve_now(request, None) == verified  # from the cache, principal attached
    forged = HttpRequest(method="GET", host="a", path="/", headers={"authorization": f"Bearer {token}x"})
    assert resolver.resolve_now(forged, None) is None  # another token: verified (and refused) first
    with pytest.raises(model.IdentityFailure) as refused:
        await resolver.resolve(forged, None)
    assert refused.value.code == "token_bad_signature"


async def test_the_bearer_scheme_is_case_insensitive_and_other_schemes_carry_no_token(tmp_path: pathlib.Path) -> None:
    resolver, token = _configured(tmp_path, secrets.token_hex(32))

    def sent(authorization: str) -> HttpRequest:
        return HttpRequest(method="GET", host="a", path="/", headers={"authorization": authorization})

    for value in (f"Bearer {token}", f"bearer {token}", f"BEARER  {token} "):
        assert (await resolver.resolve(sent(value), None)).subject == "svc", value
    for value in (f"Basic {token}", "Bearer ", "Bearer", ""):
        assert resolver.resolve_now(sent(value), None) is model.ANONYMOUS, value
