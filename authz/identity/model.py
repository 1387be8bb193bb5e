"""The verified identity of a caller, as plain data.

Produced by the identity stage (:mod:`authz.identity.resolve`) and read by the policy evaluator,
the response builder and the audit record. Nothing here has been trusted without verification:
an :class:`Identity` exists only after a token, certificate or key was checked.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

__all__ = [
    "ANONYMOUS",
    "Identity",
    "IdentityFailure",
    "check_identity_values",
    "claim_value",
    "claim_values",
    "plain_value_fits",
]


@dataclasses.dataclass(frozen=True, slots=True)
class Identity:
    """A caller. ``authenticated`` is False only for :data:`ANONYMOUS`."""

    authenticated: bool
    method: str  # "jwt" | "mtls" | "apiKey" | "none"
    subject: str = ""
    issuer: str = ""
    provider: str = ""
    email: str = ""
    groups: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    principal: str = ""  # mTLS peer principal (SPIFFE id or subject)
    key_id: str = ""  # API key id (never the key)
    mfa: bool = False
    claims: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # BLAKE2b of the bearer token (its cache key, first 128 bits): names one token, for the
    # token-replay detector; not part of who the caller is.
    token_hash: str = dataclasses.field(default="", compare=False)


ANONYMOUS = Identity(authenticated=False, method="none")


class IdentityFailure(Exception):
    """A credential was presented and did not verify; ``code`` is the deny reason.

    ``status`` is 401 for a bad credential and 503 when the provider's keys are unavailable.
    """

    def __init__(self, code: str, message: str, *, status: int = 401, provider: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.provider = provider
        # The subject a rejected token claims, unverified: only the detectors read it.
        self.claimed_subject = ""


# What the upstream is told (authz.response) is never cut short: a value that cannot be passed on
# whole and unambiguously is refused instead. Subjects and principals travel as plain header values,
# so they are printable ASCII; groups and roles travel as a structured-field list, which can carry
# any text but control characters.
MAX_IDENTITY_VALUE = 1024
MAX_IDENTITY_LIST = 256


def plain_value_fits(value: str) -> bool:
    """Whether ``value`` can travel as a plain header value, whole and read alike by every HTTP
    stack: 1 to 1,024 printable ASCII characters without surrounding spaces."""
    return 0 < len(value) <= MAX_IDENTITY_VALUE and value.isascii() and value.isprintable() and value.strip() == value


def check_identity_values(subject: str, groups: tuple[str, ...], roles: tuple[str, ...]) -> str:
    """What is wrong with these values as upstream identity headers ("" if nothing)."""
    if not plain_value_fits(subject):
        return f"the subject must be 1 to {MAX_IDENTITY_VALUE} printable ASCII characters"
    for kind, values in (("group", groups), ("role", roles)):
        if len(values) > MAX_IDENTITY_LIST:
            return f"more than {MAX_IDENTITY_LIST} {kind}s"
        for value in values:
            if not value or len(value) > MAX_IDENTITY_VALUE or not value.isprintable():
                return f"a {kind} must be 1 to {MAX_IDENTITY_VALUE} printable characters"
    return ""


def claim_value(claims: Mapping[str, Any], path: str) -> Any:
    """The raw value at a dotted claim path, or None when absent."""
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def claim_values(claims: Mapping[str, Any], path: str) -> tuple[str, ...]:
    """Look up a dotted claim path (``realm_access.roles``) and return its value(s) as strings.

    A list yields its scalar items; a space-separated ``scope`` string is not split (use a list).
    """
    value = claim_value(claims, path)
    if isinstance(value, list | tuple):
        return tuple(_scalar(v) for v in value if isinstance(v, str | int | float | bool))
    if isinstance(value, str | int | float | bool):
        return (_scalar(value),)
    return ()


def _scalar(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
