"""Keyed pseudonyms for personal data in audit records (subject, email, source IP).

HMAC-SHA256 under a secret key, truncated to 128 bits, hex. Unlike a plain hash, a pseudonym
cannot be reversed by hashing a dictionary of likely values without the key. Every record names
the key id it was made with, so keys can rotate: the first key in the file is current; older
keys stay listed so auditors can still compute pseudonyms for old records.

Key file (YAML)::

    keys:
      - id: 2026-11           # current: used for new records
        secret: <base64, ≥ 32 bytes>
      - id: 2026-05           # older, kept for searching old records
        secret: <...>
"""

from __future__ import annotations

import base64
import hmac
import pathlib
import re
import secrets

import yaml

from authz.errors import ConfigError

__all__ = [
    "Pseudonymizer",
    "generate_key_file",
    "is_pseudonym",
    "key_file_text",
    "load_keys",
]

_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


_CACHE_SIZE = 65_536


_PSEUDONYM = re.compile(r"[0-9a-f]{32}")


def is_pseudonym(text: str) -> bool:
    """Whether ``text`` has the form of a pseudonym (32 lower-case hex digits)."""
    return _PSEUDONYM.fullmatch(text) is not None


class Pseudonymizer:
    def __init__(self, keys: list[tuple[str, bytes]]) -> None:
        if not keys:
            raise ValueError("at least one pseudonym key is needed")
        self.keys = dict(keys)
        self.key_id, self._key = keys[0]
        # The same callers and addresses recur: remember recent pseudonyms (bounded, in memory only).
        self._cache: dict[str, str] = {}

    def __call__(self, value: str) -> str:
        if not value:
            return ""
        found = self._cache.get(value)
        if found is None:
            found = hmac.digest(self._key, value.encode(), "sha256").hex()[:32]
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            self._cache[value] = found
        return found

    def with_key(self, key_id: str, value: str) -> str:
        """The pseudonym ``value`` had (or has) under key ``key_id``: for searching old records."""
        return hmac.digest(self.keys[key_id], value.encode(), "sha256").hex()[:32] if value else ""


def load_keys(path: pathlib.Path) -> Pseudonymizer:
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"cannot read pseudonym keys: {error}", file=str(path)) from error
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list) or not document["keys"]:
        raise ConfigError("expected a mapping with a non-empty 'keys' list", file=str(path), field="keys")
    keys = []
    for index, entry in enumerate(document["keys"]):
        field = f"keys[{index}]"
        if not isinstance(entry, dict) or not _ID.match(str(entry.get("id", ""))):
            raise ConfigError("each key needs an id ([A-Za-z0-9._-])", file=str(path), field=f"{field}.id")
        try:
            secret = base64.b64decode(str(entry.get("secret", "")), validate=True)
        except ValueError as error:
            raise ConfigError("secret must be base64", file=str(path), field=f"{field}.secret") from error
        if len(secret) < 32:
            raise ConfigError("secret must be at least 32 bytes", file=str(path), field=f"{field}.secret")
        keys.append((str(entry["id"]), secret))
    return Pseudonymizer(keys)


def generate_key_file(path: pathlib.Path, key_id: str) -> None:
    """Write a new key file, or put a new current key in front of an existing one (rotation)."""
    path.write_text(key_file_text(key_id, path.read_text() if path.exists() else ""))
    path.chmod(0o600)


def key_file_text(key_id: str, existing: str = "") -> str:
    """A key file's text with a new current key ``key_id`` in front of those of ``existing``."""
    entry = {"id": key_id, "secret": base64.b64encode(secrets.token_bytes(32)).decode()}
    document = yaml.safe_load(existing) if existing else {"keys": []}
    document["keys"] = [entry, *[k for k in document.get("keys", []) if k.get("id") != key_id]]
    return str(yaml.safe_dump(document, sort_keys=False))
