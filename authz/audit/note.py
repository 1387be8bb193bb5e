"""Signed checkpoints: C2SP signed-note text signed with Ed25519, C2SP tlog-checkpoint body.

A checkpoint commits to the audit log's Merkle tree at one size::

    tollgate.dev/audit/<instance>/<session>      origin
    1234                                          tree size
    q3Yf...base64 root hash...=                   root
    time 1795466000123                            extension: when it was signed (epoch ms)

    — tollgate.dev/audit/<instance> <base64(key id || Ed25519 signature)>

Key files use the formats of Go's ``golang.org/x/mod/sumdb/note``:
``PRIVATE+KEY+<name>+<hex key id>+<base64(0x01 || seed)>`` and ``<name>+<hex key id>+<base64(0x01 || public key)>``.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import re
import struct

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

__all__ = ["Checkpoint", "NoteError", "Signer", "Verifier", "generate", "parse_checkpoint"]

_ED25519 = b"\x01"
_DASH = "\u2014 "


class NoteError(ValueError):
    """A note or key that does not parse or does not verify."""


def _key_id(name: str, public: bytes) -> int:
    return int(struct.unpack(">I", hashlib.sha256(name.encode() + b"\n" + _ED25519 + public).digest()[:4])[0])


def _check_name(name: str) -> None:
    if not name or any(ch.isspace() or ch == "+" for ch in name):
        raise NoteError("a key name is non-empty, without spaces or '+'")


class Signer:
    def __init__(self, name: str, private: ed25519.Ed25519PrivateKey) -> None:
        _check_name(name)
        self.name = name
        self._private = private
        self.public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.key_id = _key_id(name, self.public)

    @classmethod
    def from_skey(cls, text: str) -> Signer:
        parts = text.strip().split("+", 4)  # the key itself is base64 and may contain "+"
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise NoteError("not a signing key (PRIVATE+KEY+name+id+key)")
        raw = base64.b64decode(parts[4])
        if raw[:1] != _ED25519 or len(raw) != 33:
            raise NoteError("only Ed25519 signing keys are supported")
        signer = cls(parts[2], ed25519.Ed25519PrivateKey.from_private_bytes(raw[1:]))
        if f"{signer.key_id:08x}" != parts[3]:
            raise NoteError("signing key id does not match the key")
        return signer

    def vkey(self) -> str:
        return f"{self.name}+{self.key_id:08x}+{base64.b64encode(_ED25519 + self.public).decode()}"

    def sign(self, text: str) -> str:
        if not text.endswith("\n"):
            raise NoteError("note text ends with a newline")
        signature = self._private.sign(text.encode())
        blob = base64.b64encode(struct.pack(">I", self.key_id) + signature).decode()
        return f"{text}\n{_DASH}{self.name} {blob}\n"


class Verifier:
    def __init__(self, vkey: str) -> None:
        parts = vkey.strip().split("+", 2)  # likewise
        if len(parts) != 3:
            raise NoteError("not a verifier key (name+id+key)")
        name, key_id, encoded = parts
        _check_name(name)
        try:
            raw = base64.b64decode(encoded, validate=True)
        except ValueError as error:
            raise NoteError("verifier key is not base64") from error
        if raw[:1] != _ED25519 or len(raw) != 33:
            raise NoteError("only Ed25519 verifier keys are supported")
        self.name = name
        self.key_id = _key_id(name, raw[1:])
        if f"{self.key_id:08x}" != key_id:
            raise NoteError("verifier key id does not match the key")
        self._public = ed25519.Ed25519PublicKey.from_public_bytes(raw[1:])

    def open(self, note: str) -> str:
        """Return the note's text if it carries a valid signature by this key; raise NoteError."""
        if not note.endswith("\n"):
            raise NoteError("malformed note: it must end with a newline")
        text, separator, signatures = note.rpartition("\n\n")
        if not separator or not signatures:
            raise NoteError("malformed note: no signature block")
        text += "\n"
        if any(ord(ch) < 0x20 and ch != "\n" for ch in note):
            raise NoteError("malformed note: control characters")
        found = False
        for line in signatures.splitlines():
            if not line.startswith(_DASH):
                raise NoteError("malformed signature line")
            name, _, blob = line[len(_DASH) :].partition(" ")
            try:
                raw = base64.b64decode(blob, validate=True)
            except ValueError as error:
                raise NoteError("signature is not base64") from error
            if len(raw) < 5 or name != self.name or struct.unpack(">I", raw[:4])[0] != self.key_id:
                continue  # another key's signature: ignored, as the spec requires
            try:
                self._public.verify(raw[4:], text.encode())
            except InvalidSignature as error:
                raise NoteError("signature by the trusted key does not verify") from error
            found = True
        if not found:
            raise NoteError("no signature by the trusted key")
        return text


def generate(name: str) -> tuple[str, str]:
    """A new Ed25519 key pair as (signing key, verifier key) strings."""
    signer = Signer(name, ed25519.Ed25519PrivateKey.generate())
    seed = signer._private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    skey = f"PRIVATE+KEY+{name}+{signer.key_id:08x}+{base64.b64encode(_ED25519 + seed).decode()}"
    return skey, signer.vkey()


@dataclasses.dataclass(frozen=True, slots=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    time_ms: int

    def text(self) -> str:
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode()}\ntime {self.time_ms}\n"


_DECIMAL = re.compile(r"0|[1-9][0-9]*")  # ASCII only: str.isdigit() would take "²" or "٣"


def parse_checkpoint(text: str) -> Checkpoint:
    """A C2SP tlog-checkpoint body: origin, tree size (ASCII decimal), base64 root hash, then
    non-empty extension lines (``time <epoch ms>`` is ours); the text ends with a newline."""
    lines = text.split("\n")
    if len(lines) < 4 or lines[-1] != "":
        raise NoteError("checkpoint text has origin, size and root lines")
    origin, size, root = lines[0], lines[1], lines[2]
    if not origin:
        raise NoteError("checkpoint origin is empty")
    if not _DECIMAL.fullmatch(size):
        raise NoteError("checkpoint size is not a decimal number (ASCII digits, no leading zero)")
    try:
        root_hash = base64.b64decode(root, validate=True)
    except ValueError as error:
        raise NoteError("checkpoint root is not base64") from error
    if len(root_hash) != 32:
        raise NoteError("checkpoint root is not a SHA-256 hash")
    time_ms = 0
    for extension in lines[3:-1]:
        if not extension:
            raise NoteError("checkpoint has an empty extension line")
        if extension.startswith("time ") and _DECIMAL.fullmatch(extension[5:]):
            time_ms = int(extension[5:])
    return Checkpoint(origin=origin, size=int(size), root=root_hash, time_ms=time_ms)
