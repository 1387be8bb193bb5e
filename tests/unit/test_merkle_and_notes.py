"""RFC 6962 trees and C2SP signed notes, against their definitions."""

from __future__ import annotations

import hashlib

import pytest

from authz.audit import merkle, note


def _leaves(n: int) -> list[bytes]:
    return [merkle.leaf_hash(f"leaf {i}".encode()) for i in range(n)]


def _level_by_level_path(index: int, leaves: list[bytes]) -> list[bytes]:
    """An audit path built a second, independent way (level by level; an unpaired last node moves
    up unchanged, which yields the RFC's tree): what :func:`merkle.inclusion_path` is held to."""
    proof = []
    level = list(leaves)
    position = index
    while len(level) > 1:
        if position ^ 1 < len(level):
            proof.append(level[position ^ 1])
        paired = [merkle.node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
        position //= 2
    return proof


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
        proof = merkle.inclusion_path(index, size, leaves)
        assert proof == _level_by_level_path(index, leaves)
        assert merkle.verify_inclusion(leaves[index], index, size, proof, root)
        assert not merkle.verify_inclusion(merkle.leaf_hash(b"forged"), index, size, proof, root)
        if size > 1:
            assert not merkle.verify_inclusion(leaves[index], (index + 1) % size, size, proof, root)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 33, 64, 100])
