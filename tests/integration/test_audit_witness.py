"""Checkpoints leave the box: a real server publishes them, a real witness process checks each
extends the last (consistency proofs), cosigns and keeps it, and verify --witness catches a log
that was cut back afterwards; the witness refuses forked and rolled-back logs."""

from __future__ import annotations

import base64
import json
import pathlib
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2_grpc

from authz.audit import layout, merkle, note
from authz.audit import witness as witness_state
from authz.dev import checks, harness

TOLLGATE = pathlib.Path(sys.executable).with_name("tollgate")
CONFIG = """
apiVersion: tollgate.dev/v1alpha1
kind: AccessPolicy
metadata: {name: app}
spec: {hosts: [app.test], defaultAction: Allow}
"""


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(TOLLGATE), *args], capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def witness_keys(tmp_path: pathlib.Path) -> pathlib.Path:
    assert (
        run(
            "audit", "keygen", "--name", "tollgate.dev/witness/test", "--out", str(tmp_path / "witness-keys")
        ).returncode
        == 0
    )
    return tmp_path / "witness-keys"


def _checks(port: int, count: int, start: int = 0) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        for index in range(start, start + count):
            stub.Check(checks.check_request(host="app.test", path=f"/item/{index}"), timeout=5)


def _witness(
    url: str, keys: pathlib.Path, witness_keys: pathlib.Path, state: pathlib.Path
) -> subprocess.CompletedProcess[str]:
    return run(
        "audit", "witness", "--url", url, "--key", str(keys / "verifier.key"),
        "--signing-key", str(witness_keys / "signing.key"), "--state", str(state), "--once",
    )  # fmt: skip


