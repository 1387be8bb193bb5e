"""Single-record proofs: ``tollgate audit prove``, the audit UI's proof download, and
``tollgate audit verify-proof``.

A proof file is self-contained JSON: the record line exactly as logged, its leaf index, the
signed checkpoint it is proven against, and the RFC 6962 audit path. Checking it needs nothing but
the file and the pinned verifier key.

Making one (:class:`SessionTree`) must not cost a pass over the whole session per proof: the tree
keeps, per session, the roots of its whole blocks of :data:`BLOCK` records and of every perfect
subtree above them (:meth:`merkle.SubtreeRoots.add_whole`), where each block starts on disk, and the
signed checkpoints, and reads only what was appended since its last :meth:`~SessionTree.refresh`.
A proof then reads at most two blocks from disk (the record's and the tree's last, partial one).
The audit UI refreshes its trees in the background (:class:`Trees`), so a download never reads more
than those two blocks; the CLI makes one tree and refreshes it once; the witness publisher
(:mod:`authz.audit.publish`) proves consistency from the same trees.
"""

from __future__ import annotations

import base64
import bisect
import json
import logging
import pathlib
import threading
from collections.abc import Sequence
from typing import Any

from authz.audit import layout, merkle, note, record

__all__ = ["BLOCK", "ProofError", "SessionTree", "Trees", "check_proof", "make_proof"]

_log = logging.getLogger(__name__)
BLOCK = 256  # records per block: the leaves a proof may read from disk, twice at most


class ProofError(Exception):
    pass


def _find(directories: Sequence[pathlib.Path], record_id: str) -> tuple[pathlib.PurePath, int]:
    """The record's session (``instance/session``) and its position in that session's log: a scan
    of every segment, for the command line (the audit UI knows where each record is)."""
    needle = f'"id":"{record_id}"'.encode()
    for directory in directories:
        for _, sessions in layout.sessions(directory):
            for session_dir in sessions:
                for segment in layout.session_segments(session_dir):
                    with segment.open("rb") as handle:  # a line at a time, as the verifier reads
                        for line in layout.Lines(handle, limit=layout.MAX_RECORD_LINE):
                            if line is not None and needle in line:
                                return session_dir.relative_to(directory), int(json.loads(line)["seq"])
    raise ProofError(f"no record with id {record_id} in {', '.join(map(str, directories))}")


def make_proof(directory: pathlib.Path | Sequence[pathlib.Path], record_id: str) -> dict[str, Any]:
    """The proof of one record. ``directory``: the log, or the log and its archive (a session's
    older segments may have been archived by retention: the proof needs all of them)."""
    directories = [directory] if isinstance(directory, pathlib.Path) else list(directory)
    session, index = _find(directories, record_id)
    tree = SessionTree(directories, session)
    tree.refresh()
    return tree.prove(index)


