"""JWT / OIDC bearer tokens: find the token, verify it with PyJWT, map its claims to an Identity.

Called by :mod:`authz.identity.resolve`. Verification order, each step with its own deny reason
(all 401 unless the provider's keys are unavailable, which is 503):

    token_ambiguous          two sources (e.g. Authorization and a cookie) carry different tokens
    token_too_large          longer than the provider's limit (8 KiB)
    token_malformed          not three base64url parts of JSON (nested at most 32 deep)
    token_unknown_issuer     no provider in scope has the token's ``iss``
    token_unsupported_crit   a ``crit`` header names extensions we do not implement
    token_algorithm_not_allowed  ``none``, an HMAC alg without a configured secret, or not listed
    token_unknown_kid        the key id is not in the key set (after one rate-limited refetch)
    token_key_mismatch       the key's type does not fit the algorithm (e.g. RSA key, HS256)
    token_bad_signature, token_expired, token_not_yet_valid, token_wrong_issuer,
    token_wrong_audience, token_missing_claim, token_invalid
    token_invalid_claims     the subject is empty or not a string, or a subject, group or role
                             cannot be passed to the upstream as it is (see model.check_identity_values)

Verified tokens are cached (bounded LRU, keyed by BLAKE2b-256 of the token) until the earlier of
their ``exp`` and a change of the provider's key set — including the key set going past its
stale-while-error bound, after which nothing verified with it is trusted.
"""

from __future__ import annotations

import base64
import binascii
import collections
import dataclasses
import hashlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jwt as pyjwt
import orjson
from jwt import exceptions as pyjwt_errors

from authz import request as request_model
from authz.identity import jwks, model, providers

__all__ = [
    "JwtVerifier",
    "TokenCache",
    "cached_identity",
    "identity_from_claims",
    "presented_token",
    "verify_token",
]

_KEY_TYPES = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP", "HS": "oct"}
_MFA_AMR = frozenset({"mfa"})
_MFA_ACR = frozenset({"mfa", "http://schemas.openid.net/pape/policies/2007/06/multi-factor"})
_PYJWT_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (pyjwt.ExpiredSignatureError, "token_expired"),
    (pyjwt.ImmatureSignatureError, "token_not_yet_valid"),
    (pyjwt.InvalidAudienceError, "token_wrong_audience"),
    (pyjwt.InvalidIssuerError, "token_wrong_issuer"),
    (pyjwt.InvalidSignatureError, "token_bad_signature"),
    (pyjwt.MissingRequiredClaimError, "token_missing_claim"),
    (pyjwt_errors.InvalidSubjectError, "token_invalid_claims"),  # PyJWT checks that `sub` is a string
    (pyjwt.DecodeError, "token_malformed"),
)


class TokenCache:
    """Bounded LRU of verified tokens: BLAKE2b-256(token) → (identity, exp, provider, key generation)."""

    def __init__(self, size: int = 10_000) -> None:
        self._size = size
        self.hits = self.misses = 0  # lookups, for the metrics
        self._entries: collections.OrderedDict[bytes, tuple[model.Identity, float, str, int]] = (
            collections.OrderedDict()
        )

    def get(self, digest: bytes, verifiers: Sequence[JwtVerifier]) -> model.Identity | None:
        """The cached identity, if its provider is among ``verifiers`` and its key set unchanged."""
        entry = self._entries.get(digest)
        if entry is None:
            self.misses += 1
            return None
        identity, expires, provider, generation = entry
        for verifier in verifiers:
            if verifier.name == provider:
                break
        else:
            self.misses += 1
            return None  # verified by a provider out of scope here: verify again (and fail)
        if expires <= time.time() or verifier.generation() != generation:
            del self._entries[digest]
            self.misses += 1
            return None
        self._entries.move_to_end(digest)
        self.hits += 1
        return identity

    def put(self, digest: bytes, identity: model.Identity, expires: float, provider: str, generation: int) -> None:
        self._entries[digest] = (identity, expires, provider, generation)
        if len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


