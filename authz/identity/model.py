"""The verified identity of a caller, as plain data.

Produced by the identity stage (:mod:`authz.identity.resolve`) and read by the policy evaluator,
the response builder and the audit record. Nothing here has been trusted without verification:
an :class:`Identity` exists only after a token, certificate or key was checked.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

__all__ = ["ANONYMOUS", "Identity", "IdentityFailure", "claim_values"]


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


def claim_values(claims: Mapping[str, Any], path: str) -> tuple[str, ...]:
    """Look up a dotted claim path (``realm_access.roles``) and return its value(s) as strings.

    A list yields its scalar items; a space-separated ``scope`` string is not split (use a list).
    """
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return ()
        value = value[part]
    if isinstance(value, list | tuple):
        return tuple(_scalar(v) for v in value if isinstance(v, str | int | float | bool))
    if isinstance(value, str | int | float | bool):
        return (_scalar(value),)
    return ()


def _scalar(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
