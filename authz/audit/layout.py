"""The audit trail on disk: which files are where, and reading them back. The one owner of it.

Layout::

    <dir>/<instance>/<session>/segment-00000001.jsonl   records, one canonical JSON line each
                              /segment-00000002.jsonl   (rotated by size or age)
                              /checkpoints.jsonl        signed checkpoints, one per line

An instance is one replica (the pod name); a session one run of it (a UUIDv7, so sessions sort
by start time). The writer (:mod:`authz.audit.log`), the verifier, search and proofs
(:mod:`~authz.audit.verify`, :mod:`~authz.audit.query`, :mod:`~authz.audit.proof`) all find files
through this module.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import shutil
from collections.abc import Iterator
from typing import IO, Any

__all__ = [
    "ARCHIVE_MARKER",
    "CHECKPOINTS",
    "CHUNK",
    "CLOSED_MODE",
    "DIR_MODE",
    "FILE_MODE",
    "MAX_CHECKPOINT_LINE",
    "MAX_RECORD_LINE",
    "Lines",
    "SegmentEvidence",
    "checkpoint_entries",
    "checkpoint_entries_newest_first",
    "copy_checkpoints",
    "has_sessions",
    "instance_segments",
    "is_archive",
    "make_dir",
    "mark_archive",
    "open_append",
    "origin_for",
    "seal",
    "segment_evidence",
    "segment_path",
    "segments",
    "session_segments",
    "sessions",
    "strays",
]

CHECKPOINTS = "checkpoints.jsonl"
# In the root of an archive directory: its sessions continue in the live directory, so a session
# whose newest records are missing here is not truncated (verify the two together for that).
ARCHIVE_MARKER = ".tollgate-archive"
# Who may read the log: the server's user writes, its group (an auditor's sidecar, a shipper) reads,
# nobody else. A file is made read-only once its session or segment is closed.
DIR_MODE = 0o750
FILE_MODE = 0o640
CLOSED_MODE = 0o440
_SEGMENT_GLOB = "segment-*.jsonl"
_SESSION = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_SEGMENT = re.compile(r"segment-[0-9]{8}\.jsonl")
# A checkpoints file grows by a line every 10 s per instance even when idle (the heartbeat), so a
# session that runs for a year has ~3 million lines (~780 MB): it is read a line at a time, never
# whole. A line is ~250 bytes; a longer one than this is not a checkpoint and is not kept in memory.
MAX_CHECKPOINT_LINE = 16 * 1024
# A record is bounded by the request it describes (a path, a few headers): far below this. Readers
# of segments hold one line at a time, at most this long; a longer one is not a record.
MAX_RECORD_LINE = 64 << 20
CHUNK = 1 << 16  # bytes per read of a log file: memory stays far below a long session's files


def origin_for(instance: str, session: str) -> str:
    """The checkpoint origin (C2SP signed-note) of one session's log."""
    return f"tollgate.dev/audit/{instance}/{session}"


def segment_path(session_dir: pathlib.Path, number: int) -> pathlib.Path:
    return session_dir / f"segment-{number:08d}.jsonl"


def sessions(directory: pathlib.Path) -> Iterator[tuple[str, list[pathlib.Path]]]:
    """(instance, [session directories, oldest first]) for every instance under ``directory``
    (none if it does not exist)."""
    if not directory.is_dir():
        return
    for instance_dir in sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found = sorted(p for p in instance_dir.iterdir() if p.is_dir())
        if found:
            yield instance_dir.name, found


def has_sessions(directory: pathlib.Path) -> bool:
    """Whether ``directory`` looks like an audit log directory: ``<instance>/<session>`` with a
    session named by a UUID. (Only the shape: whether its files are whole is the verifier's to say.)"""
    if not directory.is_dir():
        return False
    return any(_SESSION.fullmatch(session.name) for _, found in sessions(directory) for session in found)


def session_segments(session_dir: pathlib.Path) -> list[pathlib.Path]:
    """One session's segment files, in order."""
    return sorted(session_dir.glob(_SEGMENT_GLOB))


def segments(directory: pathlib.Path) -> list[pathlib.Path]:
    """Every segment under ``directory``: by instance, then session, then number."""
    return [segment for _, found in sessions(directory) for session in found for segment in session_segments(session)]


def instance_segments(directory: pathlib.Path, instance: str) -> list[pathlib.Path]:
    """One instance's segments, oldest first (retention removes from the front)."""
    return sorted((directory / instance).glob(f"*/{_SEGMENT_GLOB}"))


