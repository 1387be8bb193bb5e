"""API keys: ``<id>.<secret>`` presented in a header, checked against hashed entries from a file.

Called by :mod:`authz.identity.resolve`; the keys file is read by :mod:`authz.loader` when the
configuration loads, so a broken file is a configuration error and the last good keys stay.
Only SHA-256 hashes of keys are stored: keys are 256-bit random secrets (``tollgate apikey create``),
so an unsalted hash cannot be reversed by dictionary. The id picks the entry; the hash is compared
with :func:`hmac.compare_digest`. The identity names the key id, never the key.

Keys file::

    keys:
      - id: ci-bot              # [a-z0-9-]+, also the key's public prefix
        sha256: 9f86d0...        # hex SHA-256 of the whole presented key
        subject: ci-bot          # optional, defaults to "apikey:<id>"
        groups: [ci]
        roles: []
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from typing import Any

import yaml

from authz import request as request_model
from authz.errors import ConfigError
from authz.identity import model, providers

__all__ = ["ApiKeyVerifier", "generate_key", "parse_keys"]

_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def generate_key(key_id: str) -> tuple[str, str]:
    """A new key and the hex hash to store for it."""
    if not _ID.match(key_id):
        raise ValueError("a key id is lower-case letters, digits and '-' (at most 63)")
    key = f"{key_id}.{secrets.token_urlsafe(32)}"
    return key, hashlib.sha256(key.encode()).hexdigest()


def parse_keys(text: str, path: str, field: str = "spec.apiKey.keysFile") -> tuple[providers.ApiKeyEntry, ...]:
    """Validate the text of a keys file (``path`` names it in messages; the operator checks a
    Secret's value with it before it publishes the value)."""
    try:
        document: Any = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"cannot read API keys file {path}: {error}", field=field) from error
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise ConfigError(f"{path}: expected a mapping with a 'keys' list", field=field)
    entries, seen = [], set()
    for index, raw in enumerate(document["keys"]):
        where = f"{path}: keys[{index}]"
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where}: must be a mapping", field=field)
        key_id, digest = str(raw.get("id", "")), str(raw.get("sha256", "")).lower()
        if not _ID.match(key_id) or key_id in seen:
            raise ConfigError(f"{where}.id: missing, invalid or duplicate id {key_id!r}", field=field)
        if not _HEX64.match(digest):
            raise ConfigError(f"{where}.sha256: must be 64 hex characters (plain keys are never stored)", field=field)
        seen.add(key_id)
        entry = providers.ApiKeyEntry(
            key_id=key_id,
            sha256=bytes.fromhex(digest),
            subject=str(raw.get("subject") or f"apikey:{key_id}"),
            groups=tuple(map(str, raw.get("groups", []))),
            roles=tuple(map(str, raw.get("roles", []))),
        )
        problem = model.check_identity_values(entry.subject, entry.groups, entry.roles)
        if problem:
            raise ConfigError(f"{where}: {problem}", field=field)
        entries.append(entry)
    return tuple(entries)


class ApiKeyVerifier:
    def __init__(self, name: str, settings: providers.ApiKeySettings) -> None:
        self.name = name
        self._header = settings.header
        self._prefix = settings.prefix
        self._entries = {entry.key_id: entry for entry in settings.keys}

    def verify(self, request: request_model.HttpRequest) -> model.Identity | None:
        value = request.headers.get(self._header)
        if value is None:
            return None
        if self._prefix:
            if not value.startswith(self._prefix):
                raise model.IdentityFailure("apikey_malformed", "API key has the wrong prefix", provider=self.name)
            value = value[len(self._prefix) :]
        key_id, dot, _ = value.partition(".")
        entry = self._entries.get(key_id) if dot else None
        presented = hashlib.sha256(value.encode()).digest()
        # Compare even when the id is unknown, so timing does not reveal which ids exist.
        expected = entry.sha256 if entry is not None else bytes(32)
        if not hmac.compare_digest(presented, expected) or entry is None:
            raise model.IdentityFailure("apikey_invalid", "API key is not valid", provider=self.name)
        return model.Identity(
            authenticated=True,
            method="apiKey",
            subject=entry.subject,
            provider=self.name,
            groups=entry.groups,
            roles=entry.roles,
            key_id=entry.key_id,
        )
