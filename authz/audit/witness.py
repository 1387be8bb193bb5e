"""A witness: copies every new signed checkpoint off the box, checks it extends the last one it
accepted, cosigns it, and keeps it — so a log cut back, rolled back or forked on the server is
caught by ``tollgate audit verify --witness STATE`` even when its own checkpoints went too.

For each log a publisher (:mod:`authz.audit.publish`) lists, a new checkpoint must

- carry a valid signature by the log's pinned key, for the origin it is listed under;
- be no smaller than the last one accepted for that origin (smaller: a rollback);
- at the same size, have the same root (else: a fork);
- at a larger size, come with a consistency proof from the last accepted one (RFC 6962) that holds.

Accepted checkpoints are cosigned — a C2SP signed-note signature by the witness's own Ed25519 key
over the checkpoint text — and appended to ``STATE/witness.jsonl``; anything else is an alert
(``STATE/alerts.jsonl``, and a line on standard error), never accepted. The history is append-only:
the newest line per origin is what the witness vouches for. ``STATE/latest.json`` holds just those
newest lines (replaced atomically after each poll), so a poll reads one small file however long
the witness has run.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import pathlib
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

from authz.audit import merkle, note

__all__ = ["Alert", "Witnessed", "accepted", "poll"]

STATE = "witness.jsonl"
LATEST = "latest.json"
ALERTS = "alerts.jsonl"
_MAX_RESPONSE = 1 << 20


@dataclasses.dataclass(frozen=True, slots=True)
class Witnessed:
    """A checkpoint the witness accepted."""

    origin: str
    size: int
    root: bytes
    checkpoint: str  # the log's signed note
    cosignature: str  # the same text, signed by the witness
    time_ms: int


@dataclasses.dataclass(frozen=True, slots=True)
class Alert:
    source: str
    origin: str
    message: str

    def __str__(self) -> str:
        return f"ALERT: {self.source}: {self.origin or '-'}: {self.message}"


def accepted(state: pathlib.Path) -> dict[str, Witnessed]:
    """The newest accepted checkpoint per origin in a witness state directory."""
    found: dict[str, Witnessed] = {}
    latest, history = state / LATEST, state / STATE
    if latest.exists():
        lines = [json.dumps(entry).encode() for entry in json.loads(latest.read_text())]
    elif history.exists():
        lines = history.read_bytes().splitlines()  # a state written before latest.json existed
    else:
        return found
    for line in lines:
        try:
            entry = json.loads(line)
            item = Witnessed(
                origin=entry["origin"],
                size=int(entry["size"]),
                root=base64.b64decode(entry["root"]),
                checkpoint=entry["checkpoint"],
                cosignature=entry["cosignature"],
                time_ms=int(entry["time_ms"]),
            )
        except (ValueError, KeyError, TypeError):
            continue  # a torn last line after a crash of the witness itself
        found[item.origin] = item
    return found


def poll(
    urls: list[str], log_key: note.Verifier, signer: note.Signer, state: pathlib.Path, *, timeout: float = 10.0
) -> tuple[list[Witnessed], list[Alert]]:
    """One round over every publisher: what was newly accepted, and what was refused."""
    state.mkdir(parents=True, exist_ok=True)
    known = accepted(state)
    new: list[Witnessed] = []
    alerts: list[Alert] = []
    for url in urls:
        try:
            listing = _get(url, "/audit/v1/checkpoints", timeout)
            logs = listing["logs"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            alerts.append(Alert(url, "", f"cannot read the checkpoints ({error})"))
            continue
        for entry in logs if isinstance(logs, list) else []:
            outcome = _consider(url, entry, log_key=log_key, signer=signer, known=known, timeout=timeout)
            if isinstance(outcome, Alert):
                alerts.append(outcome)
            elif outcome is not None:
                known[outcome.origin] = outcome
                new.append(outcome)
    _append(state / STATE, (_state_line(item) for item in new))
    _append(state / ALERTS, (json.dumps(dataclasses.asdict(alert), sort_keys=True) for alert in alerts))
    if new or not (state / LATEST).exists():
        staging = state / (".staging-" + LATEST)
        staging.write_text(json.dumps([json.loads(_state_line(item)) for item in known.values()], sort_keys=True))
        os.replace(staging, state / LATEST)
    return new, alerts


def _consider(
    url: str,
    entry: Any,
    *,
    log_key: note.Verifier,
    signer: note.Signer,
    known: dict[str, Witnessed],
    timeout: float,
) -> Witnessed | Alert | None:
    origin = str(entry.get("origin", "")) if isinstance(entry, dict) else ""
    try:
        signed = str(entry["checkpoint"])
        checkpoint = note.parse_checkpoint(log_key.open(signed))
    except (KeyError, TypeError, note.NoteError) as error:
        return Alert(url, origin, f"checkpoint refused: {error}")
    if checkpoint.origin != origin:
        return Alert(url, origin, f"checkpoint is for {checkpoint.origin}, listed as {origin}")
    last = known.get(origin)
    if last is not None:
        if checkpoint.size < last.size:
            return Alert(url, origin, f"rolled back: size {checkpoint.size} after {last.size} was witnessed")
        if checkpoint.size == last.size:
            if checkpoint.root != last.root:
                return Alert(url, origin, f"forked: two different roots for size {checkpoint.size}")
            return None  # nothing new
        try:
            query = urllib.parse.urlencode({"origin": origin, "old": last.size, "new": checkpoint.size})
            proof = [base64.b64decode(node) for node in _get(url, f"/audit/v1/consistency?{query}", timeout)["proof"]]
        except (OSError, ValueError, KeyError, TypeError) as error:
            return Alert(url, origin, f"no consistency proof from size {last.size} ({error}): not accepted")
        if not merkle.verify_consistency(last.size, checkpoint.size, proof, last.root, checkpoint.root):
            return Alert(
                url,
                origin,
                f"size {checkpoint.size} does not extend the witnessed size {last.size}: forked or rewritten",
            )
    text = checkpoint.text()
    return Witnessed(
        origin=origin,
        size=checkpoint.size,
        root=checkpoint.root,
        checkpoint=signed,
        cosignature=signer.sign(text),
        time_ms=time.time_ns() // 1_000_000,
    )


def _get(url: str, path: str, timeout: float) -> Any:
    with urllib.request.urlopen(url.rstrip("/") + path, timeout=timeout) as reply:  # noqa: S310 - http(s) only
        return json.loads(reply.read(_MAX_RESPONSE))


def _state_line(item: Witnessed) -> str:
    return json.dumps(
        {
            "origin": item.origin,
            "size": item.size,
            "root": base64.b64encode(item.root).decode(),
            "checkpoint": item.checkpoint,
            "cosignature": item.cosignature,
            "time_ms": item.time_ms,
        },
        sort_keys=True,
    )


def _append(path: pathlib.Path, lines: Iterator[str]) -> None:
    text = "".join(line + "\n" for line in lines)
    if text:
        with path.open("a") as handle:
            handle.write(text)
            handle.flush()
