"""The log writer's own lifecycle: idle heartbeats, rotation by age, retention and archiving."""

from __future__ import annotations

import asyncio
import json
import pathlib
from collections.abc import Awaitable, Callable

import pytest

from authz import cli, decision, loader
from authz.audit import log as audit_log
from authz.audit import note, pseudonym, recorder
from authz.dev import checks
from authz.identity import model

POLICY = """
apiVersion: tollgate.dev/v1alpha1
kind: AccessPolicy
metadata: {name: app}
spec: {hosts: [app.test], defaultAction: Allow}
"""


class Anonymous:
    def resolve_now(self, request: object, scope: object) -> model.Identity | None:
        return None  # always through the awaited path, as a token verified for the first time

    async def resolve(self, request: object, scope: object) -> model.Identity:
        return model.ANONYMOUS


@pytest.fixture
def keys(tmp_path: pathlib.Path) -> pathlib.Path:
    directory = tmp_path / "keys"
    skey, vkey = note.generate("tollgate.dev/audit/lifecycle")
    directory.mkdir()
    (directory / "signing.key").write_text(skey)
    (directory / "verifier.key").write_text(vkey)
    pseudonym.generate_key_file(directory / "pseudonyms.yaml", "k")
    (directory / "policy.yaml").write_text(POLICY)
    return directory


async def _run(
    keys: pathlib.Path, directory: pathlib.Path, settings: audit_log.LogSettings, count: int, idle: float = 0.0
) -> recorder.AuditRecorder:
    snapshot = loader.load(keys / "policy.yaml")
    log = audit_log.AuditLog(
        directory, note.Signer.from_skey((keys / "signing.key").read_text()), instance="pod", settings=settings
    )
    audit = recorder.AuditRecorder(log, pseudonym.load_keys(keys / "pseudonyms.yaml"))
    await audit.start()
    for index in range(count):
        result = await decision.decide_check(
            checks.check_request(host="app.test", path=f"/{index}"), snapshot, Anonymous()
        )
        await audit.record(result)
        if index % 10 == 0:
            await asyncio.sleep(0.01)
    await asyncio.sleep(idle)
    await audit.close()
    return audit


def _checkpoints(directory: pathlib.Path) -> list[dict[str, object]]:
    return [json.loads(line) for path in directory.rglob("checkpoints.jsonl") for line in path.read_text().splitlines()]


