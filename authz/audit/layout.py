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

import json
import pathlib
import re
from collections.abc import Iterator
from typing import Any

__all__ = [
    "CHECKPOINTS",
    "checkpoint_entries",
    "has_sessions",
    "instance_segments",
    "origin_for",
    "segment_path",
    "segments",
    "session_segments",
    "sessions",
]

CHECKPOINTS = "checkpoints.jsonl"
_SEGMENT_GLOB = "segment-*.jsonl"
_SESSION = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


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
