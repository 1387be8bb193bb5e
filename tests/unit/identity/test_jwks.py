"""JWKS key handling against a real identity provider over HTTP: the failure modes other
ext_authz servers are most often reported for (start-up with the provider down, refresh failures,
rotation, forged-kid fetch storms, Cache-Control)."""

from __future__ import annotations

import asyncio
import pathlib
import time
from typing import Any

import pytest

from authz.dev import harness, idp
from authz.identity import model, providers, resolve
from authz.request import HttpRequest


def _spec(issuer: str, *, jwks: bool = True, **refresh: float) -> providers.ProviderSpec:
    document: dict[str, Any] = {
        "metadata": {"name": "dev"},
        "spec": {
            "type": "jwt",
            "jwt": {
                "issuer": issuer,
                "audiences": ["tollgate-demo"],
                "refresh": {"minSeconds": 1, "unknownKidSeconds": 1, **refresh},
            },
        },
    }
    if jwks:
        document["spec"]["jwt"]["jwksUri"] = issuer + "/jwks.json"
    return providers.parse_provider(document)


def _request(token: str) -> HttpRequest:
    return HttpRequest(method="GET", host="app.test", path="/", headers={"authorization": f"Bearer {token}"})


async def _resolve(resolver: resolve.IdentityResolver, token: str) -> model.Identity | str:
    try:
        return await resolver.resolve(_request(token), None)
    except model.IdentityFailure as failure:
        return f"{failure.status} {failure.code}"


async def _eventually(resolver: resolve.IdentityResolver, token: str, expected: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    result: model.Identity | str = ""
    while time.monotonic() < deadline:
        result = await _resolve(resolver, token)
        outcome = result if isinstance(result, str) else f"ok {result.subject}"
        if outcome == expected:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"expected {expected!r}, last got {result!r}")


@pytest.fixture
async def provider(tmp_path: pathlib.Path) -> Any:
    server = idp.DevIdentityProvider(tmp_path / "idp").start()
    yield server
    server.stop()


async def test_provider_down_at_start_then_up(tmp_path: pathlib.Path) -> None:
    port = harness.free_port()
    issuer = f"http://127.0.0.1:{port}"
    resolver = resolve.IdentityResolver()
    resolver.update([_spec(issuer)])
    resolver.start()  # must not block or raise with nobody listening
    try:
        # Nothing listens on the port yet: connections are refused.
        token = idp.sign_token(idp.load_state(tmp_path / "idp", issuer), "alice")
        assert await _resolve(resolver, token) == "503 identity_unavailable"
        await asyncio.sleep(0.2)
        assert resolver.jwt_verifiers["dev"].keys.refresh_failures >= 1
        late = idp.DevIdentityProvider(tmp_path / "idp", port=port).start()
        try:
            await _eventually(resolver, token, "ok alice")
        finally:
            late.stop()
    finally:
        await resolver.close()


async def test_refresh_failure_serves_stale_keys_for_a_bounded_time(provider: idp.DevIdentityProvider) -> None:
    resolver = resolve.IdentityResolver()
    resolver.update([_spec(provider.issuer, staleSeconds=2)])
    resolver.start()
    try:
        token = provider.token("alice")
        await _eventually(resolver, token, "ok alice")
        keys = resolver.jwt_verifiers["dev"].keys
        for mode in ("garbage", "oversized", "error"):
            provider.mode = mode
            failures = keys.refresh_failures
            await keys.fetch_once()
            # ">": the background refresh may have failed against the same mode meanwhile
            assert keys.refresh_failures > failures and keys.last_error
            assert keys.keys, "the last good key set was dropped"
        assert "larger than" in keys.last_error or "503" in keys.last_error
        resolver.token_cache = type(resolver.token_cache)()  # verify with keys, not the cache
        assert not isinstance(await _resolve(resolver, token), str)  # stale keys still verify
        provider.stop()  # now really down
        await _eventually(resolver, provider.token("bob"), "503 identity_unavailable", timeout=6)
    finally:
        await resolver.close()


