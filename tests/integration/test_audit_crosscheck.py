"""Go's own golang.org/x/mod/sumdb/note and sumdb/tlog accept Tollgate's signed checkpoints,
inclusion proofs and consistency proofs, and reject tampered copies: an implementation that is not
Tollgate's agrees with its formats (tests/crosscheck/checklog.go)."""

from __future__ import annotations

import base64
import json
import os
import pathlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2_grpc

from authz.audit import layout, merkle, note
from authz.dev import checks, harness

GOCODE = pathlib.Path("/usr/share/gocode/src/golang.org/x/mod/sumdb")
SOURCE = pathlib.Path(__file__).parents[1] / "crosscheck" / "checklog.go"
TOLLGATE = pathlib.Path(sys.executable).with_name("tollgate")
pytestmark = pytest.mark.skipif(
    shutil.which("go") is None or not GOCODE.is_dir(),
    reason="needs go and golang.org/x/mod (Debian golang-go and golang-golang-x-mod-dev; make test installs them "
    "as root)",
)


@pytest.fixture(scope="module")
def checklog(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    work = tmp_path_factory.mktemp("go")
    binary = work / "checklog"
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": "/usr/share/gocode", "GOCACHE": str(work / "cache")}
    subprocess.run(["go", "build", "-o", str(binary), str(SOURCE)], env=env, check=True, timeout=300)
    return binary


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[pathlib.Path, pathlib.Path]]:
    work = tmp_path_factory.mktemp("log")
    subprocess.run(
        [str(TOLLGATE), "audit", "keygen", "--name", "tollgate.dev/audit/x", "--out", str(work / "keys")],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [str(TOLLGATE), "audit", "pseudonym-key", "--file", str(work / "keys" / "pseudonyms.yaml"), "--id", "k"],
        check=True,
        capture_output=True,
    )
    (work / "config.yaml").write_text(
        "apiVersion: tollgate.dev/v1alpha1\nkind: AccessPolicy\nmetadata: {name: app}\n"
        "spec: {hosts: [app.test], defaultAction: Allow}\n"
    )
    flags = harness.audit_flags(work / "keys", work / "audit", "--audit-checkpoint-every", "7")
    authz = harness.TollgateProcess(work / "config.yaml", extra=flags).start()
    with grpc.insecure_channel(f"127.0.0.1:{authz.port}") as channel:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        for index in range(40):
            stub.Check(checks.check_request(host="app.test", path=f"/item/{index}"), timeout=5)
    authz.stop()
    yield work / "audit", work / "keys"


def _check(checklog: pathlib.Path, document: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(checklog)], input=json.dumps(document), capture_output=True, text=True, timeout=60, check=False
    )


def test_go_accepts_checkpoints_and_proofs_and_rejects_tampered_ones(
    checklog: pathlib.Path, log: tuple[pathlib.Path, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    directory, keys = log
    vkey = (keys / "verifier.key").read_text().strip()
    verifier = note.Verifier(vkey)
    [session] = [s for _, found in layout.sessions(directory) for s in found]
    entries = list(layout.checkpoint_entries(session))
    signed = {entry["size"]: entry["note"] for entry in entries}
    newest = max(signed)
    lines = [
        line for segment in layout.session_segments(session) for line in segment.read_bytes().splitlines(keepends=True)
    ]
    leaves = [merkle.leaf_hash(line) for line in lines]

    # An inclusion proof, as `tollgate audit prove` exports it.
    record_id = json.loads(lines[5])["id"]
    proof_file = tmp_path / "proof.json"
    subprocess.run(
        [str(TOLLGATE), "audit", "prove", str(directory), "--record", record_id, "--out", str(proof_file)], check=True
    )
    proof = json.loads(proof_file.read_text())
    proven = note.parse_checkpoint(verifier.open(proof["checkpoint"]))
    inclusion = {
        "record": proof["record"],
        "index": proof["index"],
        "size": proof["tree_size"],
        "root": base64.b64encode(proven.root).decode(),
        "proof": proof["proof"],
    }
    # A consistency proof between every signed size and the newest, as the publisher serves them.
    new_root = note.parse_checkpoint(verifier.open(signed[newest])).root
    older = [(old, text) for old, text in sorted(signed.items()) if 0 < old < newest]
    assert len(older) >= 3, sorted(signed)  # Go must see several proofs, not none
    for old, text in older:
        consistency = {
            "old": old,
            "new": newest,
            "old_root": base64.b64encode(note.parse_checkpoint(verifier.open(text)).root).decode(),
            "new_root": base64.b64encode(new_root).decode(),
            "proof": [base64.b64encode(node).decode() for node in merkle.consistency_proof(old, leaves[:newest])],
        }
        good = _check(checklog, {"vkey": vkey, "note": text, "inclusion": inclusion, "consistency": consistency})
        assert good.returncode == 0 and good.stdout.strip() == "ok", good.stderr
        bent = {**consistency, "proof": [*consistency["proof"][:-1], base64.b64encode(bytes(32)).decode()]}
        assert _check(checklog, {"vkey": vkey, "consistency": bent}).returncode == 1
    # Tampered copies: the checkpoint text, the record, the other key's view.
    altered_note = signed[newest].replace(f"\n{newest}\n", f"\n{newest + 1}\n", 1)
    assert "note: invalid signature" in _check(checklog, {"vkey": vkey, "note": altered_note}).stderr
    altered_record = {**inclusion, "record": inclusion["record"].replace("/item/", "/itex/", 1)}
    assert "inclusion" in _check(checklog, {"vkey": vkey, "inclusion": altered_record}).stderr
    _, other = note.generate("tollgate.dev/audit/x")
    assert _check(checklog, {"vkey": other, "note": signed[newest]}).returncode == 1
