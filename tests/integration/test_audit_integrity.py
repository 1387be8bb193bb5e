"""The audit log, written by the real recorder, then tampered with in every way the verifier must
catch. Each case works on a fresh copy of a real log and checks the exit code and the message."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

from authz import cli, decision, loader
from authz.audit import checked, note, pseudonym, recorder, verify
from authz.audit import log as audit_log
from authz.dev import checks
from authz.identity import model

POLICY = """
apiVersion: tollgate.dev/v1alpha1
kind: AccessPolicy
metadata: {name: app}
spec:
  hosts: [app.test]
  rules: [{name: public, action: Allow, to: {paths: [/public]}}]
"""


class Known:
    def resolve_now(self, request: Any, scope: Any) -> model.Identity | None:
        return None  # always through the awaited path, as a token verified for the first time

    async def resolve(self, request: Any, scope: Any) -> model.Identity:
        return model.Identity(
            authenticated=True,
            method="jwt",
            subject="alice@corp.example",
            email="alice@corp.example",
            groups=("staff",),
        )


async def _write_session(directory: pathlib.Path, keys: pathlib.Path, count: int, *, crash: bool = False) -> None:
    snapshot = loader.load(keys / "policy.yaml")
    signer = note.Signer.from_skey((keys / "signing.key").read_text())
    settings = audit_log.LogSettings(segment_max_bytes=6000, checkpoint_every=10, checkpoint_seconds=3600)
    log = audit_log.AuditLog(directory, signer, instance="pod-a", settings=settings)
    audit = recorder.AuditRecorder(log, pseudonym.load_keys(keys / "pseudonyms.yaml"))
    await audit.start()
    for index in range(count):
        path = "/public" if index % 3 else f"/private/{index}"
        result = await decision.decide_check(
            checks.check_request(host="app.test", path=path, request_id=f"r{index}", source_ip="203.0.113.7"),
            snapshot,
            Known(),
        )
        await audit.record(result)
    if crash:  # the process dies with the records written but the session never closed
        while audit.written < count:
            await asyncio.sleep(0.01)
        os._exit(0)
    await audit.close()


@pytest.fixture(scope="module")
def keys(module_audit_keys: pathlib.Path) -> pathlib.Path:
    (module_audit_keys / "policy.yaml").write_text(POLICY)
    return module_audit_keys


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory, keys: pathlib.Path) -> pathlib.Path:
    directory = tmp_path_factory.mktemp("audit")
    asyncio.run(_write_session(directory, keys, 60))
    asyncio.run(_write_session(directory, keys, 45))
    return directory


@pytest.fixture
def log_copy(pristine: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
    target = tmp_path / "audit"
    shutil.copytree(pristine, target)
    for path in target.rglob("*.jsonl"):
        path.chmod(0o640)  # closed files are read-only; their owner (an attacker here) can change that
    return target


# Sessions here checkpoint hourly, so a crashed one still counts as live for two hours after.
LATER = str(time.time_ns() // 1_000_000 + 3 * 3600 * 1000)


def _verify(
    directory: pathlib.Path, keys: pathlib.Path, capsys: pytest.CaptureFixture[str], *extra: str
) -> tuple[int, str]:
    code = cli.main(["audit", "verify", str(directory), "--key", str(keys / "verifier.key"), *extra])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _sessions(directory: pathlib.Path) -> list[pathlib.Path]:
    return sorted((directory / "pod-a").iterdir())


def _segments(session: pathlib.Path) -> list[pathlib.Path]:
    return sorted(session.glob("segment-*.jsonl"))


def _lines(path: pathlib.Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def test_pristine_log_verifies(pristine: pathlib.Path, keys: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _verify(pristine, keys, capsys)
    assert code == 0, out
    assert "OK — 2 session(s), " in out
    sessions = _sessions(pristine)
    assert len(_segments(sessions[0])) > 2  # rotation happened, so segment state is exercised


def _edit(directory: pathlib.Path) -> None:
    segment = _segments(_sessions(directory)[0])[1]
    lines = _lines(segment)
    record = json.loads(lines[2])
    record["decision"] = "allow" if record["decision"] == "deny" else "deny"
    lines[2] = json.dumps(record, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    segment.write_bytes(b"".join(lines))


def _reserialize(directory: pathlib.Path) -> None:
    segment = _segments(_sessions(directory)[0])[1]
    lines = _lines(segment)
    lines[2] = json.dumps(json.loads(lines[2]), indent=None).encode() + b"\n"  # same content, other spacing
    segment.write_bytes(b"".join(lines))


def _delete(directory: pathlib.Path) -> None:
    segment = _segments(_sessions(directory)[0])[1]
    lines = _lines(segment)
    del lines[3]
    segment.write_bytes(b"".join(lines))


def _swap(directory: pathlib.Path) -> None:
    segment = _segments(_sessions(directory)[0])[1]
    lines = _lines(segment)
    lines[2], lines[3] = lines[3], lines[2]
    segment.write_bytes(b"".join(lines))


def _duplicate(directory: pathlib.Path) -> None:
    segment = _segments(_sessions(directory)[0])[1]
    lines = _lines(segment)
    lines.insert(3, lines[2])
    segment.write_bytes(b"".join(lines))


def _truncate_records(directory: pathlib.Path) -> None:
    segment = _segments(_sessions(directory)[-1])[-1]
    segment.write_bytes(b"".join(_lines(segment)[:-4]))


def _truncate_checkpoints(directory: pathlib.Path) -> None:
    checkpoints = _sessions(directory)[-1] / "checkpoints.jsonl"
    checkpoints.write_bytes(b"".join(_lines(checkpoints)[:-1]))


def _splice(directory: pathlib.Path) -> None:
    first, second = _sessions(directory)
    donor = _lines(_segments(second)[1])[1]
    segment = _segments(first)[1]
    lines = _lines(segment)
    lines.insert(2, donor)
    segment.write_bytes(b"".join(lines))


def _replay_segment(directory: pathlib.Path) -> None:
    segments = _segments(_sessions(directory)[0])
    shutil.copy(segments[1], segments[2])  # an old segment put back in a later one's place


def _rollback_session(directory: pathlib.Path) -> None:
    # The first session's tail and its last checkpoints rolled back together: the session looks
    # like a consistent crashed prefix, but the next session committed to its real end.
    first = _sessions(directory)[0]
    last_segment = _segments(first)[-1]
    last_segment.unlink()
    checkpoints = first / "checkpoints.jsonl"
    kept = [line for line in _lines(checkpoints) if json.loads(line)["size"] <= 40]
    checkpoints.write_bytes(b"".join(kept))
    for segment in _segments(first):
        lines = [line for line in _lines(segment) if json.loads(line)["seq"] < 40]
        segment.write_bytes(b"".join(lines))


def _forge_checkpoint(directory: pathlib.Path) -> None:
    checkpoints = _sessions(directory)[0] / "checkpoints.jsonl"
    lines = _lines(checkpoints)
    entry = json.loads(lines[2])
    entry["note"] = entry["note"].replace(f"\n{entry['size']}\n", f"\n{entry['size'] + 1}\n")
    entry["size"] += 1
    lines[2] = json.dumps(entry, sort_keys=True).encode() + b"\n"
    checkpoints.write_bytes(b"".join(lines))


def _equivocate(directory: pathlib.Path, keys: pathlib.Path) -> None:
    session = _sessions(directory)[0]
    checkpoints = session / "checkpoints.jsonl"
    entry = json.loads(_lines(checkpoints)[1])
    signed = note.Verifier((keys / "verifier.key").read_text()).open(entry["note"])
    real = note.parse_checkpoint(signed)
    fork = note.Checkpoint(real.origin, real.size, bytes(32), real.time_ms + 1)
    forged = note.Signer.from_skey((keys / "signing.key").read_text()).sign(fork.text())
    with checkpoints.open("ab") as handle:
        handle.write(json.dumps({"note": forged, "size": real.size}, sort_keys=True).encode() + b"\n")


def _remove_middle_session(directory: pathlib.Path, keys: pathlib.Path) -> None:
    asyncio.run(_write_session(directory, keys, 5))  # a third session
    shutil.rmtree(_sessions(directory)[1])


CASES: list[tuple[str, Callable[..., None], int, str]] = [
    ("edited-record", _edit, 1, "hash chain broken"),
    ("re-serialized-record", _reserialize, 1, "not in canonical form"),
    ("deleted-record", _delete, 1, "are missing (deleted)"),
    ("swapped-records", _swap, 1, "sequence goes backwards"),
    ("duplicate-seq", _duplicate, 1, "duplicate sequence number"),
    ("truncated-tail-records", _truncate_records, 1, "the tail was truncated"),
    ("truncated-tail-checkpoints", _truncate_checkpoints, 1, "checkpoints were removed"),
    ("spliced-from-other-session", _splice, 1, "spliced in from another instance or session"),
    ("replayed-old-segment", _replay_segment, 1, "sequence goes backwards"),
    ("rolled-back-session", _rollback_session, 1, "previous session truncated, rolled back or replaced"),
    ("forged-checkpoint", _forge_checkpoint, 1, "signature by the trusted key does not verify"),
]


@pytest.mark.parametrize(("tamper", "exit_code", "message"), [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_tampering_is_caught(
    log_copy: pathlib.Path,
    keys: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
    tamper: Callable[[pathlib.Path], None],
    exit_code: int,
    message: str,
) -> None:
    tamper(log_copy)
    code, out = _verify(log_copy, keys, capsys)
    assert code == exit_code, out
    assert message in out, out


WITH_KEYS: list[tuple[str, Callable[..., None]]] = [
    ("two-checkpoints-for-one-size", _equivocate),
    ("removed-middle-session", _remove_middle_session),
]


@pytest.mark.parametrize(
    ("tamper", "needs_keys"),
    [pytest.param(c[1], False, id=c[0]) for c in CASES] + [pytest.param(c[1], True, id=c[0]) for c in WITH_KEYS],
)
def test_a_warm_cache_finds_what_a_cold_verification_finds(
    log_copy: pathlib.Path, keys: pathlib.Path, tamper: Callable[..., None], needs_keys: bool
) -> None:
    # The web view verifies again with what it checked before (authz.audit.checked): tampering
    # after that verification must give exactly the report of a verification from scratch.
    verifier = note.Verifier((keys / "verifier.key").read_text())
    cache = checked.Cache()
    assert verify.verify_directory(log_copy, verifier, cache=cache).exit_code == 0
    if needs_keys:
        tamper(log_copy, keys)
    else:
        tamper(log_copy)
    now = time.time_ns() // 1_000_000
    warm = verify.verify_directory(log_copy, verifier, now_ms=now, cache=cache)
    cold = verify.verify_directory(log_copy, verifier, now_ms=now)
    assert warm.exit_code == 1, warm.findings
    assert warm == cold


def test_two_checkpoints_for_one_size(
    log_copy: pathlib.Path, keys: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _equivocate(log_copy, keys)
    code, out = _verify(log_copy, keys, capsys)
    assert code == 1 and "two different signed checkpoints for tree size" in out, out


def test_removed_session_breaks_the_session_chain(
    log_copy: pathlib.Path, keys: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _remove_middle_session(log_copy, keys)
    code, out = _verify(log_copy, keys, capsys)
    assert code == 1 and "previous session truncated, rolled back or replaced" in out, out


def test_wrong_key(log_copy: pathlib.Path, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "other"
    assert cli.main(["audit", "keygen", "--name", "tollgate.dev/audit/test", "--out", str(other)]) == 0
    capsys.readouterr()
    code, out = _verify(log_copy, other, capsys)
    assert code == 1 and "no signature by the trusted key" in out, out


def test_torn_last_line_is_a_crash_not_tampering(
    tmp_path: pathlib.Path, keys: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "crashed"
    script = (
        f"import asyncio, pathlib, runpy; module = runpy.run_path({__file__!r}); "
        f"asyncio.run(module['_write_session'](pathlib.Path({str(directory)!r}), pathlib.Path({str(keys)!r}), "
        f"25, crash=True))"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    last = _segments(_sessions(directory)[0])[-1]
    data = last.read_bytes()
    last.write_bytes(data[: len(data) - 40])  # the write of the last record was cut short
    code, out = _verify(directory, keys, capsys)
    assert code == 0 and "live:" in out and "(being written)" in out, out  # checkpointed an instant ago
    code, out = _verify(directory, keys, capsys, "--as-of", LATER)  # hours on, it never checkpointed again
    assert code == 3, out
    assert "torn last record" in out and "INCOMPLETE: crash artefacts only" in out


def test_trusted_checkpoint_catches_a_consistent_rollback(
    log_copy: pathlib.Path, keys: pathlib.Path, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # An auditor kept the latest checkpoint elsewhere; then the newest session is cut back to an
    # earlier, self-consistent state (records and checkpoints together).
    session = _sessions(log_copy)[-1]
    kept = tmp_path / "trusted.note"
    kept.write_text(json.loads(_lines(session / "checkpoints.jsonl")[-1])["note"])
    checkpoints = session / "checkpoints.jsonl"
    checkpoints.write_bytes(b"".join(line for line in _lines(checkpoints) if json.loads(line)["size"] <= 20))
    for segment in _segments(session):
        segment.write_bytes(b"".join(line for line in _lines(segment) if json.loads(line)["seq"] < 20))
    code, out = _verify(log_copy, keys, capsys, "--as-of", LATER)
    assert code == 3, out  # without outside knowledge it looks like a crash
    code, out = _verify(log_copy, keys, capsys, "--trusted", str(kept))
    assert code == 1 and "truncated or rolled back" in out, out


def test_segments_removed_by_hand_are_caught(
    tmp_path: pathlib.Path, keys: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # What retention does, done by hand: no retention record accounts for it (see test_audit_lifecycle).
    directory = tmp_path / "retained"
    asyncio.run(_write_session(directory, keys, 80))
    session = _sessions(directory)[0]
    segments = _segments(session)
    assert len(segments) > 3
    for old in segments[:2]:
        old.unlink()
    code, out = _verify(directory, keys, capsys)
    assert code == 1, out
    assert "are missing and no retention record accounts for them: removed by hand" in out


def test_proof_round_trip(
    pristine: pathlib.Path, keys: pathlib.Path, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    segment = _segments(_sessions(pristine)[0])[1]
    record_id = json.loads(_lines(segment)[1])["id"]
    proof_file = tmp_path / "proof.json"
    assert cli.main(["audit", "prove", str(pristine), "--record", record_id, "--out", str(proof_file)]) == 0
    assert cli.main(["audit", "verify-proof", str(proof_file), "--key", str(keys / "verifier.key")]) == 0
    assert f"record {record_id}" in capsys.readouterr().out
    document = json.loads(proof_file.read_text())
    document["record"] = document["record"].replace('"status":', '"status":1')
    proof_file.write_text(json.dumps(document))
    assert cli.main(["audit", "verify-proof", str(proof_file), "--key", str(keys / "verifier.key")]) == 1
    document = json.loads((tmp_path / "proof.json").read_text())
    assert "FAILED" in capsys.readouterr().err


def test_privacy_no_personal_data_in_clear(pristine: pathlib.Path, keys: pathlib.Path) -> None:
    for path in pristine.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert b"alice@corp.example" not in data, path
            assert b"203.0.113.7" not in data, path
    record = json.loads(_lines(_segments(_sessions(pristine)[0])[0])[1])
    assert len(record["identity"]["subject"]) == 32 and record["pseudonym_key"] == "k1"
    # The subject is the keyed HMAC of the real one (not a plain hash: see test_pseudonyms_are_keyed).
    pseudonyms = pseudonym.load_keys(keys / "pseudonyms.yaml")
    assert record["identity"]["subject"] == pseudonyms("alice@corp.example")
    assert record["request"]["source_ip"] == pseudonyms("203.0.113.7")


def test_pseudonyms_are_keyed(keys: pathlib.Path, tmp_path: pathlib.Path) -> None:
    first = pseudonym.load_keys(keys / "pseudonyms.yaml")
    rotated = tmp_path / "rotated.yaml"
    shutil.copy(keys / "pseudonyms.yaml", rotated)
    pseudonym.generate_key_file(rotated, "k2")
    second = pseudonym.load_keys(rotated)
    assert second.key_id == "k2"
    assert second("alice") != first("alice")  # a new key: new pseudonyms
    assert second.with_key("k1", "alice") == first("alice")  # old records stay searchable
