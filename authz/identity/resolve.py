"""The identity stage: find the credentials a request carries and verify them.

Called by :mod:`authz.decision` once per request with the providers in scope for the host.
Order: a bearer token / cookie (``jwt`` providers), then an API key (``apiKey``), then the client
certificate (``mtls``). The first credential that verifies names the caller; a credential that is
*presented but invalid* is a 401 (``IdentityFailure``) even on a public path, as with Istio's
RequestAuthentication: a client that sends a bad token learns so instead of silently acting as
anonymous. No credential at all gives :data:`~authz.identity.model.ANONYMOUS`.

The mTLS principal is attached to whichever identity wins, so rules can combine the workload
(``from.principals``) with the user (``from.subjects``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable

from authz import request as request_model
from authz.identity import apikey, jwt, mtls, providers
from authz.identity import model as identity_model

__all__ = ["IdentityResolver"]

_log = logging.getLogger(__name__)


class IdentityResolver:
    """Holds one verifier per configured provider; survives reloads, keeping key caches warm."""

    def __init__(self) -> None:
        self._jwt: dict[str, jwt.JwtVerifier] = {}
        self._api_keys: dict[str, apikey.ApiKeyVerifier] = {}
        self._mtls: dict[str, mtls.MtlsVerifier] = {}
        self._specs: dict[str, providers.ProviderSpec] = {}
        # The JWT verifiers for each scope (a host's provider set; None: all): hosts share few scopes.
        self._scoped: dict[frozenset[str] | None, list[jwt.JwtVerifier]] = {}
        self.token_cache = jwt.TokenCache()
        self._retired_lookups = (0, 0)  # hits and misses of token caches replaced since

    def cache_lookups(self) -> tuple[int, int]:
        """Token cache hits and misses since start (for the metrics: they never go down)."""
        hits, misses = self._retired_lookups
        return hits + self.token_cache.hits, misses + self.token_cache.misses

    def update(self, specs: Iterable[providers.ProviderSpec]) -> None:
        """Swap in a new provider set; verifiers whose spec did not change are kept as they are."""
        by_name = {spec.name: spec for spec in specs}
        jwt_verifiers: dict[str, jwt.JwtVerifier] = {}
        api_keys: dict[str, apikey.ApiKeyVerifier] = {}
        mtls_verifiers: dict[str, mtls.MtlsVerifier] = {}
        for name, spec in sorted(by_name.items()):
            unchanged = self._specs.get(name) == spec
            if spec.jwt is not None:
                jwt_verifiers[name] = (
                    self._jwt[name] if unchanged and name in self._jwt else jwt.JwtVerifier(name, spec.jwt)
                )
            elif spec.api_key is not None:
                api_keys[name] = apikey.ApiKeyVerifier(name, spec.api_key)
            elif spec.mtls is not None:
                mtls_verifiers[name] = mtls.MtlsVerifier(name, spec.mtls)
        retired = [v for n, v in self._jwt.items() if jwt_verifiers.get(n) is not v]
        if retired:
            # A provider's settings changed (say, a new HMAC secret, or another issuer): nothing it
            # verified before may be served from the cache.
            self._retired_lookups = self.cache_lookups()
            self.token_cache = jwt.TokenCache()
        self._jwt, self._api_keys, self._mtls, self._specs = jwt_verifiers, api_keys, mtls_verifiers, by_name
        self._scoped = {}
        for verifier in retired:
            verifier.close()

    def start(self) -> None:
        """Begin background key fetching for every JWT provider (never blocks)."""
        for verifier in self._jwt.values():
            verifier.start()

    async def close(self) -> None:
        for verifier in self._jwt.values():
            verifier.close()

    @property
    def jwt_verifiers(self) -> dict[str, jwt.JwtVerifier]:
        return self._jwt

    def resolve_now(
        self, request: request_model.HttpRequest, scope: frozenset[str] | None
    ) -> identity_model.Identity | None:
        """The caller's identity when it is known without waiting: the request carries no token,
        or one verified before (the cache). None means a token must be verified: :meth:`resolve`.

        The usual Check takes only this path, with no coroutine in between.
        """
        if not self._specs:
            return identity_model.ANONYMOUS  # no provider configured: nobody can be identified
        token_verifiers = self._scoped.get(scope) or self._token_verifiers(scope)
        if token_verifiers:
            token = jwt.presented_token(token_verifiers, request)
            if token is not None:
                identity = jwt.cached_identity(token, token_verifiers, self.token_cache)
                if identity is None:
                    return None
                if not request.source_principal:
                    return identity  # the usual case: nothing to add
                return self.complete(identity, request, scope)
        return self.complete(None, request, scope)

    async def resolve(
        self, request: request_model.HttpRequest, scope: frozenset[str] | None
    ) -> identity_model.Identity:
        """The caller's identity, verifying a token first if need be (which may wait for keys)."""
        known = self.resolve_now(request, scope)
        if known is not None:
            return known
        verifiers = self._token_verifiers(scope)
        token = jwt.presented_token(verifiers, request)
        assert token is not None  # resolve_now() answers None only for a token not in the cache
        identity = await jwt.verify_token(token, verifiers, self.token_cache)
        return self.complete(identity, request, scope)

    def _token_verifiers(self, scope: frozenset[str] | None) -> list[jwt.JwtVerifier]:
        verifiers = self._scoped.get(scope)
        if verifiers is None:
            verifiers = self._scoped[scope] = [v for n, v in self._jwt.items() if scope is None or n in scope]
        return verifiers

    def complete(
        self,
        identity: identity_model.Identity | None,
        request: request_model.HttpRequest,
        scope: frozenset[str] | None,
    ) -> identity_model.Identity:
        """The caller once its token (if any) is known: without one, try API keys, then the client
        certificate; attach the mTLS principal. (``tollgate policy explain`` calls it with assumed claims.)"""
        principal = request.source_principal
        if principal and not identity_model.plain_value_fits(principal):
            # It reaches the upstream whole (x-tollgate-principal, and the subject of an mtls
            # identity) or not at all; this is the one place a principal enters an identity.
            raise identity_model.IdentityFailure(
                "mtls_principal_invalid", "the client certificate's principal cannot be passed on"
            )
        if identity is None:
            for name, verifier in self._api_keys.items():
                if scope is None or name in scope:
                    identity = verifier.verify(request)
                    if identity is not None:
                        break
        if identity is None and principal:
            for name, mtls_verifier in self._mtls.items():
                if scope is None or name in scope:
                    identity = mtls_verifier.verify(request)
                    if identity is not None:
                        break
        if identity is None:
            return identity_model.ANONYMOUS
        if principal and not identity.principal:
            identity = dataclasses.replace(identity, principal=principal)
        return identity
