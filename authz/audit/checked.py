"""What :mod:`authz.audit.verify` already checked, so verifying a growing log again costs its new bytes.

The auditors' web view verifies the log again every few minutes while it grows. Reading every
record again each time — JSON, canonical form, schema, chain, tree — costs a minute and a half of
CPU per million records; opening every signed checkpoint again (JSON and an Ed25519 signature,
one every 10 s per instance even when idle) costs about as much on a month of heartbeats. So the
view's verification process keeps a :class:`Cache`, per file of the log: the complete lines it
read, their SHA-256, and what reading them gave — for a segment (:class:`Segment`) the findings,
record count, tree roots, and the chain and tree state after them; for a checkpoints file
(:class:`Checkpoints`) what its signed checkpoints said, by tree size, and the findings.

A file's lines are *reused* instead of read again only when nothing they depend on can have
changed: the file still begins with exactly those bytes (their SHA-256 is computed again from the
file, every time: a file's size and mtime are not trusted); for a segment, also the walk reached
it in exactly the state it did then (tree, chain, sequence number and the session's fields), and
every tree size whose root is now wanted in it — a checkpoint signed since, a witness's — had its
root taken then. Checking is a function of those, so reusing gives the same report as reading
again; anything else reads the file from its first line. Lines appended since are then read as
usual and join the entry.

Owned by :func:`authz.audit.verify.verify_directory` (``cache=``); kept by
:class:`authz.auditview.integrity.Integrity`'s long-lived verification process. ``tollgate audit
verify`` keeps none: an auditor's check reads everything. Guarded by
tests/integration/test_audit_integrity.py (every tampering case verified cold and after a warm
cache: the same report) and tests/unit/test_audit_checked.py (only new lines are read).
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import IO, TYPE_CHECKING, Any

from authz.audit import layout

if TYPE_CHECKING:
    from authz.audit import note, verify

__all__ = ["Cache", "Checkpoints", "Segment"]

Opened = tuple["note.Checkpoint", bool] | str  # a checkpoint and whether its line's size agrees; or the finding


@dataclasses.dataclass(frozen=True)
class _Lines:
    length: int  # bytes: the file's complete lines when they were read
    digest: bytes  # SHA-256 of those bytes

    def prefix(self, handle: IO[bytes], cuts: set[int]) -> tuple[Any | None, dict[int, bytes]]:
        """Read the entry's bytes from ``handle`` (at the file's start), a chunk at a time: the
        SHA-256 state after them if the file still begins with them (else None), and the digest of
        the file's first ``n`` bytes for each ``n`` in ``cuts`` that is within them."""
        hasher, digests, done = hashlib.sha256(), dict[int, bytes](), 0
        for cut in sorted({cut for cut in cuts if cut <= self.length} | {self.length}):
            while done < cut:
                chunk = handle.read(min(layout.CHUNK, cut - done))
                if not chunk:
                    return None, digests  # shorter than it was: a file of this session was cut
                hasher.update(chunk)
                done += len(chunk)
            digests[cut] = hasher.copy().digest()
        return (hasher if digests[self.length] == self.digest else None), digests


@dataclasses.dataclass(frozen=True)
class Segment(_Lines):
    """One segment's complete lines as checked, and what checking them did."""

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

    def replayable(self, start: tuple[Any, ...], wanted: set[int]) -> bool:
        """Whether the walk stands where it stood before the segment, and the wanted roots were
        taken (that the file still begins with the entry's bytes is :meth:`prefix`'s to say)."""
        return start == self.start and self.covers(wanted)


@dataclasses.dataclass(frozen=True)
class Checkpoints(_Lines):
    """One checkpoints file's complete lines as read, when it was the session's longest copy, and
    what they said (:class:`verify.Signed`, kept as it stood after them). Nothing is kept per
    line: a year-long session has millions of heartbeat lines."""

    lines: int
    signed: verify.Signed
    last_time: int  # the newest checkpoint time among them (times must not go backwards)


class Cache:
    """What was read of each file of one set of log directories, verified with one key (what
    opening a checkpoint gave depends on it); files gone are forgotten."""

    def __init__(self) -> None:
        self._entries: dict[str, Segment | Checkpoints] = {}
        self._seen: set[str] = set()
        self.replayed = 0  # segments replayed in the last verification (for tests and the log)

    def begin(self) -> None:
        self._seen.clear()
        self.replayed = 0

    def segment(self, path: str) -> Segment | None:
        self._seen.add(path)
        entry = self._entries.get(path)
        return entry if isinstance(entry, Segment) else None

    def checkpoints(self, path: str) -> Checkpoints | None:
        self._seen.add(path)
        entry = self._entries.get(path)
        return entry if isinstance(entry, Checkpoints) else None

    def put(self, path: str, entry: Segment | Checkpoints) -> None:
        self._entries[path] = entry

    def end(self) -> None:
        """Forget files this verification did not read (removed by retention, or by hand)."""
        for path in self._entries.keys() - self._seen:
            del self._entries[path]

    def __len__(self) -> int:
        return len(self._entries)