def test_idle_heartbeats_prove_silence(
    tmp_path: pathlib.Path, keys: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "audit"
    settings = audit_log.LogSettings(checkpoint_every=1000, checkpoint_seconds=0.2)
    asyncio.run(_run(keys, directory, settings, count=5, idle=1.2))
    entries = _checkpoints(directory)
    sizes = [entry["size"] for entry in entries]
    # While nothing happened, checkpoints of the same size kept coming, each freshly signed.
    assert sizes.count(6) >= 3, sizes
    times = [
        note.parse_checkpoint(note.Verifier((keys / "verifier.key").read_text()).open(str(e["note"]))).time_ms
        for e in entries
        if e["size"] == 6
    ]
    assert len(set(times)) == len(times) and times == sorted(times)
    assert cli.main(["audit", "verify", str(directory), "--key", str(keys / "verifier.key")]) == 0
    capsys.readouterr()


def test_rotation_by_age_and_retention_with_archive(
    tmp_path: pathlib.Path, keys: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory, archive = tmp_path / "audit", tmp_path / "archive"
    settings = audit_log.LogSettings(
        segment_max_seconds=0.02, checkpoint_every=5, retain_segments=3, archive_dir=archive
    )
    asyncio.run(_run(keys, directory, settings, count=300))
    kept = sorted(directory.rglob("segment-*.jsonl"))
    archived = sorted(archive.rglob("segment-*.jsonl"))
    assert len(kept) <= 4 and archived, (kept, archived)  # the newest 3, plus the one being written
    first = json.loads(kept[0].read_text().splitlines()[0])
    assert first["kind"] == "segment_start" and first["tree"]["size"] == first["seq"]
    key = ["--key", str(keys / "verifier.key")]
    # The live log alone: what went is accounted for by its signed retention records.
    code, out = _verify(capsys, str(directory), *key)
    assert code == 0 and "removed by retention (recorded in" in out, out
    # The archive alone: what it holds is authentic; that the session goes on elsewhere is expected.
    code, out = _verify(capsys, str(archive), *key)
    assert code == 0 and "are not in this archive" in out, out
    # Both together: one whole log.
    code, out = _verify(capsys, str(directory), str(archive), *key)
    assert code == 0, out
    assert "removed by retention" not in out and "not in this archive" not in out, out
    # An archived segment edited: caught by the archive's own copy of the checkpoints.
    edited = archived[1]
    edited.chmod(0o640)
    edited.write_bytes(edited.read_bytes().replace(b'"/1', b'"/9', 1))
    code, out = _verify(capsys, str(archive), *key)
    assert code == 1, out


def _verify(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = cli.main(["audit", "verify", *args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_retention_over_several_sessions_verifies_and_a_session_removed_by_hand_does_not(
    tmp_path: pathlib.Path, keys: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "audit"
    settings = audit_log.LogSettings(segment_max_bytes=3000, checkpoint_every=5, retain_segments=2)
    for _ in range(3):
        asyncio.run(_run(keys, directory, settings, count=40))
    sessions = sorted((directory / "pod").iterdir())
    assert len(sessions) == 3
    assert not list(sessions[0].glob("segment-*")), "retention emptied the oldest session"
    key = ["--key", str(keys / "verifier.key")]
    code, out = _verify(capsys, str(directory), *key)
    assert code == 0, out
    assert "removed by retention (recorded in" in out
    # A whole session deleted by hand (retention never removes a session's checkpoints).
    unretained = tmp_path / "unretained"
    plain = audit_log.LogSettings(checkpoint_every=5)
    for _ in range(2):
        asyncio.run(_run(keys, unretained, plain, count=10))
    first = sorted((unretained / "pod").iterdir())[0]
    for path in first.iterdir():
        path.unlink()
    first.rmdir()
    code, out = _verify(capsys, str(unretained), *key)
    assert code == 1 and "no retention record accounts for it: removed by hand" in out, out


def test_query_progress_bar(tmp_path: pathlib.Path, keys: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "audit"
    asyncio.run(_run(keys, directory, audit_log.LogSettings(), count=20))
    assert cli.main(["audit", "query", str(directory), "--format", "json", "--progress"]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 20
    assert "reading" in captured.err and "100%" in captured.err
    assert cli.main(["audit", "verify", str(directory), "--key", str(keys / "verifier.key"), "--progress"]) == 0
    assert "verifying" in capsys.readouterr().err


async def _sync_recorder(
    directory: pathlib.Path, keys: pathlib.Path
) -> tuple[recorder.AuditRecorder, Callable[[int], Awaitable[bool]]]:
    """A started sync-mode recorder, and a function that decides and records one Check."""
    snapshot = loader.load(keys / "policy.yaml")
    signer = note.Signer.from_skey((keys / "signing.key").read_text())
    log = audit_log.AuditLog(directory, signer, instance="pod-a", settings=audit_log.LogSettings())
    audit = recorder.AuditRecorder(log, pseudonym.load_keys(keys / "pseudonyms.yaml"), mode="sync")
    await audit.start()

    async def one(index: int) -> bool:
        item = await decision.decide_check(
            checks.check_request(host="app.test", path=f"/{index}"), snapshot, Anonymous()
        )
        return await audit.record(item)

    return audit, one


def test_sync_group_commit_waits_for_company_only_when_others_are_in_flight(
    tmp_path: pathlib.Path, keys: pathlib.Path
) -> None:
    async def scenario() -> tuple[int, int, bool, int, int]:
        audit, one = await _sync_recorder(tmp_path / "audit", keys)
        for index in range(5):  # one caller at a time: each record is its own batch, never delayed
            assert await one(index)
        alone = audit.batches, audit.written, audit._concurrent
        assert all(await asyncio.gather(*(one(index) for index in range(40))))  # many at once
        batches, written = audit.batches - alone[0], audit.written - alone[1]
        await audit.close()
        return alone[0], alone[1], alone[2], batches, written

    alone_batches, alone_written, concurrent_after_alone, batches, written = asyncio.run(scenario())
    assert (alone_batches, alone_written, concurrent_after_alone) == (5, 5, False)
    assert written == 40 and batches < 10  # acknowledged only once on disk, in shared fsyncs


def test_sync_commit_delay_lets_a_record_arriving_after_an_acknowledgement_share_the_next_fsync(
    tmp_path: pathlib.Path, keys: pathlib.Path
) -> None:
    # A is being written when B arrives; C comes the moment A is acknowledged. With the commit
    # delay the writer waits before taking B, so B and C share one fsync; without it, B would be
    # taken alone in the step that acknowledged A, and C would need a third.
    async def scenario() -> tuple[int, bool, int]:
        audit, one = await _sync_recorder(tmp_path / "audit", keys)
        first = asyncio.ensure_future(one(0))
        while not audit._pending:  # A queued
            await asyncio.sleep(0)
        while audit._pending:  # the writer has taken A and is writing it
            await asyncio.sleep(0)
        second = asyncio.ensure_future(one(1))
        assert await first
        third = asyncio.ensure_future(one(2))
        assert await second and await third
        batches, concurrent = audit.batches, audit._concurrent
        written = audit.written
        await audit.close()
        return batches, concurrent, written

    batches, concurrent_at_end, written = asyncio.run(scenario())
    assert (batches, written, concurrent_at_end) == (2, 3, False)