class JwtVerifier:
    """One ``jwt`` IdentityProvider: its settings, its key set, and verification."""

    def __init__(self, name: str, settings: providers.JwtSettings) -> None:
        self.name = name
        self.settings = settings
        self.issuer = settings.issuer.rstrip("/")
        self.keys = jwks.KeySet(name, settings.issuer, settings.jwks_uri, settings.refresh)
        self._hmac_secret = settings.hmac_secret
        self.uses_jwks = any(a not in providers.HMAC_ALGORITHMS for a in settings.algorithms)
        self._sources = tuple((s.header, s.prefix, s.prefix.lower(), s.cookie) for s in settings.sources)
        # The usual configuration, one header (Authorization: Bearer): looked up without the loop.
        only = self._sources[0] if len(self._sources) == 1 else None
        self.single_header = (only[0], only[1], only[2]) if only and only[0] else None

    def generation(self) -> int:
        """Identifies the key set cached verifications were made with; -1 once it is past trusting."""
        keys = self.keys
        if self.uses_jwks and time.monotonic() > keys.trusted_until:  # keys.usable(), inlined: per Check
            return -1
        return keys.generation

    def start(self) -> None:
        if self.uses_jwks:
            self.keys.start()

    def close(self) -> None:
        self.keys.close()

    def tokens(self, request: request_model.HttpRequest) -> list[str]:
        """Every non-empty token the request carries in this provider's sources, in source order."""
        found = []
        headers = request.headers
        for header, prefix, prefix_lower, cookie in self._sources:
            if header:
                value = _from_header(headers.get(header), prefix, prefix_lower)
                if value:
                    found.append(value)
            elif cookie and "cookie" in headers:
                found.extend(_cookie_values(headers["cookie"], cookie))
        return found

    async def verify(self, token: str, header: Mapping[str, Any]) -> tuple[model.Identity, float]:
        """Verify a token whose (unverified) header was already parsed; return identity and exp."""
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self.settings.algorithms:
            raise model.IdentityFailure(
                "token_algorithm_not_allowed", f"algorithm {algorithm!r} is not allowed", provider=self.name
            )
        if algorithm in providers.HMAC_ALGORITHMS:
            key: Any = self._hmac_secret
        else:
            kid = header.get("kid")
            jwk = await self.keys.key_for(kid if isinstance(kid, str) else None)
            if jwk.key_type != _KEY_TYPES.get(algorithm[:2]):
                raise model.IdentityFailure(
                    "token_key_mismatch", "the key's type does not fit the token's algorithm", provider=self.name
                )
            key = jwk.key
        settings = self.settings
        try:
            claims = pyjwt.decode(
                token,
                key=key,
                algorithms=[algorithm],
                audience=list(settings.audiences) or None,
                issuer=settings.issuer,
                leeway=settings.leeway_seconds,
                options={"require": ["exp", "iss"], "verify_aud": bool(settings.audiences)},
            )
        except pyjwt.PyJWTError as error:
            for kind, code in _PYJWT_REASONS:
                if isinstance(error, kind):
                    raise model.IdentityFailure(code, str(error), provider=self.name) from error
            raise model.IdentityFailure("token_invalid", str(error), provider=self.name) from error
        return self._identity(claims), float(claims["exp"])

    def _identity(self, claims: Mapping[str, Any]) -> model.Identity:
        return identity_from_claims(claims, self.settings.claims, provider=self.name, issuer=self.issuer)


def identity_from_claims(
    claims: Mapping[str, Any], mapping: providers.ClaimMapping, *, provider: str = "", issuer: str = ""
) -> model.Identity:
    """The caller that verified ``claims`` stand for, read through a provider's claim mapping.

    Used for every verified token, and by ``tollgate policy explain`` for the claims it is given,
    so both read MFA (``amr`` or ``acr``), groups and roles alike. Raises
    :class:`~authz.identity.model.IdentityFailure` (``token_missing_claim``, ``token_invalid_claims``).
    """
    subject = model.claim_value(claims, mapping.subject)
    if subject is None:
        raise model.IdentityFailure("token_missing_claim", f"token has no {mapping.subject!r} claim", provider=provider)
    if not isinstance(subject, str):
        raise model.IdentityFailure(
            "token_invalid_claims", f"the {mapping.subject!r} claim is not a string", provider=provider
        )
    amr = set(model.claim_values(claims, "amr"))
    acr = set(model.claim_values(claims, "acr"))
    email = model.claim_values(claims, mapping.email)
    groups = model.claim_values(claims, mapping.groups)
    roles = model.claim_values(claims, mapping.roles)
    # An empty subject would pass `authenticated: true` and reach the upstream as nobody.
    problem = model.check_identity_values(subject, groups, roles)
    if problem:
        raise model.IdentityFailure("token_invalid_claims", problem, provider=provider)
    return model.Identity(
        authenticated=True,
        method="jwt",
        subject=subject,
        issuer=issuer,
        provider=provider,
        email=email[0] if email else "",
        groups=groups,
        roles=roles,
        mfa=bool(amr & _MFA_AMR or acr & _MFA_ACR),
        claims=claims,
    )


# Deeper JSON than this is no token anyone issues. orjson parses without Python recursion (and
# stops itself at 1,024 levels); the depth is then checked before PyJWT's json.loads sees it.
_MAX_JSON_DEPTH = 32


def _segment_json(segment: str) -> Any:
    padded = segment + "=" * (-len(segment) % 4)
    value = orjson.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    if _depth(value) > _MAX_JSON_DEPTH:
        raise ValueError(f"JSON nested deeper than {_MAX_JSON_DEPTH}")
    return value


