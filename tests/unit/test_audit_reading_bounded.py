"""The audit files are read a line at a time, by the verifier and by the data plane alike.

An idle server signs a heartbeat checkpoint every 10 s, so a session that runs for a year has a
checkpoints file of ~3 million lines; segments are 64 MiB by default and may be set larger.
Reading them must not need memory that grows with them: the verifier (also in the web view's
sidecar), and the data plane itself at start-up (the previous session's last checkpoint), at
retention (a segment's first and last records, the checkpoint covering it) and when serving the
checkpoints witnesses fetch. Copies of a checkpoints file (the archive keeps one) are compared by
digest, and a copy that is not a prefix of the longest one is reported without hiding its lines.
"""

from __future__ import annotations

import hashlib
import io
import json
import pathlib
import random
import shutil
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest

from authz.audit import checked, layout, note, pseudonym, query, verify
from authz.audit import index as audit_index
from authz.audit import log as audit_log
from authz.audit import proof as audit_proof
from authz.audit import publish as audit_publish
from authz.dev import auditlog

HEARTBEATS = 6_000  # ~1.7 MB of checkpoint lines: what the old readers held several times over
SMALL = 300_000  # bytes: a few of the 64 KiB reads, whatever the file's size


def _lines_of(data: bytes, limit: int) -> list[bytes | None]:
    """The reference: complete lines, overlong ones as None."""
    complete = data[: data.rfind(b"\n") + 1]
    return [line if len(line) <= limit else None for line in complete.split(b"\n")[:-1]]


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 1 << 20])
def test_lines_read_in_chunks_are_the_files_lines(monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    monkeypatch.setattr(layout, "CHUNK", chunk)
    rng = random.Random(chunk)
    for _ in range(200):
        pieces = [bytes(rng.choice(b"ab\n") for _ in range(rng.randrange(0, 30))) for _ in range(rng.randrange(0, 6))]
        data = b"".join(pieces)
        limit = rng.randrange(1, 12)
        lines = layout.Lines(io.BytesIO(data), limit=limit, hasher=hashlib.sha256())
        got = list(lines)
        complete = data[: data.rfind(b"\n") + 1]
        assert got == _lines_of(data, limit), (data, limit)
        assert lines.complete == len(complete) and lines.count == complete.count(b"\n")
        assert lines.torn == (len(data) > len(complete))
        assert lines.hasher.digest() == hashlib.sha256(complete).digest(), (data, limit)
        backwards = list(layout._lines_backwards(io.BytesIO(data), limit))
        expected = [line for line in data.split(b"\n") if len(line) <= limit][::-1]
        assert backwards == expected, (data, limit)


def _heartbeats(directory: pathlib.Path, keys: pathlib.Path, count: int) -> audit_log.AuditLog:
    """A session that wrote a few records and then idled through ``count`` heartbeats."""
    signer = note.Signer.from_skey((keys / "signing.key").read_text())
    settings = audit_log.LogSettings(segment_max_bytes=4096, checkpoint_every=5, checkpoint_seconds=3600)
    log = audit_log.AuditLog(directory, signer, instance="pod-1", settings=settings)
    log.open()
    auditlog.append_decisions(log, pseudonym.load_keys(keys / "pseudonyms.yaml"), random.Random(3), 30)
    for _ in range(count):
        log.checkpoint()
    return log


def _peak(work: Callable[[], Any]) -> tuple[Any, int]:
    tracemalloc.start()
    try:
        result = work()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture(scope="module")
def idle_log(
    tmp_path_factory: pytest.TempPathFactory, module_audit_keys: pathlib.Path
) -> tuple[pathlib.Path, pathlib.Path, int]:
    base, keys = tmp_path_factory.mktemp("idle"), module_audit_keys
    clock = iter(range(time.time_ns() // 1_000_000 - 20_000 * HEARTBEATS, 1 << 62, 10_000))
    with pytest.MonkeyPatch.context() as patch:  # a heartbeat every 10 s, as a server signs them
        patch.setattr(audit_log, "_now_ms", lambda: next(clock))
        log = _heartbeats(base / "audit", keys, HEARTBEATS)
        log.close()
    size = (log.session_dir / layout.CHECKPOINTS).stat().st_size
    assert size > 1_000_000
    return base / "audit", keys, size


def test_verifying_a_long_idle_session_needs_little_memory(idle_log: tuple[pathlib.Path, pathlib.Path, int]) -> None:
    directory, keys, size = idle_log
    verifier = note.Verifier((keys / "verifier.key").read_text())
    report, peak = _peak(lambda: verify.verify_directory(directory, verifier))
    assert report.exit_code == 0 and report.checkpoints > HEARTBEATS
    assert peak < 2 * SMALL < size / 2, f"verification peaked at {peak} bytes for a {size}-byte checkpoints file"
    cache = checked.Cache()
    verify.verify_directory(directory, verifier, cache=cache)
    again, peak = _peak(lambda: verify.verify_directory(directory, verifier, cache=cache))
    assert again == report and peak < 2 * SMALL
    assert cache.replayed >= 1


def test_the_data_plane_reads_a_long_session_in_little_memory(
    idle_log: tuple[pathlib.Path, pathlib.Path, int], tmp_path: pathlib.Path
) -> None:
    directory, keys, _ = idle_log
    session = next(directory.glob("pod-1/*"))
    last = (session / layout.CHECKPOINTS).read_bytes().splitlines()[-1]

    newest, peak = _peak(lambda: next(layout.checkpoint_entries_newest_first(session)))
    assert newest == json.loads(last) and peak < SMALL

    # Start-up: a new session links to the previous one's last checkpoint.
    copy = tmp_path / "audit"
    shutil.copytree(directory, copy)
    signer = note.Signer.from_skey((keys / "signing.key").read_text())
    log = audit_log.AuditLog(copy, signer, instance="pod-1", settings=audit_log.LogSettings())
    previous, peak = _peak(log._previous_checkpoint)
    assert previous is not None and previous["size"] == json.loads(last)["size"] and peak < SMALL

    # Retention: the checkpoint covering the first segment, and the archive's copy of the file.
    first = layout.session_segments(session)[0]
    evidence, peak = _peak(lambda: layout.segment_evidence(first))
    assert evidence is not None and peak < SMALL
    target = tmp_path / "archive" / "pod-1" / session.name
    target.mkdir(parents=True)
    _, peak = _peak(lambda: layout.copy_checkpoints(session, target))
    assert (target / layout.CHECKPOINTS).read_bytes() == (session / layout.CHECKPOINTS).read_bytes()
    assert peak < SMALL

    # What witnesses fetch: each log's newest checkpoint.
    server = audit_publish.LogPublisher(directory, "127.0.0.1", 0).start()
    try:
        (status, body), peak = _peak(lambda: server.answer("/audit/v1/checkpoints"))
    finally:
        server.stop()
    assert status == 200 and [entry["checkpoint"] for entry in body["logs"]] == [json.loads(last)["note"]]
    assert peak < SMALL


def test_copies_of_a_checkpoints_file(tmp_path: pathlib.Path, audit_keys: pathlib.Path) -> None:
    verifier = note.Verifier((audit_keys / "verifier.key").read_text())
    log = _heartbeats(tmp_path / "live", audit_keys, 20)
    live = log.session_dir / layout.CHECKPOINTS
    archive = tmp_path / "archive" / "pod-1" / log.session_dir.name
    archive.mkdir(parents=True)
    layout.copy_checkpoints(log.session_dir, archive)  # the archive's copy, then the live file grows
    for _ in range(5):
        log.checkpoint()
    log.close()
    lines = live.read_bytes().splitlines(keepends=True)
    directories = [tmp_path / "live", tmp_path / "archive"]
    now = time.time_ns() // 1_000_000

    report = verify.verify_directory(directories, verifier, now_ms=now)
    assert report.exit_code == 0, report.findings
    assert report.checkpoints == len(lines)  # the archive's lines are the live file's first ones: counted once
    assert verify.verify_directory(directories[::-1], verifier, now_ms=now) == report

    # A line removed from the live file: the archive still has it, and says the copies differ.
    gone = 12
    live.chmod(0o640)
    live.write_bytes(b"".join(lines[:gone] + lines[gone + 1 :]))
    report = verify.verify_directory(directories, verifier, now_ms=now)
    messages = [(finding.where, finding.message) for finding in report.findings if finding.severity == "integrity"]
    assert (str(archive / layout.CHECKPOINTS), f"differs from {live}: two versions of one checkpoints file") in messages
    assert report.checkpoints >= len(lines)  # the removed line is counted from the archive's copy

    # A line changed in the archive's copy only: reported, and its own lines still checked.
    live.write_bytes(b"".join(lines))
    copied = (archive / layout.CHECKPOINTS).read_bytes().splitlines(keepends=True)
    copied[3] = b'{"note": "forged", "size": 1}\n'
    (archive / layout.CHECKPOINTS).chmod(0o640)
    (archive / layout.CHECKPOINTS).write_bytes(b"".join(copied))
    report = verify.verify_directory(directories, verifier, now_ms=now)
    wheres = {finding.where: finding.message for finding in report.findings if finding.severity == "integrity"}
    assert f"{archive / layout.CHECKPOINTS}:4" in wheres, wheres
    assert "differs from" in wheres[str(archive / layout.CHECKPOINTS)]


def test_an_overlong_line_is_a_finding_not_a_read(tmp_path: pathlib.Path, audit_keys: pathlib.Path) -> None:
    verifier = note.Verifier((audit_keys / "verifier.key").read_text())
    log = _heartbeats(tmp_path / "live", audit_keys, 3)
    log.close()
    path = log.session_dir / layout.CHECKPOINTS
    path.chmod(0o640)
    with path.open("ab") as handle:
        handle.write(b"x" * (layout.MAX_CHECKPOINT_LINE * 40) + b"\n")
    lines = path.read_bytes().count(b"\n")
    report, peak = _peak(lambda: verify.verify_directory(tmp_path / "live", verifier))
    wheres = {finding.where: finding.message for finding in report.findings}
    assert wheres[f"{path}:{lines}"] == f"checkpoint line is longer than {layout.MAX_CHECKPOINT_LINE} bytes"
    assert report.exit_code == 1
    assert peak < SMALL  # the 640 KiB line was never held whole


def test_retention_reads_a_segment_a_line_at_a_time(tmp_path: pathlib.Path, audit_keys: pathlib.Path) -> None:
    signer = note.Signer.from_skey((audit_keys / "signing.key").read_text())
    settings = audit_log.LogSettings(segment_max_bytes=2_000_000, checkpoint_every=500, checkpoint_seconds=3600)
    log = audit_log.AuditLog(tmp_path / "audit", signer, instance="pod-1", settings=settings)
    log.open()
    auditlog.append_decisions(log, pseudonym.load_keys(audit_keys / "pseudonyms.yaml"), random.Random(9), 2_500)
    log.close()
    first = layout.session_segments(log.session_dir)[0]
    lines = first.read_bytes().splitlines()
    assert len(lines) > 1_000 and first.stat().st_size > 3 * SMALL
    evidence, peak = _peak(lambda: layout.segment_evidence(first))
    assert evidence is not None and peak < SMALL
    assert evidence.origin == json.loads(lines[0])["origin"] and evidence.last_seq == json.loads(lines[-1])["seq"]
    signed = note.parse_checkpoint(evidence.checkpoint.split("\n\n")[0] + "\n")
    assert signed.size > evidence.last_seq


def test_verifying_a_large_segment_needs_little_memory(tmp_path: pathlib.Path, audit_keys: pathlib.Path) -> None:
    verifier = note.Verifier((audit_keys / "verifier.key").read_text())
    signer = note.Signer.from_skey((audit_keys / "signing.key").read_text())
    settings = audit_log.LogSettings(segment_max_bytes=64 << 20, checkpoint_every=1000, checkpoint_seconds=3600)
    log = audit_log.AuditLog(tmp_path / "audit", signer, instance="pod-1", settings=settings)
    log.open()
    auditlog.append_decisions(log, pseudonym.load_keys(audit_keys / "pseudonyms.yaml"), random.Random(4), 3_000)
    log.close()
    [segment] = layout.session_segments(log.session_dir)
    size = segment.stat().st_size
    assert size > 2_000_000
    report, peak = _peak(lambda: verify.verify_directory(tmp_path / "audit", verifier))
    assert report.exit_code == 0 and report.records == log.size
    assert peak < 2 * SMALL < size / 3, f"verification peaked at {peak} bytes for a {size}-byte segment"
    cache = checked.Cache()
    verify.verify_directory(tmp_path / "audit", verifier, cache=cache)
    again, peak = _peak(lambda: verify.verify_directory(tmp_path / "audit", verifier, cache=cache))
    assert again == report and cache.replayed == 1 and peak < 2 * SMALL

    # A line longer than any record is a finding, and is not held either.
    segment.chmod(0o640)
    with segment.open("ab") as handle:
        handle.write(b"y" * (4 * SMALL) + b"\n")
    lines = segment.read_bytes().count(b"\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(layout, "MAX_RECORD_LINE", SMALL)
        report, peak = _peak(lambda: verify.verify_directory(tmp_path / "audit", verifier))
    wheres = {finding.where: finding.message for finding in report.findings}
    assert wheres[f"{segment.name}:{lines}"] == f"record line is longer than {SMALL} bytes: not a record"
    assert report.exit_code == 1 and peak < 3 * SMALL


def test_the_auditors_readers_skip_an_overlong_line_without_holding_it(
    tmp_path: pathlib.Path, audit_keys: pathlib.Path
) -> None:
    """`tollgate audit query`, the web view's index and its proof trees read segments a line at a
    time too: a line longer than any record (a tampered or broken file) is passed over in little
    memory, the records around it are still found, and a proof across it is refused."""
    signer = note.Signer.from_skey((audit_keys / "signing.key").read_text())
    settings = audit_log.LogSettings(segment_max_bytes=64 << 20, checkpoint_every=100, checkpoint_seconds=3600)
    log = audit_log.AuditLog(tmp_path / "audit", signer, instance="pod-1", settings=settings)
    log.open()
    keys = pseudonym.load_keys(audit_keys / "pseudonyms.yaml")
    auditlog.append_decisions(log, keys, random.Random(5), 300)
    log.close()
    [segment] = layout.session_segments(log.session_dir)
    records = segment.read_bytes().splitlines()
    expected = [json.loads(line)["id"] for line in records if json.loads(line)["kind"] == "decision"]
    segment.chmod(0o640)
    with segment.open("r+b") as handle:  # the overlong line goes in after the first 100 records
        head = b"".join(line + b"\n" for line in records[:100])
        handle.write(head + b"y" * (4 * SMALL) + b"\n" + b"".join(line + b"\n" for line in records[100:]))
    size = segment.stat().st_size
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(layout, "MAX_RECORD_LINE", SMALL)
        read: list[int] = []
        found, peak = _peak(
            lambda: [item["id"] for item in query.iter_records(tmp_path / "audit", query.Filters(), read.append)]
        )
        assert found == expected and sum(read) == size
        assert peak < 3 * SMALL, f"query peaked at {peak} bytes"

        index = audit_index.Index(tmp_path / "index.sqlite", [tmp_path / "audit"])
        _, peak = _peak(index.refresh)
        assert peak < 3 * SMALL, f"indexing peaked at {peak} bytes"
        with index.reader() as reader:
            assert reader.count(query.Filters()) == len(expected)
            where = reader.locate(expected[-1])
        assert where is not None
        path, offset, length = where
        with path.open("rb") as handle:  # the offsets past the overlong line are the file's
            handle.seek(offset)
            assert json.loads(handle.read(length))["id"] == expected[-1]

        tree = audit_proof.SessionTree([tmp_path / "audit"], log.session_dir.relative_to(tmp_path / "audit"))
        _, peak = _peak(tree.refresh)
        assert tree.size == 100 and peak < 3 * SMALL, f"the proof tree peaked at {peak} bytes"
        with pytest.raises(audit_proof.ProofError, match=f"has a line longer than {SMALL} bytes"):
            tree.prove(5)