def test_the_witness_catches_a_newest_session_cut_back(
    tmp_path: pathlib.Path, audit_keys: pathlib.Path, witness_keys: pathlib.Path
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    audit_dir, state = tmp_path / "audit", tmp_path / "witness"
    publish_port = harness.free_port()
    flags = [
        "--audit-instance",
        "pod-1",
        "--audit-checkpoint-seconds",
        "0.3",
        "--audit-witness-listen",
        f"127.0.0.1:{publish_port}",
    ]
    authz = harness.TollgateProcess(config, extra=harness.audit_flags(audit_keys, audit_dir, *flags)).start()
    url = f"http://127.0.0.1:{publish_port}"
    try:
        _checks(authz.port, 20)
        time.sleep(0.8)
        first = _witness(url, audit_keys, witness_keys, state)
        assert first.returncode == 0 and "accepted tollgate.dev/audit/pod-1/" in first.stdout, first.stderr
        _checks(authz.port, 20, start=20)
        time.sleep(0.8)
        second = _witness(url, audit_keys, witness_keys, state)  # larger: proven consistent with the first
        assert second.returncode == 0 and "accepted" in second.stdout, second.stderr
    finally:
        assert authz.process is not None
        authz.process.send_signal(signal.SIGTERM)
        authz.process.wait(15)
    [witnessed] = witness_state.accepted(state).values()
    assert witnessed.size >= 41
    # The history keeps every accepted checkpoint; a poll reads only the newest per log.
    assert len((state / witness_state.STATE).read_text().splitlines()) >= 2
    assert len(json.loads((state / witness_state.LATEST).read_text())) == 1
    # The cosignature is the witness's signed note over the checkpoint text.
    cosigned = note.Verifier((witness_keys / "verifier.key").read_text()).open(witnessed.cosignature)
    assert cosigned == note.Verifier((audit_keys / "verifier.key").read_text()).open(witnessed.checkpoint)

    key = ["--key", str(audit_keys / "verifier.key")]
    assert run("audit", "verify", str(audit_dir), *key, "--witness", str(state)).returncode == 0
    # Someone cuts the newest session back to 10 records, checkpoints and all: consistent on its own.
    [session] = [s for _, found in layout.sessions(audit_dir) for s in found]
    for segment in layout.session_segments(session):
        segment.chmod(0o640)
        lines = segment.read_bytes().splitlines(keepends=True)
        segment.write_bytes(b"".join(line for line in lines if json.loads(line)["seq"] < 10))
    checkpoints = session / layout.CHECKPOINTS
    checkpoints.chmod(0o640)
    kept = [line for line in checkpoints.read_bytes().splitlines(keepends=True) if json.loads(line)["size"] <= 10]
    checkpoints.write_bytes(b"".join(kept))
    later = str(time.time_ns() // 1_000_000 + 3600_000)
    alone = run("audit", "verify", str(audit_dir), *key, "--as-of", later)
    assert alone.returncode == 3, alone.stdout + alone.stderr  # without the witness: a crash, no more
    witnessed_run = run("audit", "verify", str(audit_dir), *key, "--as-of", later, "--witness", str(state))
    assert witnessed_run.returncode == 1 and "truncated or rolled back" in witnessed_run.stderr, witnessed_run.stderr


def _resign(session: pathlib.Path, signing_key: pathlib.Path, lines: list[bytes]) -> None:
    """What an attacker holding the log's key can do: sign a checkpoint over other records."""
    leaves = [merkle.leaf_hash(line) for line in lines]
    origin = json.loads(lines[0])["origin"]
    checkpoint = note.Checkpoint(origin, len(lines), merkle.root_of(leaves), time.time_ns() // 1_000_000)
    signed = note.Signer.from_skey(signing_key.read_text()).sign(checkpoint.text())
    path = session / layout.CHECKPOINTS
    path.chmod(0o640)
    with path.open("ab") as handle:
        handle.write(json.dumps({"note": signed, "size": len(lines)}, sort_keys=True).encode() + b"\n")
    [segment, *rest] = layout.session_segments(session)
    for other in rest:
        other.unlink()
    segment.chmod(0o640)
    segment.write_bytes(b"".join(lines))


@pytest.fixture
def published_log(tmp_path: pathlib.Path, audit_keys: pathlib.Path) -> pathlib.Path:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    audit_dir = tmp_path / "audit"
    authz = harness.TollgateProcess(
        config,
        extra=harness.audit_flags(audit_keys, audit_dir, "--audit-instance", "pod-1", "--audit-checkpoint-every", "4"),
    ).start()
    _checks(authz.port, 15)
    authz.stop()
    return audit_dir


def _restart_publisher(directory: pathlib.Path) -> tuple[subprocess.Popen[bytes], str]:
    port = harness.free_port()
    process = subprocess.Popen(
        [str(TOLLGATE), "audit", "publish", str(directory), "--listen", f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL
    )
    harness.wait_for_port(port)
    return process, f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("attack", ["fork", "rewritten-and-extended", "rollback"])
def test_the_witness_refuses_a_log_that_does_not_extend_what_it_saw(
    tmp_path: pathlib.Path,
    audit_keys: pathlib.Path,
    witness_keys: pathlib.Path,
    published_log: pathlib.Path,
    attack: str,
) -> None:
    state = tmp_path / "witness"
    process, url = _restart_publisher(published_log)
    try:
        assert _witness(url, audit_keys, witness_keys, state).returncode == 0
    finally:
        process.terminate()
        process.wait(10)
    [before] = witness_state.accepted(state).values()
    [session] = [s for _, found in layout.sessions(published_log) for s in found]
    lines = [
        line for segment in layout.session_segments(session) for line in segment.read_bytes().splitlines(keepends=True)
    ]
    assert len(lines) == before.size
    edited = [*lines]
    edited[3] = edited[3].replace(b'"/item/', b'"/itex/', 1)
    assert edited[3] != lines[3]
    if attack == "fork":
        _resign(session, audit_keys / "signing.key", edited)  # the same size, another root
    elif attack == "rewritten-and-extended":
        _resign(session, audit_keys / "signing.key", [*edited, edited[-1]])  # larger, but not an extension
    else:
        checkpoints = session / layout.CHECKPOINTS
        checkpoints.chmod(0o640)
        kept = [
            line
            for line in checkpoints.read_bytes().splitlines(keepends=True)
            if json.loads(line)["size"] < before.size
        ]
        checkpoints.write_bytes(b"".join(kept))
    process, url = _restart_publisher(published_log)
    try:
        refused = _witness(url, audit_keys, witness_keys, state)
    finally:
        process.terminate()
        process.wait(10)
    expected = {"fork": "forked", "rewritten-and-extended": "does not extend", "rollback": "rolled back"}[attack]
    assert refused.returncode == 1 and expected in refused.stderr, refused.stdout + refused.stderr
    assert witness_state.accepted(state)[before.origin] == before  # nothing refused is ever accepted
    assert expected in (state / witness_state.ALERTS).read_text()


def test_published_proofs_check_out_against_the_signed_roots(
    tmp_path: pathlib.Path, audit_keys: pathlib.Path, published_log: pathlib.Path
) -> None:
    process, url = _restart_publisher(published_log)
    try:
        with urllib.request.urlopen(url + "/audit/v1/checkpoints") as reply:
            [log] = json.loads(reply.read())["logs"]
        verifier = note.Verifier((audit_keys / "verifier.key").read_text())
        newest = note.parse_checkpoint(verifier.open(log["checkpoint"]))
        [session] = [s for _, found in layout.sessions(published_log) for s in found]
        signed = {
            entry["size"]: note.parse_checkpoint(verifier.open(entry["note"]))
            for entry in layout.checkpoint_entries(session)
        }
        checked = [old for old in sorted(signed) if 0 < old <= newest.size]
        assert len(checked) >= 3, signed  # several sizes, or this test would prove little
        for old in checked:
            query = f"/audit/v1/consistency?origin={log['origin']}&old={old}&new={newest.size}"
            with urllib.request.urlopen(url + query) as reply:
                proof = [base64.b64decode(node) for node in json.loads(reply.read())["proof"]]
            assert merkle.verify_consistency(old, newest.size, proof, signed[old].root, newest.root), old
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(url + f"/audit/v1/consistency?origin={log['origin']}&old=0&new=1")
        assert error.value.code == 400
        error.value.close()
    finally:
        process.terminate()
        process.wait(10)
