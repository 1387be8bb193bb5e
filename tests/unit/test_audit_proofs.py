"""Inclusion proofs from a session's tree kept up to date (:class:`authz.audit.proof.SessionTree`):
the same path as the reference computed from every leaf, checked with the verifier key, made by
reading at most two blocks of the log, and kept current by reading only what was appended."""

from __future__ import annotations

import base64
import json
import pathlib
from typing import Any

import pytest

from authz.audit import layout, merkle, note, proof, publish
from authz.audit import log as audit_log


def _open_log(directory: pathlib.Path, keys: pathlib.Path) -> audit_log.AuditLog:
    signer = note.Signer.from_skey((keys / "signing.key").read_text())
    # Small segments and frequent checkpoints: blocks cross segment files, and proofs have many
    # checkpoints to choose from.
    settings = audit_log.LogSettings(segment_max_bytes=20_000, checkpoint_every=97, checkpoint_seconds=3600)
    log = audit_log.AuditLog(directory, signer, instance="pod-1", settings=settings)
    log.open()
    return log


def _verifier(keys: pathlib.Path) -> note.Verifier:
    return note.Verifier((keys / "verifier.key").read_text())


def _append(log: audit_log.AuditLog, count: int) -> None:
    for _ in range(count):
        seq = log.size
        log.append({"v": 1, "kind": "loss", "id": f"id-{seq}", "time": "t", "time_ms": seq, "loss": {"count": 1}})
        if log.checkpoint_due():
            log.checkpoint()
        log.rotate_if_due()
    log.flush(fsync=False)


def _all_lines(log: audit_log.AuditLog) -> list[bytes]:
    return [
        line for segment in layout.session_segments(log.session_dir) for line in segment.read_bytes().splitlines(True)
    ]


