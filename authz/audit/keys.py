"""The key set a new audit trail needs, as the text of three files.

``signing.key`` (the Ed25519 checkpoint signing key, C2SP note format), ``verifier.key`` (what
auditors verify with) and ``pseudonyms.yaml`` (the HMAC key personal data is pseudonymized with).
Used by ``tollgate audit keygen --kubernetes-secret`` and by the operator, which creates the
chart's audit keys Secret once when none is named (docs/operations.md).
"""

from __future__ import annotations

from authz.audit import note, pseudonym

__all__ = ["new_key_set"]


def new_key_set(name: str, pseudonym_id: str = "k1") -> dict[str, str]:
    """File name → text for a fresh key set named ``name`` (e.g. ``tollgate.dev/audit/prod``)."""
    signing, verifier = note.generate(name)
    return {
        "signing.key": signing + "\n",
        "verifier.key": verifier + "\n",
        "pseudonyms.yaml": pseudonym.key_file_text(pseudonym_id),
    }
