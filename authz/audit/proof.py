"""Single-record proofs: ``tollgate audit prove`` and ``tollgate audit verify-proof``.

A proof file is self-contained JSON: the record line exactly as logged, its leaf index, the
signed checkpoint it is proven against, and the RFC 6962 audit path. Checking it needs nothing but
the file and the pinned verifier key.
"""

from __future__ import annotations

import base64
import json
import pathlib
from collections.abc import Sequence
from typing import Any

from authz.audit import layout, merkle, note, record

__all__ = ["ProofError", "check_proof", "make_proof"]


class ProofError(Exception):
    pass


def _session_dirs(directories: Sequence[pathlib.Path], record_id: str) -> tuple[list[pathlib.Path], int]:
    """The directories holding the record's session (the live log's, and its archive's), and the
    record's position in that session's log."""
    needle = f'"id":"{record_id}"'.encode()
    for directory in directories:
        for _, sessions in layout.sessions(directory):
            for session_dir in sessions:
                for segment in layout.session_segments(session_dir):
                    for line in segment.read_bytes().splitlines():
                        if needle in line:
                            relative = session_dir.relative_to(directory)
                            found = [d / relative for d in directories if (d / relative).is_dir()]
                            return found, int(json.loads(line)["seq"])
    raise ProofError(f"no record with id {record_id} in {', '.join(map(str, directories))}")


def make_proof(directory: pathlib.Path | Sequence[pathlib.Path], record_id: str) -> dict[str, Any]:
    """The proof of one record. ``directory``: the log, or the log and its archive (a session's
    older segments may have been archived by retention: the proof needs all of them)."""
    directories = [directory] if isinstance(directory, pathlib.Path) else list(directory)
    session_dirs, index = _session_dirs(directories, record_id)
    segments = sorted({s.name: s for d in session_dirs for s in layout.session_segments(d)}.items())
    leaves: list[bytes] = []
    target = b""
    for _, segment in segments:
        for line in segment.read_bytes().split(b"\n")[:-1]:
            if len(leaves) == 0 and json.loads(line)["seq"] != 0:
                raise ProofError(
                    "the record's session was partly removed by retention (or archived: give the archive too); "
                    "a proof needs all of it"
                )
            if len(leaves) == index:
                target = line + b"\n"
            leaves.append(merkle.leaf_hash(line + b"\n"))
    entries = [entry for d in session_dirs for entry in layout.checkpoint_entries(d)]
    covering = [e for e in entries if index < e["size"] <= len(leaves)]
    if not covering:
        raise ProofError("no signed checkpoint covers this record yet; try again after the next checkpoint")
    entry = min(covering, key=lambda e: e["size"])
    path = merkle.inclusion_proof(index, leaves[: entry["size"]])
    return {
        "format": "tollgate-inclusion-proof/v1",
        "record": target.decode(),
        "index": index,
        "tree_size": entry["size"],
        "checkpoint": entry["note"],
        "proof": [base64.b64encode(h).decode() for h in path],
    }


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
