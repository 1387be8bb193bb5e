"""The IdentityProvider resource (``tollgate.dev/v1alpha1``): typed, validated settings per provider.

Called by :mod:`authz.loader`. Three types, each verified by its own module:

- ``jwt``    (:mod:`authz.identity.jwt`): OIDC / JWT bearer tokens, keys from JWKS or discovery.
- ``mtls``   (:mod:`authz.identity.mtls`): the client certificate Envoy verified.
- ``apiKey`` (:mod:`authz.identity.apikey`): hashed keys from a file.

Security defaults: only asymmetric algorithms unless an HMAC secret is configured; ``none`` can
never be configured.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Mapping
from importlib import resources
from typing import Any

import jsonschema

from authz.errors import ConfigError, ConfigErrors, Problems

__all__ = [
    "ApiKeyEntry",
    "ApiKeySettings",
    "ClaimMapping",
    "JwtSettings",
    "MtlsSettings",
    "ProviderSpec",
    "RefreshSettings",
    "SecretRef",
    "TokenSource",
    "parse_provider",
]

ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


@dataclasses.dataclass(frozen=True, slots=True)
class TokenSource:
    header: str = ""  # lower-case header name
    prefix: str = ""  # e.g. "Bearer "
    cookie: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class RefreshSettings:
    min_seconds: float = 60.0  # never refetch a healthy key set more often than this
    max_seconds: float = 3600.0  # refetch at least this often, whatever Cache-Control says
    stale_seconds: float = 86400.0  # keep using the last good keys this long while refresh fails
    unknown_kid_seconds: float = 30.0  # at most one refetch per interval for an unknown kid
    timeout_seconds: float = 5.0  # one JWKS or discovery fetch
    max_bytes: int = 256 * 1024  # a larger JWKS body is rejected


@dataclasses.dataclass(frozen=True, slots=True)
class ClaimMapping:
    """Which claims (dotted paths) name the caller, its e-mail, groups and roles."""

    subject: str = "sub"
    email: str = "email"
    groups: str = "groups"
    roles: str = "roles"


@dataclasses.dataclass(frozen=True, slots=True)
class SecretRef:
    """A key of a Secret in the provider's own namespace (``keysSecretRef``, ``hmacSecretRef``).

    Only the operator resolves these: it copies the value into the Secret it publishes and hands
    the data plane a document that names it as a file (:mod:`authz_operator.build`)."""

    name: str
    key: str


@dataclasses.dataclass(frozen=True, slots=True)
class JwtSettings:
    issuer: str
    audiences: tuple[str, ...]
    jwks_uri: str  # empty: discover from the issuer
    algorithms: tuple[str, ...]
    hmac_secret_file: str
    claims: ClaimMapping
    sources: tuple[TokenSource, ...]
    leeway_seconds: float
    refresh: RefreshSettings
    max_token_bytes: int = 8 * 1024
    hmac_secret: bytes = dataclasses.field(default=b"", repr=False)  # read by the loader
    hmac_secret_ref: SecretRef | None = None  # in a cluster: resolved by the operator into hmac_secret_file


@dataclasses.dataclass(frozen=True, slots=True)
class MtlsSettings:
    trust_domains: tuple[str, ...]  # SPIFFE trust domains accepted; empty: any principal Envoy verified


@dataclasses.dataclass(frozen=True, slots=True)
class ApiKeyEntry:
    """One line of an API keys file: the key's hash and who it stands for (never the key)."""

    key_id: str
    sha256: bytes = dataclasses.field(repr=False)
    subject: str
    groups: tuple[str, ...]
    roles: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class ApiKeySettings:
    header: str
    prefix: str
    keys_file: str  # "" when keys_secret_ref names the keys instead
    keys: tuple[ApiKeyEntry, ...] = ()  # read by the loader from keys_file
    keys_secret_ref: SecretRef | None = None  # in a cluster: resolved by the operator into keys_file


@dataclasses.dataclass(frozen=True, slots=True)
class ProviderSpec:
    name: str
    namespace: str
    type: str  # "jwt" | "mtls" | "apiKey"
    source: str
    jwt: JwtSettings | None = None
    mtls: MtlsSettings | None = None
    api_key: ApiKeySettings | None = None


@functools.cache
def _spec_validator() -> jsonschema.Draft202012Validator:
    text = resources.files("authz.identity").joinpath("identityprovider.schema.json").read_text()
    return jsonschema.Draft202012Validator(json.loads(text))