class SessionTree:
    """One session's Merkle tree, as far as its log has been read: enough to prove any record in it.

    Memory: one root per :data:`BLOCK` / 2 records and one position per block. A session that has
    ended (its ``session_end`` record read and signed) is not read again. Thread-safe: the audit UI
    refreshes in one thread while downloads prove in others."""

    def __init__(self, directories: Sequence[pathlib.Path], session: pathlib.PurePath) -> None:
        self.directories = list(directories)  # the log, and its archive (retention may move segments there)
        self.session = session  # instance/session
        self.size = 0  # records read and hashed
        self.problem = ""  # why no proof can be made in this session (read from its start)
        self._roots = merkle.SubtreeRoots(BLOCK)
        self._starts: list[tuple[str, int]] = []  # block b's first record: (segment name, byte offset)
        self._block: list[bytes] = []  # leaf hashes since the last whole block
        self._segment = ""  # the segment being read, and how far (whole lines only)
        self._offset = 0
        self._checkpoint_bytes: dict[pathlib.Path, int] = {}
        self._checkpoints: dict[int, str] = {}  # size → signed note
        self._sizes: list[int] = []  # the checkpoints' sizes, in order
        self._ended = False  # its session_end record has been read
        self._lock = threading.Lock()

    def _segments(self) -> dict[str, pathlib.Path]:
        """The session's segments by name, wherever they are now (live log or archive)."""
        found: dict[str, pathlib.Path] = {}
        for directory in self.directories:
            session_dir = directory / self.session
            if session_dir.is_dir():
                found.update({path.name: path for path in layout.session_segments(session_dir)})
        return dict(sorted(found.items()))

    # -- catching up ------------------------------------------------------------------------
    def refresh(self) -> int:
        """Read what was appended since the last refresh; return the number of new records."""
        with self._lock:
            if self.finished:
                return 0
            before = self.size
            segments = self._segments()
            names = [name for name in segments if name >= self._segment]
            for position, name in enumerate(names):
                offset = self._offset if name == self._segment else 0
                torn = self._read_from(name, segments[name], offset)
                if torn and position < len(names) - 1:  # a later segment exists: this one is sealed
                    self.problem = f"{segments[name]} ends in a partial line"
            self._read_checkpoints()
            return self.size - before

    def _read_from(self, name: str, path: pathlib.Path, offset: int) -> bool:
        """Hash the whole lines of ``path`` from ``offset``; True if a partial line is left at its end.
        A line longer than any record stops the reading there (:attr:`problem` says why)."""
        try:
            with path.open("rb") as handle:
                handle.seek(offset)
                self._segment, self._offset = name, offset
                lines = layout.Lines(handle, limit=layout.MAX_RECORD_LINE)
                for line in lines:
                    if line is None:  # never held whole: not a record
                        self.problem = f"{path} has a line longer than {layout.MAX_RECORD_LINE} bytes"
                        return False
                    self._add(name, self._offset, line + b"\n")  # a leaf is the line as logged
                    self._offset = offset + lines.complete
                return lines.torn
        except OSError:
            return False  # moved to the archive or removed meanwhile: the next refresh finds it where it went

    @property
    def finished(self) -> bool:
        """Closed, and its last record signed: nothing more will be appended to read."""
        return self._ended and bool(self._sizes) and self._sizes[-1] == self.size

    def _add(self, segment: str, offset: int, line: bytes) -> None:
        if self.size == 0 and not self.problem:
            self.problem = _first_record_problem(line)
        if self.size % BLOCK == 0:
            self._starts.append((segment, offset))
        self._ended = b'"kind":"session_end"' in line  # canonical JSON: exactly this, or not the kind
        self._block.append(merkle.leaf_hash(line))
        self.size += 1
        if len(self._block) == BLOCK:
            self._roots.add_whole(self.size - BLOCK, merkle.root_of(self._block))
            self._block = []

    def _read_checkpoints(self) -> None:
        for directory in self.directories:
            path = directory / self.session / layout.CHECKPOINTS
            offset = self._checkpoint_bytes.get(path, 0)
            try:
                with path.open("rb") as handle:
                    handle.seek(offset)
                    lines = layout.Lines(handle)  # a line at a time: the file grows all session
                    for line in lines:
                        self._add_checkpoint(line)
                    self._checkpoint_bytes[path] = offset + lines.complete
            except OSError:
                continue

    def _add_checkpoint(self, line: bytes | None) -> None:
        try:
            entry = json.loads(line)  # type: ignore[arg-type]  # None (overlong) is a TypeError
            size, signed = int(entry["size"]), str(entry["note"])
        except (ValueError, TypeError, KeyError):
            return  # a torn, overlong or edited line: the verifier reports it
        if size not in self._checkpoints:  # the archive holds copies of the live log's
            self._checkpoints[size] = signed
            bisect.insort(self._sizes, size)

    # -- proving ----------------------------------------------------------------------------
    def consistency(self, old: int, new: int) -> list[bytes]:
        """The RFC 6962 proof that the tree of the first ``old`` records is a prefix of the tree of
        the first ``new`` (0 < old <= new <= :attr:`size`); reads at most the two blocks where the
        trees end. For witnesses (:mod:`authz.audit.publish`)."""
        with self._lock:
            if self.problem:
                raise ProofError(self.problem)
            if not 0 < old <= new <= self.size:
                raise ProofError(f"sizes must satisfy 0 < old <= new <= {self.size}")
            return merkle.consistency_proof(old, _Leaves(self, new), roots=self._roots)

    def prove(self, index: int) -> dict[str, Any]:
        """The proof of record ``index`` against the smallest signed checkpoint that covers it."""
        with self._lock:
            if self.problem:
                raise ProofError(self.problem)
            if index < 0:
                raise ProofError("the record has no position in its log")
            if index >= self.size:
                raise ProofError("the record is newer than what has been read of its log; try again in a few seconds")
            first = bisect.bisect_right(self._sizes, index)  # the smallest checkpoint that covers it
            if first == len(self._sizes) or self._sizes[first] > self.size:
                raise ProofError("no signed checkpoint covers this record yet; try again after the next checkpoint")
            size = self._sizes[first]
            leaves = _Leaves(self, size)
            path = merkle.inclusion_path(index, size, leaves, self._roots)
            if not merkle.verify_inclusion(leaves[index], index, size, path, _signed_root(self._checkpoints[size])):
                # What was read earlier and what is on disk now differ, or the log and its checkpoint do.
                raise ProofError("the log does not match its signed checkpoint here: see tollgate audit verify")
            return {
                "format": "tollgate-inclusion-proof/v1",
                "record": leaves.line(index).decode(),
                "index": index,
                "tree_size": size,
                "checkpoint": self._checkpoints[size],
                "proof": [base64.b64encode(h).decode() for h in path],
            }

    def _block_lines(self, block: int, count: int) -> list[bytes]:
        """The first ``count`` lines of block ``block``, read from disk."""
        segments = self._segments()
        name, offset = self._starts[block]
        lines: list[bytes] = []
        for segment in (n for n in segments if n >= name):
            try:
                with segments[segment].open("rb") as handle:
                    handle.seek(offset if segment == name else 0)
                    for line in layout.Lines(handle, limit=layout.MAX_RECORD_LINE):
                        if len(lines) == count:
                            break
                        if line is None:
                            raise ProofError("a line longer than any record is in the way: see tollgate audit verify")
                        lines.append(line + b"\n")
            except OSError:
                break
            if len(lines) == count:
                return lines
        raise ProofError(f"records {block * BLOCK}..{block * BLOCK + count - 1} of the session are no longer on disk")


