"""What :mod:`authz.audit.verify` already checked, so verifying a growing log again costs its new bytes.

The auditors' web view verifies the log again every few minutes while it grows. Reading every
record again each time — JSON, canonical form, schema, chain, tree — costs a minute of CPU per
million records, and more as the log grows. So the view's verification process keeps a
:class:`SegmentCache`: per segment file, the complete lines it checked, their SHA-256, and what
checking them did (findings, record count, tree roots, the chain and tree state after them).

A segment's checked lines are *replayed* instead of read again only when nothing they depend on
can have changed: the file still begins with exactly those bytes (their SHA-256 is computed again
from the file, every time: a file's size and mtime are not trusted), the walk reached the segment
in exactly the state it did then (tree, chain, sequence number and the session's fields), and
every tree size whose root is now wanted in the segment — a checkpoint signed since, a witness's
— had its root taken then. Checking is a function of those, so the replay gives the same report
as checking again; anything else checks the segment from its first line. Lines appended since are
then checked as usual and join the entry.

Owned by :func:`authz.audit.verify.verify_directory` (``cache=``); kept by
:class:`authz.auditview.integrity.Integrity`'s long-lived verification process. ``tollgate audit
verify`` keeps none: an auditor's check reads everything. Guarded by
tests/integration/test_audit_integrity.py (every tampering case verified cold and after a warm
cache: the same report) and tests/unit/test_audit_checked.py (only new lines are read).
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from authz.audit import verify

__all__ = ["Checked", "SegmentCache"]


@dataclasses.dataclass(frozen=True)
class Checked:
    """One segment's complete lines as checked, and what checking them did."""

    length: int  # bytes: the segment's complete lines when they were checked
    digest: bytes  # SHA-256 of those bytes
    lines: int
    start: tuple[Any, ...]  # the walk's state before the segment (verify._walk_state)
    end: tuple[Any, ...]  # and after it
    findings: tuple[verify.Finding, ...]
    records: int  # records appended to the tree: one tree size each
    roots: dict[int, bytes]  # tree roots taken in the segment, by tree size
    retained: tuple[tuple[str, dict[str, Any]], ...]

    def covers(self, wanted: set[int]) -> bool:
        """Whether every wanted tree size inside the segment had its root taken."""
        high = self.end[0][0] if self.end[0] is not None else 0  # the tree's size after the segment
        low = high - self.records
        return all(size in self.roots for size in wanted if low < size <= high)

    def hasher(self, complete: bytes, start: tuple[Any, ...], wanted: set[int]) -> Any | None:
        """The SHA-256 state after this entry's bytes, if ``complete`` (the segment's complete lines
        now) begins with them and the walk stands where it stood: the entry may be replayed. Else None."""
        if len(complete) < self.length or start != self.start or not self.covers(wanted):
            return None
        hasher = hashlib.sha256(memoryview(complete)[: self.length])
        return hasher if hasher.copy().digest() == self.digest else None


class SegmentCache:
    """Checked segments by path, for one set of log directories; segments gone are forgotten."""

    def __init__(self) -> None:
        self._entries: dict[str, Checked] = {}
        self._seen: set[str] = set()
        self.replayed = 0  # segments replayed in the last verification (for tests and the log)

    def begin(self) -> None:
        self._seen.clear()
        self.replayed = 0

    def get(self, path: str) -> Checked | None:
        self._seen.add(path)
        return self._entries.get(path)

    def put(self, path: str, checked: Checked) -> None:
        self._entries[path] = checked

    def end(self) -> None:
        """Forget segments this verification did not read (removed by retention, or by hand)."""
        for path in self._entries.keys() - self._seen:
            del self._entries[path]

    def __len__(self) -> int:
        return len(self._entries)