def parse_provider(document: Mapping[str, Any], *, source: str = "") -> ProviderSpec:
    """Validate an IdentityProvider document; raise :class:`ConfigError` naming the field.

    The checks below come first, with their own messages; the spec must then also satisfy
    ``identityprovider.schema.json``, the schema the CRD is generated from.
    """
    spec = _parse_provider(document, source)
    errors = sorted(_spec_validator().iter_errors(document["spec"]), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise ConfigErrors([ConfigError(error.message, field=_field(error)) for error in errors])
    return spec


def _field(error: jsonschema.ValidationError) -> str:
    out = "spec"
    for part in error.absolute_path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _parse_provider(document: Mapping[str, Any], source: str) -> ProviderSpec:
    metadata = document.get("metadata") or {}
    name = metadata.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"{name!r} is not a valid Kubernetes name", field="metadata.name")
    namespace = str(metadata.get("namespace", "default"))
    spec = document.get("spec")
    if not isinstance(spec, Mapping):
        raise ConfigError("spec is required and must be a mapping", field="spec")
    kind = spec.get("type")
    if kind == "jwt":
        return ProviderSpec(name, namespace, kind, source, jwt=_jwt(_section(spec, "jwt")))
    if kind == "mtls":
        section = _section(spec, "mtls", required=False)
        domains = _strings(section, "trustDomains", "spec.mtls.trustDomains")
        return ProviderSpec(name, namespace, kind, source, mtls=MtlsSettings(trust_domains=domains))
    if kind == "apiKey":
        section = _section(spec, "apiKey")
        keys_file, keys_ref = section.get("keysFile", ""), _secret_ref(section.get("keysSecretRef"))
        if not isinstance(keys_file, str) or bool(keys_file) == bool(keys_ref):
            raise ConfigError(
                "exactly one of keysFile and keysSecretRef is required (hashed keys)", field="spec.apiKey.keysFile"
            )
        header = str(section.get("header", "x-api-key")).lower()
        settings = ApiKeySettings(
            header=header, prefix=str(section.get("prefix", "")), keys_file=keys_file, keys_secret_ref=keys_ref
        )
        return ProviderSpec(name, namespace, kind, source, api_key=settings)
    raise ConfigError(f"type must be one of jwt, mtls, apiKey; got {kind!r}", field="spec.type")


def _section(spec: Mapping[str, Any], key: str, *, required: bool = True) -> Mapping[str, Any]:
    section = spec.get(key)
    if section is None and not required:
        return {}
    if not isinstance(section, Mapping):
        raise ConfigError(f"spec.{key} is required for type {key} and must be a mapping", field=f"spec.{key}")
    return section


def _strings(section: Mapping[str, Any], key: str, field: str) -> tuple[str, ...]:
    value = section.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError("must be a list of non-empty strings", field=field)
    return tuple(value)


_JWT_KEYS = {
    "issuer",
    "audiences",
    "jwksUri",
    "algorithms",
    "hmacSecretFile",
    "hmacSecretRef",
    "claims",
    "tokenSources",
    "leewaySeconds",
    "refresh",
}
_CLAIM_KEYS = {"subject", "email", "groups", "roles"}
_REFRESH_KEYS = {
    "minSeconds": "min_seconds",
    "maxSeconds": "max_seconds",
    "staleSeconds": "stale_seconds",
    "unknownKidSeconds": "unknown_kid_seconds",
    "timeoutSeconds": "timeout_seconds",
}


