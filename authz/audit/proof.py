"""Single-record proofs: ``tollgate audit prove`` and ``tollgate audit verify-proof``.

A proof file is self-contained JSON: the record line exactly as logged, its leaf index, the
signed checkpoint it is proven against, and the RFC 6962 audit path. Checking it needs nothing but
the file and the pinned verifier key.
"""

from __future__ import annotations

import base64
import json
import pathlib
from typing import Any

from authz.audit import layout, merkle, note, record

__all__ = ["ProofError", "check_proof", "make_proof"]


class ProofError(Exception):
    pass


def _find(directory: pathlib.Path, record_id: str) -> tuple[pathlib.Path, int]:
    needle = f'"id":"{record_id}"'.encode()
    for _, sessions in layout.sessions(directory):
        for session_dir in sessions:
            for segment in layout.session_segments(session_dir):
                for line in segment.read_bytes().splitlines():
                    if needle in line:
                        return session_dir, int(json.loads(line)["seq"])
    raise ProofError(f"no record with id {record_id} in {directory}")


def make_proof(directory: pathlib.Path, record_id: str) -> dict[str, Any]:
    session_dir, index = _find(directory, record_id)
    leaves: list[bytes] = []
    target = b""
    for segment in layout.session_segments(session_dir):
        for line in segment.read_bytes().split(b"\n")[:-1]:
            if len(leaves) == 0 and json.loads(line)["seq"] != 0:
                raise ProofError("the record's session was partly removed by retention; a proof needs all of it")
            if len(leaves) == index:
                target = line + b"\n"
            leaves.append(merkle.leaf_hash(line + b"\n"))
    entries = list(layout.checkpoint_entries(session_dir))
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
