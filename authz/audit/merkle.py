"""RFC 6962 Merkle trees: leaf and node hashes, an append-only compact range, inclusion and
consistency proofs.

Used by the audit log (:mod:`authz.audit.log`) to maintain the root while appending, and by the
verifier and the proof tools (:mod:`authz.audit.verify`, :mod:`authz.audit.proof`).

    leaf hash  = SHA-256(0x00 || leaf bytes)
    node hash  = SHA-256(0x01 || left || right)
    MTH(D[n])  = split at the largest power of two k < n (RFC 6962 §2.1)

The compact range (the "frontier") is the list of roots of the perfect subtrees that make up the
tree so far, largest first: enough to append the next leaf and compute the root in O(log n).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

__all__ = [
    "CompactRange",
    "SubtreeRoots",
    "consistency_proof",
    "inclusion_path",
    "leaf_hash",
    "node_hash",
    "root_of",
    "verify_consistency",
    "verify_inclusion",
]

EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


class CompactRange:
    """The right edge of a growing tree: ``size`` leaves summarised by ≤ log2(size)+1 hashes."""

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        if bin(size).count("1") != len(hashes):
            raise ValueError("a compact range has one hash per set bit of its size")
        self.size = size
        self.hashes = list(hashes)  # perfect subtree roots, largest (leftmost) first

    def append(self, leaf: bytes) -> None:
        """Append a leaf *hash*."""
        node = leaf
        size = self.size
        # Merge with equal-sized subtrees on the right edge, as a binary counter carries.
        while size & 1:
            node = node_hash(self.hashes.pop(), node)
            size >>= 1
        self.hashes.append(node)
        self.size += 1

    def root(self) -> bytes:
        if not self.hashes:
            return EMPTY_ROOT
        node = self.hashes[-1]
        for left in reversed(self.hashes[:-1]):
            node = node_hash(left, node)
        return node


def root_of(leaves: Sequence[bytes]) -> bytes:
    """MTH over leaf hashes (reference definition, recursive)."""
    n = len(leaves)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaves[0]
    k = 1 << ((n - 1).bit_length() - 1)
    return node_hash(root_of(leaves[:k]), root_of(leaves[k:]))


def inclusion_path(index: int, size: int, leaves: Sequence[bytes], roots: SubtreeRoots | None = None) -> list[bytes]:
    """The audit path for leaf ``index`` in the tree of the first ``size`` of ``leaves``, by the
    recursive PATH(m, D[n]) of RFC 6962 §2.1.1.

    With ``roots`` holding every whole block below ``size`` (:meth:`SubtreeRoots.add_whole`), only
    the leaves of the record's own block and of the tree's last, partial block are read: ``leaves``
    may be a sequence that loads them on demand."""
    if not 0 <= index < size <= len(leaves):
        raise IndexError("leaf index outside the tree")
    path: list[bytes] = []
    start, end = 0, size
    while end - start > 1:  # from the root down; the path lists siblings from the leaf up
        k = 1 << ((end - start - 1).bit_length() - 1)
        if index < start + k:
            path.append(_root(leaves, start + k, end, roots))
            end = start + k
        else:
            path.append(_root(leaves, start, start + k, roots))
            start += k
    path.reverse()
    return path


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> bool:
    """Check an audit path (RFC 9162 §2.1.3.2) without any other part of the tree."""
    if not 0 <= index < size:
        return False
    fn, sn = index, size - 1
    node = leaf
    for sibling in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            node = node_hash(sibling, node)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            node = node_hash(node, sibling)
        fn >>= 1
        sn >>= 1
    return sn == 0 and node == root


def consistency_proof(
    old_size: int, leaves: Sequence[bytes], *, size: int | None = None, roots: SubtreeRoots | None = None
) -> list[bytes]:
    """The proof that the tree of the first ``old_size`` leaves is a prefix of the tree of the first
    ``size`` (default: all) of ``leaves`` (RFC 6962 §2.1.2, PROOF(m, D[n]) by its SUBPROOF definition).

    Without ``roots`` every node is hashed again: O(n). With them (kept beside a growing list of
    leaves, :class:`SubtreeRoots`), the roots of large perfect subtrees are computed once."""
    n = len(leaves) if size is None else size
    if not 0 < old_size <= n <= len(leaves):
        raise IndexError("the old size must be between 1 and the new size")
    return _subproof(old_size, leaves, 0, n, complete=True, roots=roots)


class SubtreeRoots:
    """The roots of the perfect subtrees of at least :attr:`smallest` leaves of one append-only
    list of leaves, as they are computed: such a subtree never changes once whole, so a proof
    against a tree of n leaves then hashes at most about ``smallest`` times log2(n) nodes. Memory: one
    entry per ``smallest`` / 2 leaves at most."""

    def __init__(self, smallest: int = 256) -> None:
        if smallest < 2 or smallest & (smallest - 1):
            raise ValueError("the smallest remembered subtree is a power of two of at least 2")
        self.smallest = smallest
        self.known: dict[tuple[int, int], bytes] = {}  # (first leaf, leaf count) → root

    def add_whole(self, start: int, root: bytes) -> None:
        """Remember ``root``, the root of the ``smallest`` leaves from ``start`` (a multiple of it),
        and the root of every larger perfect subtree it completes (its left siblings are known:
        whole blocks are added in order). Lets a reader keep the roots without keeping the leaves."""
        if start % self.smallest:
            raise ValueError("a whole block starts at a multiple of its size")
        size = self.smallest
        self.known[start, size] = root
        while (start // size) & 1:  # a right child: its parent is whole now
            start -= size
            root = node_hash(self.known[start, size], root)
            size *= 2
            self.known[start, size] = root


def _root(leaves: Sequence[bytes], start: int, end: int, roots: SubtreeRoots | None) -> bytes:
    """MTH of ``leaves[start:end]`` (not empty), without copying it."""
    n = end - start
    if n == 1:
        return leaves[start]
    known = roots.known if roots is not None and n >= roots.smallest and n & (n - 1) == 0 else None
    if known is not None and (start, n) in known:
        return known[start, n]
    k = 1 << ((n - 1).bit_length() - 1)
    node = node_hash(_root(leaves, start, start + k, roots), _root(leaves, start + k, end, roots))
    if known is not None:
        known[start, n] = node
    return node


def _subproof(
    m: int, leaves: Sequence[bytes], start: int, end: int, *, complete: bool, roots: SubtreeRoots | None
) -> list[bytes]:
    n = end - start
    if m == n:
        return [] if complete else [_root(leaves, start, end, roots)]
    k = 1 << ((n - 1).bit_length() - 1)
    if m <= k:
        return [
            *_subproof(m, leaves, start, start + k, complete=complete, roots=roots),
            _root(leaves, start + k, end, roots),
        ]
    return [
        *_subproof(m - k, leaves, start + k, end, complete=False, roots=roots),
        _root(leaves, start, start + k, roots),
    ]


def verify_consistency(old_size: int, new_size: int, proof: Sequence[bytes], old_root: bytes, new_root: bytes) -> bool:
    """Check a consistency proof between two tree heads without the tree (RFC 9162 §2.1.4.2)."""
    if not 0 < old_size <= new_size:
        return False
    if old_size == new_size:
        return not proof and old_root == new_root
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # a power of two: the old root is the first node
        path.insert(0, old_root)
    if not path:
        return False
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for node in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(node, fr)
            sr = node_hash(node, sr)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, node)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root
