"""The web view's verification process (:class:`authz.auditview.integrity.Integrity`): one process
for the server's life, keeping what it checked between verifications, still flagging tampering
done after a clean verification, and replaced when it dies."""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal

import pytest

from authz.audit import witness
from authz.auditview import integrity
from authz.dev import auditlog


def test_one_process_verifies_again_and_is_replaced_when_killed(tmp_path: pathlib.Path) -> None:
    written = auditlog.write_log(tmp_path, 300, segment_bytes=40_000)
    segment = sorted(written.directory.rglob("segment-*.jsonl"))[1]
    original = segment.read_bytes()
    watcher = integrity.Integrity([written.directory], written.verifier_key.read_text(), interval=0)

    async def scenario() -> None:
        try:
            await watcher.check()
            assert watcher.verdict is not None and watcher.verdict.state == "intact", watcher.verdict
            assert watcher._worker is not None
            first = watcher._worker.pid

            segment.chmod(0o640)
            segment.write_bytes(original.replace(b'"decision":"allow"', b'"decision":"deny"', 1))
            await watcher.check()
            assert watcher.verdict.state == "tampered"
            assert "hash chain broken" in str(watcher.verdict.problems)
            assert watcher._worker.pid == first  # the same process, with what it checked before

            assert first is not None
            os.kill(first, signal.SIGKILL)  # while idle: the next verification starts another process
            watcher._worker.join(5)
            segment.write_bytes(original)
            await watcher.check()
            assert watcher.verdict.state == "intact"
            second = watcher._worker.pid
            assert second is not None and second != first

            # Dying between the liveness check and the request (a race no test can time): the
            # process is killed, and only its liveness is faked. Said, then replaced.
            os.kill(second, signal.SIGKILL)
            watcher._worker.join(5)
            watcher._worker.is_alive = lambda: True  # type: ignore[method-assign]
            (written.directory / "new-file").write_text("")  # a change, so the next check runs
            with pytest.raises(RuntimeError, match=r"ended without a verdict \(exit -9\)"):
                await watcher.check()
            assert watcher._worker is None and watcher.verdict.state == "intact"  # the last verdict stays
            await watcher.check()
            assert watcher.verdict.state == "tampered"  # the stray file
            assert "belongs to no log" in str(watcher.verdict.problems)
        finally:
            watcher.close()
        assert watcher._worker is None

    asyncio.run(scenario())


def test_an_unreadable_witness_state_is_said_and_the_process_kept(tmp_path: pathlib.Path) -> None:
    written = auditlog.write_log(tmp_path, 50)
    state = tmp_path / "witness"
    state.mkdir()
    (state / witness.LATEST).write_text("{not json")
    watcher = integrity.Integrity([written.directory], written.verifier_key.read_text(), interval=0, witness=state)

    async def scenario() -> None:
        try:
            with pytest.raises(RuntimeError, match=r"the log could not be verified: JSONDecodeError: "):
                await watcher.check()
            assert watcher._worker is not None and watcher._worker.is_alive()
            first = watcher._worker.pid
            (state / witness.LATEST).unlink()
            await watcher.check()
            assert watcher.verdict is not None and watcher.verdict.state == "intact"
            assert watcher._worker.pid == first
        finally:
            watcher.close()

    asyncio.run(scenario())