class _NoHash:
    def update(self, data: bytes) -> None:
        pass

    def copy(self) -> _NoHash:
        return self


class Lines:
    """The complete lines of an open file from where it stands, one at a time: memory stays under
    ``limit`` (plus a chunk) whatever the file's size. A line longer than ``limit`` is given as
    None (its bytes are not kept). Bytes after the last newline (a torn write) are not a line;
    :attr:`torn` says whether there were any once the lines are read. :attr:`hasher`, if one was
    given, has been fed exactly the complete lines' bytes.

    Each line is one ``readline(limit + 1)`` of the buffered file (C code, as fast as iterating
    over the file, which holds a line of any length), and only an overlong one is read on in
    chunks."""

    def __init__(self, handle: IO[bytes], *, limit: int = MAX_CHECKPOINT_LINE, hasher: Any = None) -> None:
        self._handle, self._limit = handle, limit
        self.hasher: Any = hasher if hasher is not None else _NoHash()
        self.complete = 0  # bytes of the complete lines read so far
        self.count = 0  # complete lines read so far
        self.torn = False

    def __iter__(self) -> Iterator[bytes | None]:
        readline, limit = self._handle.readline, self._limit
        while line := readline(limit + 1):
            if line[-1] == 10:  # b"\n": a whole line within the limit
                self.hasher.update(line)
                self.complete += len(line)
                self.count += 1
                yield line[:-1]
            elif len(line) <= limit:  # the file ends before this line does
                self.torn = True
                return
            else:  # overlong: hashed on a copy (the file may end before its newline), never kept
                overflow, length = self.hasher.copy(), len(line)
                overflow.update(line)
                while more := readline(CHUNK):
                    overflow.update(more)
                    length += len(more)
                    if more[-1] == 10:
                        break
                else:
                    self.torn = True
                    return
                self.hasher = overflow
                self.complete += length
                self.count += 1
                yield None


def _entry(line: bytes | None) -> dict[str, Any] | None:
    if line is None:
        return None
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) else None


def checkpoint_entries(session_dir: pathlib.Path) -> Iterator[dict[str, Any]]:
    """The parseable lines of a session's checkpoints file, in order, read a line at a time (a
    torn, overlong or edited line is skipped here; :mod:`authz.audit.verify` reports it)."""
    try:
        handle = (session_dir / CHECKPOINTS).open("rb")
    except FileNotFoundError:
        return
    with handle:
        for line in Lines(handle):
            entry = _entry(line)
            if entry is not None:
                yield entry


def checkpoint_entries_newest_first(session_dir: pathlib.Path) -> Iterator[dict[str, Any]]:
    """The parseable lines of a session's checkpoints file, newest first, read from the file's end
    a chunk at a time: finding the last checkpoint costs the same on a session of any age. A
    torn last line is given too (it may still parse); a line longer than
    :data:`MAX_CHECKPOINT_LINE` is skipped."""
    try:
        handle = (session_dir / CHECKPOINTS).open("rb")
    except FileNotFoundError:
        return
    with handle:
        for line in _lines_backwards(handle, MAX_CHECKPOINT_LINE):
            entry = _entry(line)
            if entry is not None:
                yield entry


def _lines_backwards(handle: IO[bytes], limit: int) -> Iterator[bytes]:
    """The lines of ``handle``, last first, each at most ``limit`` bytes (longer ones skipped)."""
    position = handle.seek(0, os.SEEK_END)
    pending, overflow = b"", False  # the end of the line being read backwards
    while position > 0:
        step = min(CHUNK, position)
        position -= step
        handle.seek(position)
        parts = handle.read(step).split(b"\n")
        if len(parts) == 1:
            pending = b"" if overflow else parts[0] + pending
            overflow = overflow or len(pending) > limit
            pending = b"" if overflow else pending
            continue
        tail = parts[-1] + pending
        if not overflow and len(tail) <= limit:
            yield tail
        for part in reversed(parts[1:-1]):
            if len(part) <= limit:
                yield part
        overflow = len(parts[0]) > limit
        pending = b"" if overflow else parts[0]
    if not overflow:
        yield pending


