"""Verifying a growing log again with what the last verification checked
(:mod:`authz.audit.checked`): only lines not checked before are read record by record, and the
report is always the one a verification from scratch gives — for a live log that grows, for a
checkpoint signed after its records were checked, and for bytes changed in a segment already
checked."""

from __future__ import annotations

import pathlib
import random
import time
from collections.abc import Iterator
from typing import Any

import pytest

from authz.audit import checked, note, pseudonym, verify
from authz.audit import log as audit_log
from authz.dev import auditlog


class Live:
    """A session being written by the real log writer, a few records at a time."""

    def __init__(self, directory: pathlib.Path, keys: pathlib.Path) -> None:
        signer = note.Signer.from_skey((keys / "signing.key").read_text())
        # Small segments: a few dozen records rotate, so several segments are replayed.
        settings = audit_log.LogSettings(segment_max_bytes=12_000, checkpoint_every=25, checkpoint_seconds=3600)
        self.log = audit_log.AuditLog(directory, signer, instance="pod-a", settings=settings)
        self.log.open()
        self.keys = pseudonym.load_keys(keys / "pseudonyms.yaml")
        self.rng = random.Random(7)

    def append(self, count: int, *, checkpoint: bool = True) -> None:
        auditlog.append_decisions(self.log, self.keys, self.rng, count, checkpoints=checkpoint)


@pytest.fixture
def live(tmp_path: pathlib.Path, audit_keys: pathlib.Path) -> Iterator[Live]:
    writer = Live(tmp_path / "audit", audit_keys)
    yield writer
    writer.log.close()


@pytest.fixture
def verifier(audit_keys: pathlib.Path) -> note.Verifier:
    return note.Verifier((audit_keys / "verifier.key").read_text())


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Where each record the verifier read record by record was."""
    seen: list[str] = []
    original = verify._check_record

    def counting(line: bytes, where: str, *args: Any, **kwargs: Any) -> None:
        seen.append(where)
        original(line, where, *args, **kwargs)

    monkeypatch.setattr(verify, "_check_record", counting)
    return seen


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Each checkpoint line the verifier opened (JSON and its signature)."""
    seen: list[bytes] = []
    original = verify._open_checkpoint

    def counting(line: bytes, *args: Any) -> Any:
        seen.append(line)
        return original(line, *args)

    monkeypatch.setattr(verify, "_open_checkpoint", counting)
    return seen


def _checkpoint_lines(directory: pathlib.Path) -> int:
    return sum(len(path.read_bytes().splitlines()) for path in directory.rglob("checkpoints.jsonl"))


def _both(directory: pathlib.Path, verifier: note.Verifier, cache: checked.Cache) -> verify.Report:
    """The cached verification, checked against one from scratch at the same instant."""
    now = time.time_ns() // 1_000_000
    cold = verify.verify_directory(directory, verifier, now_ms=now)
    warm = verify.verify_directory(directory, verifier, now_ms=now, cache=cache)
    assert warm == cold
    return warm


def test_only_new_records_are_read(live: Live, verifier: note.Verifier, checks: list[str], opened: list[bytes]) -> None:
    directory = live.log.directory
    cache = checked.Cache()
    live.append(100)
    first = verify.verify_directory(directory, verifier, cache=cache)
    assert first.exit_code == 0 and first.records == live.log.size
    segments = len(list(directory.rglob("segment-*.jsonl")))
    assert segments >= 3, "rotation must have happened for replay across segments to be tested"
    assert len(cache) == segments + 1  # and the session's checkpoints file
    assert len(checks) == live.log.size
    assert len(opened) == _checkpoint_lines(directory) >= 4
    checks.clear()
    opened.clear()

    again = verify.verify_directory(directory, verifier, cache=cache)
    assert again == first
    assert checks == [] and opened == [] and cache.replayed == segments

    size, signed = live.log.size, _checkpoint_lines(directory)
    live.append(40)  # into the live segment, and on into new ones
    live.log.checkpoint()
    checks.clear()
    grown = verify.verify_directory(directory, verifier, cache=cache)
    assert grown.exit_code == 0 and grown.records == live.log.size
    assert len(checks) == live.log.size - size  # the new records (with the segment_start ones), nothing else
    assert len(opened) == _checkpoint_lines(directory) - signed  # and the new checkpoints
    checks.clear()
    assert _both(directory, verifier, cache).exit_code == 0

    live.log.close()  # the session ends: sealed, checkpointed, and still replayed
    checks.clear()
    opened.clear()
    closed = verify.verify_directory(directory, verifier, cache=cache)
    assert closed.exit_code == 0 and closed.states[0].state == "closed"
    assert len(checks) == 1  # the session_end record
    assert len(opened) == 1  # and the checkpoint after it


def test_a_checkpoint_signed_after_its_records_were_checked(
    live: Live, verifier: note.Verifier, checks: list[str]
) -> None:
    # The verifier reads the checkpoints, then the segments: records written meanwhile are checked
    # before a checkpoint covering them exists. Its root must still be compared when it appears.
    directory = live.log.directory
    cache = checked.Cache()
    live.append(60)
    live.log.checkpoint()
    live.append(7, checkpoint=False)
    first = _both(directory, verifier, cache)
    assert first.exit_code == 0 and "live: records" in str(first.findings)
    live.log.checkpoint()  # signed at a size inside the segment already checked
    checks.clear()
    report = _both(directory, verifier, cache)
    assert report.exit_code == 0 and "every record is covered" in str(report.findings)
    assert checks, "the segment holding the newly signed size must be read again"


def test_bytes_changed_in_a_checked_file_are_found(live: Live, verifier: note.Verifier, tmp_path: pathlib.Path) -> None:
    directory = live.log.directory
    live.append(90)
    live.log.close()
    files = sorted(directory.rglob("segment-*.jsonl")) + sorted(directory.rglob("checkpoints.jsonl"))
    rng = random.Random(11)
    for attempt in range(24):
        cache = checked.Cache()
        assert verify.verify_directory(directory, verifier, cache=cache).exit_code == 0
        segment = rng.choice(files)
        original = segment.read_bytes()
        at = rng.randrange(len(original))
        changed = bytearray(original)
        changed[at] = (changed[at] + 1 + rng.randrange(255)) % 256
        segment.chmod(0o640)
        segment.write_bytes(bytes(changed))
        try:
            report = _both(directory, verifier, cache)
            assert report.exit_code != 0, f"attempt {attempt}: byte {at} of {segment.name} changed unnoticed"
        finally:
            segment.write_bytes(original)


def test_segments_gone_are_forgotten(live: Live, verifier: note.Verifier) -> None:
    directory = live.log.directory
    cache = checked.Cache()
    live.append(100)
    live.log.close()
    verify.verify_directory(directory, verifier, cache=cache)
    segments = sorted(directory.rglob("segment-*.jsonl"))
    assert len(cache) == len(segments) + 1  # and the checkpoints file
    segments[0].unlink()  # removed by hand: the report says so, and the cache lets it go
    report = _both(directory, verifier, cache)
    assert report.exit_code == 1
    assert len(cache) == len(segments)
