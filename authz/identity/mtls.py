"""mTLS identity: the client certificate Envoy already verified.

Envoy terminates TLS, verifies the chain against its own trust store, and sends the peer's
principal (URI SAN, e.g. a SPIFFE id, or else the subject) as ``source.principal``. We never parse
or trust a certificate header the client could set: only what Envoy's TLS stack put in the
CheckRequest attributes.
"""

from __future__ import annotations

from authz import request as request_model
from authz.identity import model, providers

__all__ = ["MtlsVerifier", "spiffe_trust_domain"]


def spiffe_trust_domain(principal: str) -> str:
    """``spiffe://cluster.local/ns/shop/sa/web`` → ``cluster.local``; empty for non-SPIFFE ids."""
    if not principal.startswith("spiffe://"):
        return ""
    return principal[len("spiffe://") :].split("/", 1)[0].lower()


class MtlsVerifier:
    def __init__(self, name: str, settings: providers.MtlsSettings) -> None:
        self.name = name
        self._domains = frozenset(d.lower() for d in settings.trust_domains)

    def verify(self, request: request_model.HttpRequest) -> model.Identity | None:
        principal = request.source_principal
        if not principal:
            return None
        domain = spiffe_trust_domain(principal)
        if self._domains and domain not in self._domains:
            raise model.IdentityFailure(
                "mtls_untrusted_domain",
                "client certificate is outside the trusted SPIFFE domains",
                provider=self.name,
            )
        return model.Identity(
            authenticated=True,
            method="mtls",
            subject=principal,
            issuer=domain,
            provider=self.name,
            principal=principal,
        )