def _depth(value: Any) -> int:
    """How deep arrays and objects nest in ``value``, walked without recursion."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > _MAX_JSON_DEPTH:
            return deepest
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _cookie_values(header: str, name: str) -> list[str]:
    """Every non-empty value of cookie ``name`` in a Cookie header, in one linear pass.

    RFC 6265 §5.4: pairs separated by ``;``, name and value split at the first ``=``, whitespace
    trimmed, a value in double quotes unquoted. The standard library's ``SimpleCookie`` is not used:
    some inputs make it quadratic (one 54 KB header held the event loop for seconds).
    """
    found = []
    for pair in header.split(";"):
        key, equals, value = pair.partition("=")
        if equals and key.strip() == name:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            if value:
                found.append(value)
    return found


def _unverified_parts(token: str) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    """Header and payload, parsed only to choose the provider and key; nothing here is trusted."""
    parts = token.split(".")
    if len(parts) != 3:
        raise model.IdentityFailure("token_malformed", "a JWT has three dot-separated parts")
    try:
        header, payload = _segment_json(parts[0]), _segment_json(parts[1])
    except (ValueError, UnicodeError, binascii.Error) as error:  # orjson.JSONDecodeError is a ValueError
        raise model.IdentityFailure("token_malformed", "token is not base64url-encoded JSON") from error
    if not isinstance(header, dict) or not isinstance(payload, dict):
        raise model.IdentityFailure("token_malformed", "token header and payload must be JSON objects")
    return header, payload


def _from_header(value: str | None, prefix: str, prefix_lower: str) -> str:
    """The token in one header's value ("" if none): after the prefix, if one is configured."""
    if not value:
        return ""
    if prefix:
        # The scheme is case-insensitive (RFC 9110 §11.1): "Bearer", "bearer", "BEARER".
        if not value.startswith(prefix) and value[: len(prefix)].lower() != prefix_lower:
            return ""
        value = value[len(prefix) :]
    if "," in value:
        # Envoy joined repeated headers (no JWT holds a comma): the upstream may read either copy.
        raise model.IdentityFailure("token_ambiguous", "the request carries more than one token header")
    return value.strip()


def presented_token(verifiers: Sequence[JwtVerifier], request: request_model.HttpRequest) -> str | None:
    """The token the request carries for these providers; None when it carries none."""
    if len(verifiers) == 1:
        single = verifiers[0].single_header
        if single is not None:
            return _from_header(request.headers.get(single[0]), single[1], single[2]) or None
        found = verifiers[0].tokens(request)
    else:
        found = [t for v in verifiers for t in v.tokens(request)]
    if not found:
        return None
    token = found[0]
    if len(found) > 1 and any(other != token for other in found):
        raise model.IdentityFailure("token_ambiguous", "the request carries more than one different token")
    return token


def cached_identity(token: str, verifiers: Sequence[JwtVerifier], cache: TokenCache) -> model.Identity | None:
    """The identity of a token verified before (and still valid), without waiting; else None."""
    return cache.get(_digest(token), verifiers)


def _digest(token: str) -> bytes:
    """The cache key: BLAKE2b-256, a cryptographic hash like SHA-256 but built into Python. Measured
    inside the server under load, OpenSSL's SHA-256 took ~6 µs per token (its code and contexts
    are cold between requests), BLAKE2b ~3 µs; in a tight loop the two are alike (~1 µs)."""
    return hashlib.blake2b(token.encode(), digest_size=32).digest()


async def verify_token(token: str, verifiers: Sequence[JwtVerifier], cache: TokenCache) -> model.Identity:
    """Verify a token that is not in the cache (issuer, key, signature, claims), cache and return
    its identity; a failure raises IdentityFailure with its reason."""
    limit = min(v.settings.max_token_bytes for v in verifiers)
    if len(token) > limit:
        raise model.IdentityFailure("token_too_large", f"token is larger than {limit} bytes")
    header, payload = _unverified_parts(token)
    try:
        issuer = str(payload.get("iss", "")).rstrip("/")
        verifier = next((v for v in verifiers if v.issuer == issuer), None)
        if verifier is None:
            raise model.IdentityFailure("token_unknown_issuer", "no identity provider in scope issues this token")
        if "crit" in header:
            # RFC 7515 §4.1.11: a recipient that does not understand a critical extension must reject.
            raise model.IdentityFailure(
                "token_unsupported_crit", "token requires unsupported extensions (crit)", provider=verifier.name
            )
        identity, expires = await verifier.verify(token, header)
    except model.IdentityFailure as failure:
        claimed = payload.get("sub")
        if isinstance(claimed, str):  # for the detectors (authz.detect), never for a decision
            failure.claimed_subject = claimed[: model.MAX_IDENTITY_VALUE]
        raise
    digest = _digest(token)
    # The token's hash travels with its identity, for the token-replay detector (authz.detect).
    identity = dataclasses.replace(identity, token_hash=digest[:16].hex())
    cache.put(digest, identity, expires, verifier.name, verifier.generation())
    return identity
