"""The append-only audit log of one server instance and boot session (files: :mod:`authz.audit.layout`).

Every line is a leaf of an RFC 6962 Merkle tree (leaf index = ``seq``) and carries the SHA-256 of
the line before it (``prev``): editing, removing, reordering or re-serializing any record breaks
both. Checkpoints sign (origin, size, root, time) with Ed25519 every N records or T seconds, and
periodically when idle, so a silent period is provably silent. Each session starts with a
``session_start`` record naming the previous session's last checkpoint; each segment starts with a
``segment_start`` record carrying the Merkle frontier, so segments removed by retention leave the
rest verifiable.

Not thread-safe: one writer (:mod:`authz.audit.recorder`) owns it. Durability is the caller's
choice (:meth:`flush` with or without fsync); a checkpoint never covers unsynced records.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import time
from typing import IO, Any

from authz import ids
from authz.audit import layout, merkle, note, record

__all__ = ["AuditLog", "LogSettings"]


@dataclasses.dataclass(frozen=True, slots=True)
class LogSettings:
    segment_max_bytes: int = 64 * 1024 * 1024
    segment_max_seconds: float = 3600.0
    checkpoint_every: int = 1000  # records
    checkpoint_seconds: float = 10.0  # also the idle heartbeat interval
    retain_segments: int = 0  # 0: keep everything; else keep this many newest segments per instance
    archive_dir: pathlib.Path | None = None  # set: retention moves segments here instead of deleting
    group_id: int | None = None  # the group that may read the log (default: the server's own)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class AuditLog:
    def __init__(self, directory: pathlib.Path, signer: note.Signer, *, instance: str, settings: LogSettings) -> None:
        if not instance or "/" in instance or instance.startswith("."):
            raise ValueError("an instance name is a non-empty path segment")
        self.directory = directory
        self.instance = instance
        self.signer = signer
        self.settings = settings
        self.session = ids.new_id()
        self.origin = layout.origin_for(instance, self.session)
        self.session_dir = directory / instance / self.session
        self.tree = merkle.CompactRange()
        self.size = 0
        self.checkpointed_size = -1
        self.last_checkpoint_ms = 0
        self._prev = ""
        self._segment_number = 0
        self._segment: IO[bytes] | None = None
        self._segment_bytes = 0
        self._segment_started = 0.0
        self._checkpoints: IO[bytes] | None = None
        self._dirty = False

    # -- lifecycle -------------------------------------------------------------------------
    def open(self) -> None:
        previous = self._previous_checkpoint()
        if self.session_dir.exists():
            raise FileExistsError(f"{self.session_dir} exists")
        layout.make_dir(self.session_dir, self.settings.group_id)
        self._checkpoints = layout.open_append(self.session_dir / layout.CHECKPOINTS, self.settings.group_id)
        self._open_segment(first=True)
        now = _now_ms()
        self.append(
            {
                "v": record.SCHEMA_VERSION,
                "kind": "session_start",
                "id": ids.new_id(),
                "time": record.format_time(now),
                "time_ms": now,
                "previous": previous,
                "server": {
                    "instance": self.instance,
                    "session": self.session,
                    "version": _version(),
                    "checkpoint_interval_ms": round(self.settings.checkpoint_seconds * 1000),
                },
            }
        )
        self.checkpoint()

    def close(self) -> None:
        if self._segment is None:
            return
        now = _now_ms()
        self.append(
            {
                "v": record.SCHEMA_VERSION,
                "kind": "session_end",
                "id": ids.new_id(),
                "time": record.format_time(now),
                "time_ms": now,
            }
        )
        self.checkpoint()
        self._segment.close()
        layout.seal(layout.segment_path(self.session_dir, self._segment_number))
        self._segment = None
        if self._checkpoints is not None:
            self._checkpoints.close()
            layout.seal(self.session_dir / layout.CHECKPOINTS)

    # -- writing ---------------------------------------------------------------------------
    def append(self, entry: dict[str, Any]) -> bytes:
        """Add one record (seq, origin and prev are filled in here); return its line."""
        assert self._segment is not None, "log is not open"
        entry["seq"] = self.size
        entry["origin"] = self.origin
        entry["prev"] = self._prev
        line = record.encode(entry)
        self._segment.write(line)
        self._segment_bytes += len(line)
        self._prev = hashlib.sha256(line).hexdigest()
        self.tree.append(merkle.leaf_hash(line))
        self.size += 1
        self._dirty = True
        return line

    def flush(self, *, fsync: bool) -> None:
        assert self._segment is not None
        self._segment.flush()
        if fsync and self._dirty:
            os.fsync(self._segment.fileno())
            self._dirty = False

    def checkpoint(self) -> str:
        """Sign the tree as it is now (also when unchanged: an idle heartbeat) and persist it."""
        assert self._checkpoints is not None
        self.flush(fsync=True)  # never sign what is not on disk
        now = _now_ms()
        signed = self.signer.sign(note.Checkpoint(self.origin, self.size, self.tree.root(), now).text())
        self._checkpoints.write(json.dumps({"note": signed, "size": self.size}, sort_keys=True).encode() + b"\n")
        self._checkpoints.flush()
        os.fsync(self._checkpoints.fileno())
        self.checkpointed_size = self.size
        self.last_checkpoint_ms = now
        return signed

    def checkpoint_due(self) -> bool:
        return (
            self.size - self.checkpointed_size >= self.settings.checkpoint_every
            or _now_ms() - self.last_checkpoint_ms >= self.settings.checkpoint_seconds * 1000
        )

    def rotation_due(self) -> bool:
        """Whether the current segment is full or old: cheap, for every record."""
        return (
            self._segment_bytes >= self.settings.segment_max_bytes
            or time.monotonic() - self._segment_started >= self.settings.segment_max_seconds
        )

    def rotate(self) -> None:
        """Checkpoint, close the segment, start the next, apply retention: disk work (fsync, and
        reading the segments retention removes), so the recorder runs it off the event loop."""
        self.checkpoint()
        assert self._segment is not None
        self._segment.close()
        layout.seal(layout.segment_path(self.session_dir, self._segment_number))
        self._open_segment(first=False)
        self.apply_retention()

    def rotate_if_due(self) -> None:
        if self.rotation_due():
            self.rotate()

    def _open_segment(self, *, first: bool) -> None:
        self._segment_number += 1
        path = layout.segment_path(self.session_dir, self._segment_number)
        self._segment = layout.open_append(path, self.settings.group_id)
        self._segment_bytes = 0
        self._segment_started = time.monotonic()
        if not first:
            now = _now_ms()
            state = {"hashes": [base64.b64encode(h).decode() for h in self.tree.hashes], "size": self.tree.size}
            self.append(
                {
                    "v": record.SCHEMA_VERSION,
                    "kind": "segment_start",
                    "id": ids.new_id(),
                    "time": record.format_time(now),
                    "time_ms": now,
                    "tree": state,
                }
            )

    # -- sessions and retention ------------------------------------------------------------
    def _previous_checkpoint(self) -> dict[str, Any] | None:
        """The last checkpoint of this instance's most recent earlier session, if any."""
        earlier = dict(layout.sessions(self.directory)).get(self.instance, [])
        for session_dir in reversed(earlier):
            for entry in layout.checkpoint_entries_newest_first(session_dir):
                try:
                    checkpoint = note.parse_checkpoint(entry["note"].split("\n\n")[0] + "\n")
                except (KeyError, AttributeError, note.NoteError):
                    continue  # a torn last line after a crash: the one before it is the last good one
                return {
                    "origin": checkpoint.origin,
                    "root": base64.b64encode(checkpoint.root).decode(),
                    "size": checkpoint.size,
                }
        return None

    def apply_retention(self) -> list[pathlib.Path]:
        """Remove (or archive) whole segments beyond the newest ``retain_segments`` of this instance.

        Evidence first: for each segment a ``retention`` record (its log, name, sequence range and
        the signed checkpoint that covered it) is written to this session's log and signed by a
        checkpoint before the segment goes, so ``verify`` can tell retention from deletion by hand.
        Archiving also copies the segment's session checkpoints, so the archive verifies on its own.
        """
        keep = self.settings.retain_segments
        if keep <= 0:
            return []
        segments = layout.instance_segments(self.directory, self.instance)
        current = layout.segment_path(self.session_dir, self._segment_number)
        doomed = [path for path in segments[: max(0, len(segments) - keep)] if path != current]
        evidence = {path: layout.segment_evidence(path) for path in doomed}
        found = {path: item for path, item in evidence.items() if item is not None}  # unreadable: stays
        if not found:
            return []
        archive = self.settings.archive_dir
        action = "archived" if archive is not None else "deleted"
        # Retention takes each log from its front, so one record per log says "everything up to
        # here went": the newest claim per log is kept, including claims carried by the segments
        # about to go (they are stated again here, or the evidence would go with them).
        claims: dict[str, dict[str, Any]] = {}
        for path, item in found.items():
            for carried in item.claims:
                _keep_newest(claims, carried)
            _keep_newest(
                claims,
                {
                    "origin": item.origin,
                    "segment": path.name,
                    "first_seq": 0,
                    "last_seq": item.last_seq,
                    "checkpoint": item.checkpoint,
                    "action": action,
                },
            )
        for claim in claims.values():
            now = _now_ms()
            self.append(
                {
                    "v": record.SCHEMA_VERSION,
                    "kind": "retention",
                    "id": ids.new_id(),
                    "time": record.format_time(now),
                    "time_ms": now,
                    "retention": claim,
                }
            )
        self.checkpoint()  # the evidence is signed before anything is removed
        for path in found:
            if archive is not None:
                target = archive / self.instance / path.parent.name
                layout.make_dir(target, self.settings.group_id)
                layout.mark_archive(archive)
                shutil.move(str(path), target / path.name)
                layout.copy_checkpoints(path.parent, target)
            else:
                path.unlink()
        return list(found)


def _keep_newest(claims: dict[str, dict[str, Any]], claim: dict[str, Any]) -> None:
    known = claims.get(claim["origin"])
    if known is None or known["last_seq"] < claim["last_seq"]:
        claims[claim["origin"]] = claim


def _version() -> str:
    from authz import __version__  # noqa: PLC0415 - avoid a cycle at import time

    return __version__