def strays(directory: pathlib.Path) -> list[pathlib.Path]:
    """Files under ``directory`` that belong to no log: anything but ``checkpoints.jsonl`` and
    ``segment-NNNNNNNN.jsonl`` inside ``<instance>/<session>/`` (hidden files and a volume's
    ``lost+found`` aside)."""
    found = []
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory)
        if relative.parts[0] == "lost+found" or any(part.startswith(".") for part in relative.parts):
            continue
        if path.is_dir():
            continue
        in_session = len(relative.parts) == 3
        if not (in_session and (relative.name == CHECKPOINTS or _SEGMENT.fullmatch(relative.name))):
            found.append(path)
    return found


def make_dir(path: pathlib.Path, group_id: int | None) -> None:
    """Create ``path`` (and its missing parents) with :data:`DIR_MODE`, in ``group_id`` if given."""
    missing = []
    current = path
    while not current.exists():
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=DIR_MODE)
        except FileExistsError:
            if not directory.is_dir():
                raise
            continue  # made meanwhile by another worker of the server (--workers), starting with this one
        os.chmod(directory, DIR_MODE)  # mkdir's mode is filtered by the umask
        if group_id is not None:
            os.chown(directory, -1, group_id)


def open_append(path: pathlib.Path, group_id: int | None) -> IO[bytes]:
    """Open a log file for appending, created with :data:`FILE_MODE` in ``group_id`` if given."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
    try:
        os.fchmod(descriptor, FILE_MODE)
        if group_id is not None:
            os.fchown(descriptor, -1, group_id)
    except OSError:
        os.close(descriptor)
        raise
    return os.fdopen(descriptor, "ab")


def seal(path: pathlib.Path) -> None:
    """A closed segment or checkpoints file: read-only from now on."""
    os.chmod(path, CLOSED_MODE)


@dataclasses.dataclass(frozen=True, slots=True)
class SegmentEvidence:
    """What retention records about a closed segment before it goes."""

    origin: str  # the log it belongs to
    last_seq: int  # its last record
    checkpoint: str  # a signed checkpoint of that log covering ``last_seq`` (note text)
    claims: tuple[dict[str, Any], ...]  # the retention records it holds (earlier removals)


def segment_evidence(segment: pathlib.Path) -> SegmentEvidence | None:
    """The evidence for removing a closed segment, read in one pass a line at a time (the server
    does this; a segment is up to 64 MiB); None if it cannot be read whole or no checkpoint of its
    session covers it yet (then it stays)."""
    first: bytes | None = None
    last: bytes | None = None
    claims: list[dict[str, Any]] = []
    try:
        with segment.open("rb") as handle:
            for number, line in enumerate(Lines(handle, limit=MAX_RECORD_LINE)):
                first = line if number == 0 else first
                last = line
                if line is not None and b'"kind":"retention"' in line:
                    claims.extend(_claims([line]))
        origin, last_seq = str(json.loads(first)["origin"]), int(json.loads(last)["seq"])  # type: ignore[arg-type]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None  # unreadable, empty, or a first or last line too long to be a record
    covering = next(
        (
            entry
            for entry in checkpoint_entries(segment.parent)
            if isinstance(entry.get("size"), int) and entry["size"] > last_seq and isinstance(entry.get("note"), str)
        ),
        None,
    )  # the first is the smallest: sizes only grow in a checkpoints file (and any covering one will do)
    if covering is None:
        return None
    return SegmentEvidence(origin, last_seq, str(covering["note"]), tuple(claims))


def _claims(lines: list[bytes]) -> list[dict[str, Any]]:
    found = []
    for line in lines:
        if b'"kind":"retention"' not in line:
            continue
        try:
            claim = json.loads(line)["retention"]
        except (ValueError, KeyError):
            continue
        if isinstance(claim, dict) and isinstance(claim.get("origin"), str) and isinstance(claim.get("last_seq"), int):
            found.append(claim)
    return found


def mark_archive(archive: pathlib.Path) -> None:
    marker = archive / ARCHIVE_MARKER
    if not marker.exists():
        marker.write_text(
            "segments moved here by tollgate's audit retention; their sessions continue in the live log\n"
        )


def is_archive(directory: pathlib.Path) -> bool:
    return (directory / ARCHIVE_MARKER).exists()


def copy_checkpoints(session_dir: pathlib.Path, target: pathlib.Path) -> None:
    """Copy a session's checkpoints beside its archived segments (replacing an older copy)."""
    source, copy = session_dir / CHECKPOINTS, target / CHECKPOINTS
    if not source.exists():
        return
    staging = target / (".staging-" + CHECKPOINTS)
    shutil.copyfile(source, staging)  # a chunk at a time: the file may be hundreds of megabytes
    os.chmod(staging, CLOSED_MODE)
    os.replace(staging, copy)
