"""RFC 6962 trees and C2SP signed notes, against their definitions."""

from __future__ import annotations

import hashlib

import pytest

from authz.audit import merkle, note


def _leaves(n: int) -> list[bytes]:
    return [merkle.leaf_hash(f"leaf {i}".encode()) for i in range(n)]


def test_known_rfc6962_values() -> None:
    # The empty tree and a one-leaf tree, from RFC 6962 §2.1 directly.
    assert merkle.root_of([]) == hashlib.sha256(b"").digest()
    assert merkle.leaf_hash(b"") == hashlib.sha256(b"\x00").digest()
    two = _leaves(2)
    assert merkle.root_of(two) == hashlib.sha256(b"\x01" + two[0] + two[1]).digest()
    three = _leaves(3)
    assert merkle.root_of(three) == merkle.node_hash(merkle.node_hash(three[0], three[1]), three[2])


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7, 8, 9, 31, 64, 100])
def test_compact_range_matches_reference_root(size: int) -> None:
    leaves = _leaves(size)
    compact = merkle.CompactRange()
    for index, leaf in enumerate(leaves):
        compact.append(leaf)
        assert compact.root() == merkle.root_of(leaves[: index + 1])
    resumed = merkle.CompactRange(compact.size, compact.hashes)
    extra = merkle.leaf_hash(b"next")
    resumed.append(extra)
    assert resumed.root() == merkle.root_of([*leaves, extra])


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 13, 33])
def test_inclusion_proofs(size: int) -> None:
    leaves = _leaves(size)
    root = merkle.root_of(leaves)
    for index in range(size):
        proof = merkle.inclusion_proof(index, leaves)
        assert merkle.verify_inclusion(leaves[index], index, size, proof, root)
        assert not merkle.verify_inclusion(merkle.leaf_hash(b"forged"), index, size, proof, root)
        if size > 1:
            assert not merkle.verify_inclusion(leaves[index], (index + 1) % size, size, proof, root)


def test_signed_note_round_trip_and_tampering() -> None:
    skey, vkey = note.generate("tollgate.dev/audit/test")
    signer = note.Signer.from_skey(skey)
    verifier = note.Verifier(vkey)
    checkpoint = note.Checkpoint("tollgate.dev/audit/test/s1", 12, hashlib.sha256(b"x").digest(), 1700000000000)
    signed = signer.sign(checkpoint.text())
    assert note.parse_checkpoint(verifier.open(signed)) == checkpoint
    with pytest.raises(note.NoteError, match="does not verify"):
        verifier.open(signed.replace("\n12\n", "\n13\n"))
    _, other_vkey = note.generate("tollgate.dev/audit/test")
    with pytest.raises(note.NoteError, match="no signature by the trusted key"):
        note.Verifier(other_vkey).open(signed)
    with pytest.raises(note.NoteError):
        note.Verifier(vkey.replace("+", "+0", 1))


def test_key_id_follows_c2sp() -> None:
    skey, vkey = note.generate("example.com/key")
    signer = note.Signer.from_skey(skey)
    expected = hashlib.sha256(b"example.com/key\n\x01" + signer.public).digest()[:4].hex()
    assert vkey.split("+")[1] == expected == skey.split("+")[3]
