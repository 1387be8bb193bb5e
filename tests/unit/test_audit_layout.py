"""The audit files on disk: who may read them, closed files read-only, and files that belong to no log."""

from __future__ import annotations

import grp
import os
import pathlib
import shutil
import stat
import threading

import pytest

from authz import cli
from authz.audit import layout, note
from authz.audit import log as audit_log


def _group() -> int:
    """A group the log may be given: any (root), else the caller's own."""
    return grp.getgrnam("daemon").gr_gid if os.geteuid() == 0 else os.getegid()


def _mode(path: pathlib.Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _write(
    directory: pathlib.Path, keys: pathlib.Path, group_id: int | None, *, close: bool = True
) -> audit_log.AuditLog:
    signer = note.Signer.from_skey((keys / "signing.key").read_text())
    settings = audit_log.LogSettings(segment_max_bytes=4096, checkpoint_every=5, group_id=group_id)
    log = audit_log.AuditLog(directory, signer, instance="pod-1", settings=settings)
    log.open()
    for index in range(40):
        log.append({"v": 1, "kind": "loss", "id": f"id-{index}", "time": "t", "time_ms": index, "loss": {"count": 1}})
        log.flush(fsync=False)
        if log.checkpoint_due():
            log.checkpoint()
        log.rotate_if_due()
    if close:
        log.close()
    return log


def test_modes_and_group(tmp_path: pathlib.Path, audit_keys: pathlib.Path) -> None:
    old_umask = os.umask(0o022)  # the modes must not depend on the umask
    try:
        group = _group()
        running = _write(tmp_path / "running", audit_keys, group, close=False)
        segments = layout.session_segments(running.session_dir)
        assert len(segments) > 2
        assert all(_mode(s) == layout.CLOSED_MODE for s in segments[:-1])  # rotated: read-only
        assert _mode(segments[-1]) == layout.FILE_MODE == 0o640  # being written
        assert _mode(running.session_dir / layout.CHECKPOINTS) == 0o640
        assert {_mode(d) for d in (running.session_dir, running.session_dir.parent, tmp_path / "running")} == {0o750}
        files = [*segments, running.session_dir / layout.CHECKPOINTS, running.session_dir]
        assert {path.stat().st_gid for path in files} == {group}
        running.close()
        assert {_mode(path) for path in [*segments, running.session_dir / layout.CHECKPOINTS]} == {0o440}
    finally:
        os.umask(old_umask)


def test_files_that_belong_to_no_log_are_named(
    tmp_path: pathlib.Path, audit_keys: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = _write(tmp_path / "audit", audit_keys, None)
    verify = ["audit", "verify", str(tmp_path / "audit"), "--key", str(audit_keys / "verifier.key")]
    assert cli.main(verify) == 0, capsys.readouterr()
    capsys.readouterr()
    first = layout.session_segments(log.session_dir)[0]
    shutil.copy(first, log.session_dir / "zz-old-segment.jsonl")
    (tmp_path / "audit" / "notes.txt").write_text("hello")
    (tmp_path / "audit" / ".DS_Store").write_text("")  # hidden files are not the log's
    assert cli.main(verify) == 1
    out = capsys.readouterr()
    text = out.out + out.err
    assert "zz-old-segment.jsonl: this file belongs to no log" in text and "notes.txt" in text
    assert ".DS_Store" not in text


def test_audit_group_flag(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "p.yaml").write_text(
        "apiVersion: tollgate.dev/v1alpha1\nkind: AccessPolicy\nmetadata: {name: p}\nspec: {hosts: [a.test]}\n"
    )
    code = cli.main(
        [
            "serve",
            "--config",
            str(tmp_path / "p.yaml"),
            "--audit-dir",
            str(tmp_path / "a"),
            "--audit-signing-key",
            "k",
            "--audit-pseudonym-keys",
            "k",
            "--audit-group",
            "no-such-group-here",
        ]
    )
    assert code == 2 and "--audit-group 'no-such-group-here': no such group" in capsys.readouterr().err


def test_workers_making_the_same_directory_at_once_all_succeed(tmp_path: pathlib.Path) -> None:
    # `tollgate serve --workers N` starts N processes that each make the audit directory; when it
    # is new, one may make it between another's check and its mkdir. Threads race the same way (the
    # checks and mkdir are system calls, made without the GIL), at once after a barrier.
    threads, failures = 8, list[OSError]()

    def make(target: pathlib.Path, barrier: threading.Barrier) -> None:
        barrier.wait()
        try:
            layout.make_dir(target, None)
        except OSError as error:
            failures.append(error)

    for round_ in range(40):
        target = tmp_path / f"round-{round_}" / "audit" / "pod-a"
        barrier = threading.Barrier(threads)
        started = [threading.Thread(target=make, args=(target, barrier)) for _ in range(threads)]
        for thread in started:
            thread.start()
        for thread in started:
            thread.join()
        assert target.is_dir() and _mode(target) == layout.DIR_MODE
    assert failures == []
