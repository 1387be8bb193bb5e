"""JSON Web Key Sets: fetched in the background, refreshed, rate-limited, served stale on error.

Owned by one :class:`~authz.identity.jwt.JwtVerifier` per provider. The rules, each one a failure
mode reported against other ext_authz servers:

- Start never blocks and never crashes on an unreachable provider. Until the first key set
  arrives, requests that need it get ``identity_unavailable`` (503-class).
- Refresh honours ``Cache-Control: max-age`` clamped to [min_seconds, max_seconds].
- An unknown ``kid`` triggers at most one refetch per ``unknown_kid_seconds``; concurrent callers
  share the one fetch, so forged kids cannot cause a fetch storm.
- A failed refresh (down, garbage, oversized) keeps the last good set for ``stale_seconds``; each
  failure is logged and counted.
- OIDC discovery (``/.well-known/openid-configuration``) when no ``jwksUri`` is configured; the
  discovered ``issuer`` must equal the configured one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

import jwt

from authz.identity import model, providers

__all__ = ["KeySet"]

_log = logging.getLogger(__name__)
_MAX_AGE = re.compile(r"max-age\s*=\s*(\d+)")


class FetchError(Exception):
    pass


class KeySet:
    """The current keys of one provider, keyed by ``kid``."""

    def __init__(self, provider: str, issuer: str, jwks_uri: str, refresh: providers.RefreshSettings) -> None:
        self.provider = provider
        self.issuer = issuer.rstrip("/")
        self.refresh = refresh
        self.keys: dict[str, jwt.PyJWK] = {}
        self.generation = 0  # bumped whenever the set of keys changes: invalidates cached tokens
        self.fetched_at: float | None = None  # monotonic time of the last successful fetch
        self.trusted_until = -math.inf  # monotonic time after which these keys are too stale to use
        self.refresh_failures = 0
        self.refreshes = 0  # successful fetches (with refresh_failures: a metric)
        self.last_error = ""
        self._jwks_uri = jwks_uri
        self._raw_keys = ""
        self._next_refresh = 0.0
        self._last_unknown_kid_fetch = -float("inf")
        self._inflight: asyncio.Task[None] | None = None
        self._loop_task: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(self._refresh_loop(), name=f"jwks-{self.provider}")

    def close(self) -> None:
        for task in (self._loop_task, self._inflight):
            if task is not None:
                task.cancel()
        self._loop_task = None

    async def _refresh_loop(self) -> None:
        backoff = 1.0
        while True:
            await self.fetch_once()
            if self.last_error:
                # Retry sooner than a normal refresh while we have no keys or they are going stale.
                delay = min(backoff, self.refresh.min_seconds)
                backoff = min(backoff * 2, self.refresh.min_seconds)
            else:
                backoff = 1.0
                delay = max(self._next_refresh - time.monotonic(), self.refresh.min_seconds)
            await asyncio.sleep(delay)

    def next_refresh_in(self) -> float:
        """Seconds until the next scheduled refresh of a healthy key set."""
        return self._next_refresh - time.monotonic()

    # -- lookup ----------------------------------------------------------------------------
    def usable(self) -> bool:
        return time.monotonic() <= self.trusted_until

    async def key_for(self, kid: str | None) -> jwt.PyJWK:
        """The key for ``kid``; raise IdentityFailure (503 when keys are unavailable, 401 otherwise)."""
        if not self.usable():
            if self.fetched_at is None:
                await self._shared_fetch(wait=0.0)
            if not self.usable():
                raise model.IdentityFailure(
                    "identity_unavailable",
                    "the identity provider's keys are not available",
                    status=503,
                    provider=self.provider,
                )
        key = self._lookup(kid)
        if key is not None:
            return key
        now = time.monotonic()
        if now - self._last_unknown_kid_fetch >= self.refresh.unknown_kid_seconds:
            self._last_unknown_kid_fetch = now
            await self._shared_fetch(wait=self.refresh.timeout_seconds)
            key = self._lookup(kid)
            if key is not None:
                return key
        raise model.IdentityFailure(
            "token_unknown_kid", "the token's key id is not in the provider's key set", provider=self.provider
        )

    def _lookup(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is not None:
            return self.keys.get(kid)
        # A token without kid is accepted only when the choice of key is unambiguous.
        return next(iter(self.keys.values())) if len(self.keys) == 1 else None

    async def _shared_fetch(self, *, wait: float) -> None:
        """Start (or join) the one in-flight fetch; wait at most ``wait`` seconds for it."""
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.get_running_loop().create_task(self.fetch_once())
        if wait > 0:
            try:
                await asyncio.wait_for(asyncio.shield(self._inflight), timeout=wait)
            except TimeoutError:
                pass  # still fetching: answer with what we have
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # our caller gave up: never swallow that
                # otherwise the fetch itself was cancelled (provider closed): carry on

    # -- fetching --------------------------------------------------------------------------
    async def fetch_once(self) -> None:
        try:
            max_age = await asyncio.to_thread(self._fetch_blocking)
        except FetchError as error:
            self.refresh_failures += 1
            self.last_error = str(error)
            stale = " (serving the last good keys)" if self.usable() else ""
            _log.warning("jwks refresh failed for provider %s: %s%s", self.provider, error, stale)
            return
        self.last_error = ""
        self.refreshes += 1
        clamped = min(
            max(max_age if max_age is not None else self.refresh.max_seconds, self.refresh.min_seconds),
            self.refresh.max_seconds,
        )
        self._next_refresh = time.monotonic() + clamped

    def _fetch_blocking(self) -> int | None:
        if not self._jwks_uri:
            document, _ = self._get_json(self.issuer + "/.well-known/openid-configuration")
            if str(document.get("issuer", "")).rstrip("/") != self.issuer:
                raise FetchError("discovery document names a different issuer")
            uri = document.get("jwks_uri")
            if not isinstance(uri, str) or not uri.startswith(("https://", "http://")):
                raise FetchError("discovery document has no usable jwks_uri")
            self._jwks_uri = uri
        document, max_age = self._get_json(self._jwks_uri)
        try:
            key_set = jwt.PyJWKSet.from_dict(dict(document))
        except (jwt.PyJWKSetError, jwt.InvalidKeyError, KeyError, TypeError, ValueError) as error:
            raise FetchError(f"key set is not a usable JWKS: {error}") from error
        keys = {key.key_id: key for key in key_set.keys if key.key_id}
        if not keys and len(key_set.keys) == 1:
            keys = {"": key_set.keys[0]}
        if not keys:
            raise FetchError("key set holds no keys with a kid")
        raw = json.dumps(document.get("keys"), sort_keys=True)
        if raw != self._raw_keys:
            self.generation += 1
            self._raw_keys = raw
        self.keys = keys
        self.fetched_at = time.monotonic()
        self.trusted_until = self.fetched_at + self.refresh.stale_seconds
        return max_age

    def _get_json(self, url: str) -> tuple[Mapping[str, Any], int | None]:
        limit = self.refresh.max_bytes
        try:
            request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310 - http(s) only, checked at load
            with urllib.request.urlopen(request, timeout=self.refresh.timeout_seconds) as response:  # noqa: S310
                body = response.read(limit + 1)
                cache_control = response.headers.get("Cache-Control", "")
        except (urllib.error.URLError, OSError, ValueError) as error:
            raise FetchError(f"GET {url}: {error}") from error
        if len(body) > limit:
            raise FetchError(f"GET {url}: body larger than {limit} bytes")
        try:
            document = json.loads(body)
        except (ValueError, UnicodeDecodeError) as error:
            raise FetchError(f"GET {url}: not JSON") from error
        if not isinstance(document, dict):
            raise FetchError(f"GET {url}: not a JSON object")
        match = _MAX_AGE.search(cache_control)
        return document, int(match.group(1)) if match else None