async def test_garbage_at_start_is_unavailable_not_a_crash(provider: idp.DevIdentityProvider) -> None:
    provider.mode = "garbage"
    resolver = resolve.IdentityResolver()
    resolver.update([_spec(provider.issuer)])
    resolver.start()
    try:
        await asyncio.sleep(0.3)
        assert await _resolve(resolver, provider.token("alice")) == "503 identity_unavailable"
        assert "not JSON" in resolver.jwt_verifiers["dev"].keys.last_error
        provider.mode = "ok"
        await _eventually(resolver, provider.token("alice"), "ok alice")
    finally:
        await resolver.close()


async def test_rotation_without_restart(provider: idp.DevIdentityProvider) -> None:
    resolver = resolve.IdentityResolver()
    resolver.update([_spec(provider.issuer, unknownKidSeconds=0.1)])
    resolver.start()
    try:
        old_token = provider.token("alice")
        await _eventually(resolver, old_token, "ok alice")
        provider.rotate(keep_old=True)
        await _eventually(resolver, provider.token("bob"), "ok bob")  # new kid → one refetch
        assert await _resolve(resolver, old_token) != "401 token_unknown_kid"
        provider.rotate(keep_old=False)
        keys = resolver.jwt_verifiers["dev"].keys
        await keys.fetch_once()
        # The old key is gone; the token verified (and cached) under it must not be honoured.
        assert await _resolve(resolver, old_token) == "401 token_unknown_kid"
    finally:
        await resolver.close()


async def test_forged_kids_cannot_cause_a_fetch_storm(provider: idp.DevIdentityProvider) -> None:
    resolver = resolve.IdentityResolver()
    resolver.update([_spec(provider.issuer, unknownKidSeconds=30)])
    resolver.start()
    try:
        await _eventually(resolver, provider.token("alice"), "ok alice")
        before = provider.requests
        forged = [provider.token("mallory", headers={"kid": f"forged-{i}"}) for i in range(200)]
        results = await asyncio.gather(*(_resolve(resolver, token) for token in forged))
        assert set(results) == {"401 token_unknown_kid"}
        assert provider.requests - before <= 1
    finally:
        await resolver.close()


async def test_cache_control_is_clamped(provider: idp.DevIdentityProvider) -> None:
    spec = _spec(provider.issuer, minSeconds=10, maxSeconds=100)
    resolver = resolve.IdentityResolver()
    resolver.update([spec])
    keys = resolver.jwt_verifiers["dev"].keys
    provider.max_age = 3
    await keys.fetch_once()
    assert 9 < keys.next_refresh_in() <= 10
    provider.max_age = 50
    await keys.fetch_once()
    assert 49 < keys.next_refresh_in() <= 50
    provider.max_age = 100_000
    await keys.fetch_once()
    assert 99 < keys.next_refresh_in() <= 100


async def test_discovery_and_issuer_mismatch(provider: idp.DevIdentityProvider) -> None:
    resolver = resolve.IdentityResolver()
    resolver.update([_spec(provider.issuer, jwks=False)])
    keys = resolver.jwt_verifiers["dev"].keys
    await keys.fetch_once()
    assert keys.keys and keys.last_error == ""
    other = resolve.IdentityResolver()
    other.update([_spec(provider.issuer, jwks=False)])
    provider.discovery_issuer = "https://impostor.example"
    await other.jwt_verifiers["dev"].keys.fetch_once()
    assert "different issuer" in other.jwt_verifiers["dev"].keys.last_error
    assert not other.jwt_verifiers["dev"].keys.keys


async def test_verified_tokens_are_cached_until_expiry(provider: idp.DevIdentityProvider) -> None:
    resolver = resolve.IdentityResolver()
    resolver.update([_spec(provider.issuer)])
    await resolver.jwt_verifiers["dev"].keys.fetch_once()
    token = provider.token("alice", lifetime=2)
    first = await _resolve(resolver, token)
    assert len(resolver.token_cache) == 1
    assert await _resolve(resolver, token) is first  # served from the cache
    await asyncio.sleep(2.1)
    # Expired: not served from the cache; verification now fails on exp (leeway 30 s still allows it,
    # so the cache entry is simply replaced by a fresh verification).
    again = await _resolve(resolver, token)
    assert again is not first
