"""Changing a provider's settings on reload invalidates what it verified before."""

from __future__ import annotations

import pathlib
import secrets
import time

import jwt

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


async def test_rotating_an_hmac_secret_invalidates_cached_tokens(tmp_path: pathlib.Path) -> None:
    old_secret = secrets.token_hex(32)
    (tmp_path / "secret.txt").write_text(old_secret)
    (tmp_path / "config.yaml").write_text(CONFIG)
    resolver = resolve.IdentityResolver()
    resolver.update(loader.load(tmp_path / "config.yaml").providers)
    now = int(time.time())
    token = jwt.encode(
        {"iss": "https://internal.example", "sub": "svc", "exp": now + 600}, old_secret, algorithm="HS256"
    )
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