def _spy_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The blocks each proof reads from disk (the real reads, counted)."""
    reads: list[int] = []
    real = proof.SessionTree._block_lines

    def counted(self: proof.SessionTree, block: int, count: int) -> list[bytes]:
        reads.append(block)
        return real(self, block, count)

    monkeypatch.setattr(proof.SessionTree, "_block_lines", counted)
    return reads


@pytest.fixture
def written(tmp_path: pathlib.Path, audit_keys: pathlib.Path) -> audit_log.AuditLog:
    log = _open_log(tmp_path / "audit", audit_keys)
    _append(log, 5 * proof.BLOCK + 40)
    log.close()
    return log


def test_every_proof_is_the_reference_path_and_reads_at_most_two_blocks(
    written: audit_log.AuditLog, audit_keys: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = _all_lines(written)
    assert len(layout.session_segments(written.session_dir)) > 5  # blocks cross segment files
    leaves = [merkle.leaf_hash(line) for line in lines]
    tree = proof.SessionTree([written.directory], pathlib.PurePath("pod-1", written.session))
    assert tree.refresh() == len(lines)
    verifier = _verifier(audit_keys)
    signed = {entry["size"] for entry in layout.checkpoint_entries(written.session_dir)}
    assert len(signed) > 10
    reads = _spy_reads(monkeypatch)
    for index in [0, 1, 96, 97, 255, 256, 511, 700, 1023, 1024, len(lines) - 2, len(lines) - 1]:
        reads.clear()
        made = tree.prove(index)
        assert made["record"].encode() == lines[index]
        size = made["tree_size"]
        assert size == min(s for s in signed if s > index)  # the smallest checkpoint that covers it
        assert [merkle.leaf_hash(line) for line in lines[:size]] == leaves[:size]
        reference = merkle.inclusion_path(index, size, leaves)  # from every leaf, no remembered roots
        assert made["proof"] == [base64.b64encode(h).decode() for h in reference]
        assert proof.check_proof(made, verifier)["seq"] == index
        assert len(reads) <= 2 and index // proof.BLOCK in reads, (index, reads)


def test_a_tree_reads_only_what_was_appended(
    tmp_path: pathlib.Path, audit_keys: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = _open_log(tmp_path / "audit", audit_keys)
    _append(log, 600)
    log.checkpoint()
    tree = proof.SessionTree([log.directory], pathlib.PurePath("pod-1", log.session))
    assert tree.refresh() == log.size > 600  # with session_start and segment_start records
    read = log.size
    _append(log, 300)
    with pytest.raises(proof.ProofError, match="newer than what has been read"):
        tree.prove(700)
    log.checkpoint()
    assert tree.refresh() == log.size - read  # what was read is not read again
    assert tree.refresh() == 0
    verifier = _verifier(audit_keys)
    assert proof.check_proof(tree.prove(700), verifier)["seq"] == 700
    assert proof.check_proof(tree.prove(3), verifier)["seq"] == 3
    with pytest.raises(proof.ProofError, match="no position"):
        tree.prove(-1)
    assert not tree.finished
    log.close()
    assert tree.refresh() == 1 and tree.finished  # the session_end record, under its final checkpoint
    assert proof.check_proof(tree.prove(tree.size - 1), verifier)["kind"] == "session_end"
    monkeypatch.setattr(tree, "_segments", lambda: pytest.fail("a finished session is read again"))
    assert tree.refresh() == 0


def test_no_proof_before_a_checkpoint_covers_the_record(tmp_path: pathlib.Path, audit_keys: pathlib.Path) -> None:
    log = _open_log(tmp_path / "audit", audit_keys)
    _append(log, 50)  # the last checkpoint is the one at open (size 1)
    tree = proof.SessionTree([log.directory], pathlib.PurePath("pod-1", log.session))
    tree.refresh()
    with pytest.raises(proof.ProofError, match="no signed checkpoint covers"):
        tree.prove(10)
    log.close()


def test_a_session_missing_its_first_segment_cannot_be_proven(
    written: audit_log.AuditLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout.session_segments(written.session_dir)[0].unlink()
    tree = proof.SessionTree([written.directory], pathlib.PurePath("pod-1", written.session))
    tree.refresh()
    with pytest.raises(proof.ProofError, match="partly removed"):
        tree.prove(tree.size - 1)


def test_trees_prove_what_they_have_read_and_catch_up_on_what_was_appended(
    tmp_path: pathlib.Path, audit_keys: pathlib.Path
) -> None:
    log = _open_log(tmp_path / "audit", audit_keys)
    _append(log, 300)
    log.checkpoint()  # the records are signed: provable
    trees = proof.Trees([log.directory])
    session = pathlib.PurePath("pod-1", log.session)
    with pytest.raises(proof.ProofError, match="not been read yet"):
        trees.prove(session, 5)
    assert trees.refresh() == log.size
    verifier = _verifier(audit_keys)
    made: dict[str, Any] = trees.prove(session, 5)
    assert proof.check_proof(made, verifier)["seq"] == 5
    # Appended since the last refresh: that session is read up to the end, then the record proven.
    _append(log, 300)
    log.checkpoint()
    newest = log.size - 1
    assert proof.check_proof(trees.prove(session, newest), verifier)["seq"] == newest
    assert trees.refresh() == 0
    log.close()


def test_an_unreadable_first_record_is_refused_and_other_sessions_still_prove(
    tmp_path: pathlib.Path, audit_keys: pathlib.Path
) -> None:
    damaged = _open_log(tmp_path / "audit", audit_keys)
    _append(damaged, 20)
    damaged.close()
    first = layout.session_segments(damaged.session_dir)[0]
    first.chmod(0o640)
    data = first.read_bytes()
    first.write_bytes(b"[]" + data[data.index(b"\n") :])  # JSON, but not a record
    healthy = _open_log(tmp_path / "audit", audit_keys)  # a later session of the same instance
    _append(healthy, 20)
    healthy.close()
    trees = proof.Trees([tmp_path / "audit"])
    assert trees.refresh() == damaged.size + healthy.size
    with pytest.raises(proof.ProofError, match="first record cannot be read"):
        trees.prove(pathlib.PurePath("pod-1", damaged.session), 5)
    verifier = _verifier(audit_keys)
    assert proof.check_proof(trees.prove(pathlib.PurePath("pod-1", healthy.session), 5), verifier)["seq"] == 5


def test_a_record_changed_after_it_was_read_gets_no_proof(written: audit_log.AuditLog) -> None:
    tree = proof.SessionTree([written.directory], pathlib.PurePath("pod-1", written.session))
    tree.refresh()
    segment = layout.session_segments(written.session_dir)[1]
    segment.chmod(0o640)
    lines = segment.read_bytes().splitlines(True)
    index = json.loads(lines[3])["seq"]
    lines[3] = lines[3].replace(b'"count":1', b'"count":2')
    segment.write_bytes(b"".join(lines))
    with pytest.raises(proof.ProofError, match="does not match its signed checkpoint"):
        tree.prove(index)
    assert tree.prove(index + proof.BLOCK)["index"] == index + proof.BLOCK  # another block: unaffected


def test_consistency_proofs_from_a_tree_are_the_reference_ones_and_read_at_most_two_blocks(
    written: audit_log.AuditLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    leaves = [merkle.leaf_hash(line) for line in _all_lines(written)]
    tree = proof.SessionTree([written.directory], pathlib.PurePath("pod-1", written.session))
    tree.refresh()
    reads = _spy_reads(monkeypatch)
    for old, new in [(1, 1), (1, 2), (3, 700), (256, 512), (300, 1024), (1000, len(leaves)), (700, 701)]:
        reads.clear()
        nodes = tree.consistency(old, new)
        assert nodes == merkle.consistency_proof(old, leaves, size=new), (old, new)
        assert merkle.verify_consistency(old, new, nodes, merkle.root_of(leaves[:old]), merkle.root_of(leaves[:new]))
        assert len(reads) <= 2, (old, new, reads)
    with pytest.raises(proof.ProofError, match="sizes must satisfy"):
        tree.consistency(5, len(leaves) + 1)


def test_the_witness_publisher_answers_from_the_same_trees(written: audit_log.AuditLog) -> None:
    origin = layout.origin_for("pod-1", written.session)
    publisher = publish.LogPublisher(written.directory, "127.0.0.1", 0).start()
    try:
        status, body = publisher.answer(f"/audit/v1/consistency?origin={origin}&old=10&new=900")
        assert status == 200 and len(body["proof"]) > 1
        status, body = publisher.answer(f"/audit/v1/consistency?origin={origin}&old=10&new={written.size + 1}")
        assert status == 400 and "sizes must satisfy" in body["error"]
        layout.session_segments(written.session_dir)[0].unlink()  # retention took the front
        fresh = publish.LogPublisher(written.directory, "127.0.0.1", 0).start()
        try:
            status, body = fresh.answer(f"/audit/v1/consistency?origin={origin}&old=10&new=900")
        finally:
            fresh.stop()
        assert status == 409 and "partly removed" in body["error"]
    finally:
        publisher.stop()