def _jwt(section: Mapping[str, Any]) -> JwtSettings:
    """The jwt section; every field is checked, and all errors are reported together."""
    problems = Problems()
    unknown = sorted(set(section) - _JWT_KEYS)
    for key in unknown:
        problems.errors.append(ConfigError(f"unknown field {key!r}", field=f"spec.jwt.{key}"))
    issuer = section.get("issuer")
    if not isinstance(issuer, str) or not issuer.startswith(("https://", "http://")):
        problems.errors.append(ConfigError("issuer must be an http(s) URL", field="spec.jwt.issuer"))
    audiences: tuple[str, ...] = ()
    with problems.check():
        audiences = _strings(section, "audiences", "spec.jwt.audiences")
    jwks_uri = section.get("jwksUri", "")
    if jwks_uri and (not isinstance(jwks_uri, str) or not jwks_uri.startswith(("https://", "http://"))):
        problems.errors.append(ConfigError("jwksUri must be an http(s) URL", field="spec.jwt.jwksUri"))
    hmac_secret_file = str(section.get("hmacSecretFile", ""))
    hmac_ref = None
    with problems.check():
        hmac_ref = _secret_ref(section.get("hmacSecretRef"))
        if hmac_ref and hmac_secret_file:
            raise ConfigError("name hmacSecretFile or hmacSecretRef, not both", field="spec.jwt.hmacSecretRef")
    algorithms: tuple[str, ...] = ASYMMETRIC_ALGORITHMS
    with problems.check():
        algorithms = _strings(section, "algorithms", "spec.jwt.algorithms") or ASYMMETRIC_ALGORITHMS
    for index, algorithm in enumerate(algorithms):
        with problems.check():
            _check_algorithm(algorithm, bool(hmac_secret_file or hmac_ref), f"spec.jwt.algorithms[{index}]")
    claims = section.get("claims", {})
    if not isinstance(claims, Mapping) or set(claims) - _CLAIM_KEYS:
        problems.errors.append(
            ConfigError(f"claims maps only {', '.join(sorted(_CLAIM_KEYS))}", field="spec.jwt.claims")
        )
        claims = {}
    sources = []
    for index, raw in enumerate(section.get("tokenSources", [{"header": "authorization", "prefix": "Bearer "}])):
        if not isinstance(raw, Mapping) or ("header" in raw) == ("cookie" in raw):
            problems.errors.append(
                ConfigError(
                    "a token source names exactly one of header or cookie", field=f"spec.jwt.tokenSources[{index}]"
                )
            )
            continue
        sources.append(
            TokenSource(
                header=str(raw.get("header", "")).lower(),
                prefix=str(raw.get("prefix", "")),
                cookie=str(raw.get("cookie", "")),
            )
        )
    refresh = RefreshSettings()
    with problems.check():
        refresh = _refresh(section.get("refresh", {}))
    leeway = section.get("leewaySeconds", 30)
    if not isinstance(leeway, int | float) or not 0 <= leeway <= 300:
        problems.errors.append(ConfigError("leewaySeconds must be between 0 and 300", field="spec.jwt.leewaySeconds"))
    problems.raise_any()
    assert isinstance(issuer, str)
    return JwtSettings(
        issuer=issuer,
        audiences=audiences,
        jwks_uri=jwks_uri,
        algorithms=tuple(algorithms),
        hmac_secret_file=hmac_secret_file,
        hmac_secret_ref=hmac_ref,
        claims=ClaimMapping(**{key: str(value) for key, value in claims.items()}),
        sources=tuple(sources),
        leeway_seconds=float(leeway),
        refresh=refresh,
    )


def _secret_ref(raw: Any) -> SecretRef | None:
    """A ``{name, key}`` Secret reference (its shape is checked by the schema)."""
    if not isinstance(raw, Mapping):
        return None
    return SecretRef(str(raw.get("name", "")), str(raw.get("key", "")))


def _check_algorithm(algorithm: str, has_secret: bool, field: str) -> None:
    if algorithm.lower() == "none":
        raise ConfigError("'none' is never accepted", field=field)
    if algorithm in HMAC_ALGORITHMS and not has_secret:
        raise ConfigError(f"{algorithm} needs hmacSecretFile or hmacSecretRef (a shared secret)", field=field)
    if algorithm not in ASYMMETRIC_ALGORITHMS + HMAC_ALGORITHMS:
        raise ConfigError(f"unsupported algorithm {algorithm!r}", field=field)


def _refresh(raw: Any) -> RefreshSettings:
    problems = Problems()
    values: dict[str, float] = {}
    for key, value in raw.items() if isinstance(raw, Mapping) else [("?", None)]:
        if key not in _REFRESH_KEYS or not isinstance(value, int | float) or value <= 0:
            problems.errors.append(
                ConfigError(
                    "refresh takes positive numbers: " + ", ".join(_REFRESH_KEYS), field=f"spec.jwt.refresh.{key}"
                )
            )
            continue
        values[_REFRESH_KEYS[key]] = float(value)
    problems.raise_any()
    refresh = RefreshSettings(**values)  # type: ignore[arg-type]
    if refresh.min_seconds > refresh.max_seconds:
        raise ConfigError("minSeconds must not exceed maxSeconds", field="spec.jwt.refresh.minSeconds")
    return refresh