def test_inclusion_path_from_whole_block_roots_is_the_reference_path(size: int) -> None:
    leaves = _leaves(size)
    roots = merkle.SubtreeRoots(4)
    for start in range(0, size - size % 4, 4):  # as a reader adds each whole block, in order
        roots.add_whole(start, merkle.root_of(leaves[start : start + 4]))
    for (start, count), root in roots.known.items():  # the blocks and every perfect subtree above them
        assert root == merkle.root_of(leaves[start : start + count])
    if size >= 16:
        assert (0, 16) in roots.known
    asked: list[int] = []

    class Leaves(list[bytes]):
        def __getitem__(self, index: int) -> bytes:  # type: ignore[override]
            asked.append(index)
            return super().__getitem__(index)

    for index in range(size):
        asked.clear()
        path = merkle.inclusion_path(index, size, Leaves(leaves), roots)
        assert path == _level_by_level_path(index, leaves) == merkle.inclusion_path(index, size, leaves)
        # Only the leaves of the record's block and of the last, partial block are read.
        assert {i // 4 for i in asked} <= {index // 4, size // 4}, (index, sorted(set(asked)))


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


ROOT = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="  # SHA-256 of nothing, base64


@pytest.mark.parametrize(
    "text",
    [
        f"origin\n\u00b2\n{ROOT}\n",  # a superscript two is a digit to str.isdigit(), not to C2SP
        f"origin\n\u0663\n{ROOT}\n",  # an Arabic-Indic three
        f"origin\n012\n{ROOT}\n",  # a leading zero
        f"origin\n12\n{ROOT}\n\ntime 5\n",  # an empty extension line
        f"origin\n12\n{ROOT}",  # no final newline
        f"\n12\n{ROOT}\n",  # no origin
        f"origin\n12\n{ROOT[:-4]}\n",  # not a SHA-256 root
    ],
)
def test_checkpoint_parser_is_strict(text: str) -> None:
    with pytest.raises(note.NoteError):
        note.parse_checkpoint(text)


def test_checkpoint_time_and_a_note_without_final_newline() -> None:
    parsed = note.parse_checkpoint(f"origin\n12\n{ROOT}\ntime 1700000000000\nother ext\n")
    assert (parsed.origin, parsed.size, parsed.time_ms) == ("origin", 12, 1_700_000_000_000)
    assert note.parse_checkpoint(f"origin\n12\n{ROOT}\ntime \u00b9\u00b2\n").time_ms == 0  # not ASCII: not a time
    skey, vkey = note.generate("tollgate.dev/audit/test")
    signed = note.Signer.from_skey(skey).sign(f"origin\n12\n{ROOT}\n")
    verifier = note.Verifier(vkey)
    assert verifier.open(signed) == f"origin\n12\n{ROOT}\n"
    with pytest.raises(note.NoteError, match="end with a newline"):
        verifier.open(signed.rstrip("\n"))


def test_consistency_proofs_for_every_pair_of_sizes() -> None:
    leaves = _leaves(40)
    for new in range(1, 41):
        new_root = merkle.root_of(leaves[:new])
        for old in range(1, new + 1):
            old_root = merkle.root_of(leaves[:old])
            proof = merkle.consistency_proof(old, leaves[:new])
            assert merkle.verify_consistency(old, new, proof, old_root, new_root), (old, new)
            # Another old root, another new root, or a changed proof: refused.
            assert not merkle.verify_consistency(old, new, proof, leaves[0] if old > 1 else leaves[1], new_root)
            if old < new:
                assert not merkle.verify_consistency(old, new, proof, old_root, merkle.root_of(leaves[1 : new + 1]))
                assert not merkle.verify_consistency(old, new, proof[:-1], old_root, new_root)
                bent = [*proof[:-1], merkle.leaf_hash(b"x")]
                assert not merkle.verify_consistency(old, new, bent, old_root, new_root)


def test_consistency_proof_matches_rfc_6962_example() -> None:
    # RFC 6962 §2.1.3: the tree of 7 leaves d0..d6; PROOF(3, D[7]) = [c, d, g, l] in its figure:
    # c = leaf 2, d = leaf 3, g = MTH(d0, d1), l = MTH(d4..d6).
    d = _leaves(7)
    g = merkle.node_hash(d[0], d[1])
    ll = merkle.root_of(d[4:7])
    assert merkle.consistency_proof(3, d) == [d[2], d[3], g, ll]
    # PROOF(4, D[7]) = [l]; PROOF(6, D[7]) = [i, j, k] with i = d4||d5, j = d6, k = MTH(d0..d3).
    assert merkle.consistency_proof(4, d) == [ll]
    assert merkle.consistency_proof(6, d) == [merkle.node_hash(d[4], d[5]), d[6], merkle.root_of(d[:4])]


class _Counted(list[bytes]):
    """Leaf hashes that count how many are read."""

    reads = 0

    def __getitem__(self, index):  # type: ignore[no-untyped-def,override]
        self.reads += 1
        return super().__getitem__(index)


@pytest.mark.parametrize("smallest", [2, 4, 256])
def test_remembered_subtree_roots_give_the_same_proofs_as_the_tree_grows(smallest: int) -> None:
    leaves = _leaves(40)
    roots = merkle.SubtreeRoots(smallest)
    for new in range(1, 41):  # the same list and roots, asked about ever larger trees
        for old in range(1, new + 1):
            expected = merkle.consistency_proof(old, leaves[:new])
            assert merkle.consistency_proof(old, leaves, size=new, roots=roots) == expected, (old, new)


def test_with_remembered_roots_a_proof_against_a_large_tree_reads_few_leaves() -> None:
    # A witness asks again and again; without remembered roots every proof hashes the whole tree.
    leaves = _Counted(merkle.leaf_hash(b"%d" % i) for i in range(70_000))
    roots = merkle.SubtreeRoots(256)
    merkle.consistency_proof(1_000, leaves, size=60_000, roots=roots)
    assert leaves.reads >= 60_000  # the first proof reads every leaf it covers
    leaves.reads = 0
    merkle.consistency_proof(1_000, leaves, size=70_000, roots=roots)
    assert leaves.reads <= 10_000 + 2 * 256 * 17  # then only the leaves added since, and ragged edges
    leaves.reads = 0
    proof = merkle.consistency_proof(50_001, leaves, size=70_000, roots=roots)
    assert leaves.reads <= 2 * 256 * 17  # ragged edges only: about smallest x log2(n)
    assert proof == merkle.consistency_proof(50_001, list(leaves))
    with pytest.raises(IndexError):
        merkle.consistency_proof(1, leaves, size=70_001, roots=roots)
