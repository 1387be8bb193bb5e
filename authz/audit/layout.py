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
from collections.abc import Iterator
from typing import IO, Any

__all__ = [
    "ARCHIVE_MARKER",
    "CHECKPOINTS",
    "CLOSED_MODE",
    "DIR_MODE",
    "FILE_MODE",
    "SegmentEvidence",
    "checkpoint_entries",
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


def checkpoint_entries(session_dir: pathlib.Path) -> Iterator[dict[str, Any]]:
    """The parseable lines of a session's checkpoints file, in order (a torn or edited line is
    skipped here; :mod:`authz.audit.verify` reports it)."""
    path = session_dir / CHECKPOINTS
    if not path.exists():
        return
    for line in path.read_bytes().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            yield entry


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
        directory.mkdir(mode=DIR_MODE)
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
    """The evidence for removing a closed segment, read in one pass; None if it cannot be read
    whole or no checkpoint of its session covers it yet (then it stays)."""
    try:
        lines = segment.read_bytes().split(b"\n")
        origin, last_seq = str(json.loads(lines[0])["origin"]), int(json.loads(lines[-2])["seq"])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None
    covering = [
        entry
        for entry in checkpoint_entries(segment.parent)
        if isinstance(entry.get("size"), int) and entry["size"] > last_seq and isinstance(entry.get("note"), str)
    ]
    if not covering:
        return None
    checkpoint = str(min(covering, key=lambda entry: entry["size"])["note"])
    return SegmentEvidence(origin, last_seq, checkpoint, tuple(_claims(lines)))


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
    staging.write_bytes(source.read_bytes())
    os.chmod(staging, CLOSED_MODE)
    os.replace(staging, copy)
