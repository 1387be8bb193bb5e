"""In-process identity tests: the real verifiers, keys over real HTTP from the development identity
provider, and no Envoy. Each deny reason of authz.identity is reached here by its own test."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator, Mapping

import pytest

from authz import check_request, loader
from authz.dev import checks, idp
from authz.identity import model, resolve


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[idp.DevIdentityProvider]:
    started = idp.DevIdentityProvider(tmp_path_factory.mktemp("idp")).start()
    yield started
    started.stop()


async def resolver_for(config: pathlib.Path) -> resolve.IdentityResolver:
    """A resolver for the providers in ``config``, with every JWT provider's keys fetched."""
    resolver = resolve.IdentityResolver()
    resolver.update(loader.load(config).providers)
    for verifier in resolver.jwt_verifiers.values():
        if verifier.uses_jwks:
            await verifier.keys.fetch_once()
    return resolver


async def outcome(
    resolver: resolve.IdentityResolver, headers: Mapping[str, str] | None = None, *, principal: str = ""
) -> model.Identity | str:
    """The identity the request's credentials verify to, or the deny reason."""
    request = check_request.from_check_request(
        checks.check_request(host="app.test", headers=dict(headers or {}), principal=principal)
    )
    try:
        return await resolver.resolve(request, None)
    except model.IdentityFailure as failure:
        return failure.code
