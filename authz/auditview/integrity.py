"""The integrity verdict every page shows: ``tollgate audit verify`` run again and again.

Verification reads every record (and, given a witness's state, checks that the log still holds
every checkpoint the witness accepted, as ``tollgate audit verify --witness``). So it runs in a
separate process, which must not hold the event loop or the pages' GIL, at most once per interval
and again whenever a file of the log (or the witness's state) changed. The process lives as long
as the server and keeps what it checked (:mod:`authz.audit.checked`): after the first
verification, each costs the records added since and a SHA-256 of the bytes checked before,
with the same verdict as reading everything again. The newest verdict is kept
until the next is ready: a tampered log stays flagged; it is never hidden by a verification still
in progress.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import multiprocessing
import pathlib
import stat
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection

from authz.audit import checked, note
from authz.audit import verify as audit_verify
from authz.audit import witness as witness_state

__all__ = ["Integrity", "Verdict"]


@dataclasses.dataclass(frozen=True)
class Witnessed:
    """What a witness accepted for one log: the newest checkpoint it vouches for."""

    origin: str
    size: int
    time_ms: int


@dataclasses.dataclass(frozen=True)
class Verdict:
    """One verification's outcome."""

    report: audit_verify.Report
    finished_ms: int
    seconds: float
    witnessed: tuple[Witnessed, ...] = ()
    witness_alerts: tuple[str, ...] = ()  # the newest of what the witness refused, newest last

    @property
    def state(self) -> str:
        """tampered | crashed | intact"""
        return {1: "tampered", 3: "crashed"}.get(self.report.exit_code, "intact")

    @property
    def problems(self) -> list[audit_verify.Finding]:
        return [f for f in self.report.findings if f.severity != "info"]


_Answer = tuple[audit_verify.Report, tuple[Witnessed, ...], tuple[str, ...]]


def _serve(directories: list[str], key: str, witness: str, channel: Connection) -> None:
    """In the verification process, for as long as the server runs: for each request on
    ``channel``, send the verifier's report and what the witness (if any) accepted — each accepted
    checkpoint being one the log must still hold (as ``audit verify --witness``). What one
    verification checked is kept for the next (:mod:`authz.audit.checked`), so a growing log costs
    its new records and a SHA-256 of the rest."""
    verifier = note.Verifier(key)
    cache = checked.Cache()
    paths = [pathlib.Path(d) for d in directories]
    while True:
        try:
            channel.recv()
        except EOFError:  # the server closed its end
            return
        try:
            accepted = list(witness_state.accepted(pathlib.Path(witness)).values()) if witness else []
            trusted = [note.parse_checkpoint(verifier.open(item.checkpoint)) for item in accepted]
            report = audit_verify.verify_directory(paths, verifier, trusted=trusted, cache=cache)
            witnessed = tuple(Witnessed(item.origin, item.size, item.time_ms) for item in accepted)
            answer: _Answer | str = (report, witnessed, _newest_alerts(pathlib.Path(witness)) if witness else ())
        except (OSError, ValueError, note.NoteError) as error:  # an unreadable file: said on every page
            answer = f"{type(error).__name__}: {error}"
        channel.send(answer)


def _newest_alerts(state: pathlib.Path, count: int = 20) -> tuple[str, ...]:
    """The newest ``count`` alerts of a witness (its refusals: rollbacks, forks, bad signatures,
    an unreachable publisher), read from the end of its append-only alerts file."""
    path = state / witness_state.ALERTS
    if not path.exists():
        return ()
    with path.open("rb") as handle:
        handle.seek(max(0, path.stat().st_size - 65536))
        lines = handle.read().splitlines()[-count:]
    shown = []
    for line in lines:
        try:
            item = json.loads(line)
            shown.append(str(witness_state.Alert(item["source"], item["origin"], item["message"])))
        except (ValueError, KeyError, TypeError):
            continue  # the first, cut line of the tail read, or a torn last one
    return tuple(shown)


def fingerprint(directories: Sequence[pathlib.Path]) -> tuple[tuple[str, int, int], ...]:
    """Size and modification time of every file of the log: any write changes it."""
    found = []
    for directory in directories:
        for path in sorted(directory.rglob("*")):
            try:
                status = path.stat()
            except FileNotFoundError:
                continue  # removed by retention meanwhile
            if stat.S_ISREG(status.st_mode):
                found.append((str(path), status.st_size, status.st_mtime_ns))
    return tuple(found)


class Integrity:
    """Owns the verification process and the newest verdict."""

    def __init__(
        self,
        directories: Sequence[pathlib.Path],
        verifier_key: str,
        *,
        interval: float,
        witness: pathlib.Path | None = None,
    ) -> None:
        note.Verifier(verifier_key)  # a bad key is refused now, not in the worker
        self.directories = list(directories)
        self.witness = witness
        self.key = verifier_key
        self.interval = interval
        self.verdict: Verdict | None = None
        self._seen: tuple[tuple[str, int, int], ...] | None = None
        self._last_start = 0.0
        self._worker: multiprocessing.process.BaseProcess | None = None
        self._channel: Connection | None = None

    async def check(self) -> None:
        """Verify again if a file changed and the interval has passed since the last run."""
        current = await asyncio.to_thread(fingerprint, [*self.directories, *([self.witness] if self.witness else [])])
        if current == self._seen and self.verdict is not None:
            return
        if time.monotonic() - self._last_start < self.interval and self.verdict is not None:
            return
        self._last_start = started = time.monotonic()
        report, witnessed, alerts = await self._run()
        self._seen = current
        self.verdict = Verdict(report, time.time_ns() // 1_000_000, time.monotonic() - started, witnessed, alerts)

    async def _run(self) -> _Answer:
        """One verification, by the verification process (started now if it is not running: a
        daemon, so it never outlives the server)."""
        if self._worker is None or not self._worker.is_alive():
            self._stop()
            context = multiprocessing.get_context("spawn")
            self._channel, theirs = context.Pipe()
            self._worker = context.Process(
                target=_serve,
                args=([str(d) for d in self.directories], self.key, str(self.witness or ""), theirs),
                daemon=True,
            )
            self._worker.start()
            theirs.close()
        worker, channel = self._worker, self._channel
        assert channel is not None
        try:
            channel.send(None)
            answer: _Answer | str = await asyncio.to_thread(channel.recv)
        except (EOFError, OSError):
            await asyncio.to_thread(worker.join, 5)
            code = worker.exitcode
            self._stop()  # the next verification starts another
            raise RuntimeError(f"the verification process ended without a verdict (exit {code})") from None
        if isinstance(answer, str):
            raise RuntimeError(f"the log could not be verified: {answer}")
        return answer

    def _stop(self) -> None:
        # The process first: a thread still waiting for its answer then reads the end of the pipe.
        if self._worker is not None:
            if self._worker.is_alive():
                self._worker.terminate()
            self._worker.join(5)
            self._worker = None
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def close(self) -> None:
        """Stop the verification process (at shutdown), and a verification under way with it."""
        self._stop()