def _signed_root(signed: str) -> bytes:
    """The root hash a checkpoint note states (its signature is the verifier's to check)."""
    try:
        return note.parse_checkpoint(signed.split("\n\n", maxsplit=1)[0] + "\n").root
    except note.NoteError:
        return b""


def _first_record_problem(line: bytes) -> str:
    """Why a session whose log begins with ``line`` cannot prove its records, or "" if it can."""
    try:
        first = json.loads(line)
    except ValueError:
        first = None
    if not isinstance(first, dict):
        return "the session's first record cannot be read: run tollgate audit verify on this log"
    if first.get("seq") != 0:
        return (
            "the session was partly removed by retention (or archived: give the archive too); a proof needs all of it"
        )
    return ""


class _Leaves(Sequence[bytes]):
    """The leaf hashes of a tree of ``size`` records, read from disk by the block when asked for:
    with every whole block's root known, a proof asks for at most two blocks."""

    def __init__(self, tree: SessionTree, size: int) -> None:
        self._tree = tree
        self._size = size
        self._lines: dict[int, list[bytes]] = {}

    def __len__(self) -> int:
        return self._size

    def line(self, index: int) -> bytes:
        block = index // BLOCK
        if block not in self._lines:
            self._lines[block] = self._tree._block_lines(block, min(BLOCK, self._size - block * BLOCK))
        return self._lines[block][index % BLOCK]

    def __getitem__(self, index: int) -> bytes:  # type: ignore[override]
        return merkle.leaf_hash(self.line(index))


class Trees:
    """Every session's :class:`SessionTree` under the given directories, for the audit UI:
    :meth:`refresh` (in the background) reads what each log appended; :meth:`prove` proves, reading
    at most what its session appended since (the UI refreshes before it indexes, so a record it can
    find is one a tree has read, but for the moments between the two)."""

    def __init__(self, directories: Sequence[pathlib.Path]) -> None:
        self.directories = list(directories)
        self._trees: dict[pathlib.PurePath, SessionTree] = {}

    def refresh(self) -> int:
        added = 0
        for directory in self.directories:
            for _, sessions in layout.sessions(directory):
                for session_dir in sessions:
                    session = session_dir.relative_to(directory)
                    tree = self._trees.get(session)
                    if tree is None:
                        tree = self._trees[session] = SessionTree(self.directories, session)
                    try:
                        added += tree.refresh()
                    except OSError as error:  # this session's files: the others are read all the same
                        _log.warning("proofs: cannot read %s: %s", session_dir, error)
        return added

    def prove(self, session: pathlib.PurePath, index: int) -> dict[str, Any]:
        tree = self._trees.get(session)
        if tree is None:
            raise ProofError("the record's log has not been read yet; try again in a few seconds")
        if index >= tree.size:  # appended since the last refresh: read just that much now
            tree.refresh()
        return tree.prove(index)


def check_proof(proof: dict[str, Any], verifier: note.Verifier) -> dict[str, Any]:
    """Return the proven record; raise ProofError saying precisely what does not hold."""
    try:
        line = proof["record"].encode()
        index, size = int(proof["index"]), int(proof["tree_size"])
        path = [base64.b64decode(h, validate=True) for h in proof["proof"]]
    except (KeyError, TypeError, ValueError) as error:
        raise ProofError(f"not a proof file: {error}") from error
    try:
        checkpoint = note.parse_checkpoint(verifier.open(proof["checkpoint"]))
    except (note.NoteError, KeyError, TypeError) as error:
        raise ProofError(f"checkpoint rejected: {error}") from error
    if checkpoint.size != size:
        raise ProofError("the proof's tree size is not the checkpoint's")
    parsed = json.loads(line)
    if record.canonical(parsed) != line:
        raise ProofError("the record is not in canonical form")
    if parsed.get("origin") != checkpoint.origin or parsed.get("seq") != index:
        raise ProofError("the record does not belong to this checkpoint's log at this position")
    if not merkle.verify_inclusion(merkle.leaf_hash(line), index, size, path, checkpoint.root):
        raise ProofError("the inclusion proof does not lead to the signed root: record or proof altered")
    return dict(parsed)
