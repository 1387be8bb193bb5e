"""The integrity verdict every page shows: ``tollgate audit verify`` run again and again.

Verification reads every record (and, given a witness's state, checks that the log still holds
every checkpoint the witness accepted, as ``tollgate audit verify --witness``). So it runs in a
separate process, which must not hold the event loop or the pages' GIL, at most once per interval
and again whenever a file of the log (or the witness's state) changed. The newest verdict is kept
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

from authz.audit import note
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


def _verify(directories: list[str], key: str, witness: str, answer: Connection) -> None:
    """In the worker process: send the verifier's report and what the witness (if any) accepted,
    each accepted checkpoint being one the log must still hold (as ``audit verify --witness``)."""
    verifier = note.Verifier(key)
    accepted = list(witness_state.accepted(pathlib.Path(witness)).values()) if witness else []
    trusted = [note.parse_checkpoint(verifier.open(item.checkpoint)) for item in accepted]
    report = audit_verify.verify_directory([pathlib.Path(d) for d in directories], verifier, trusted=trusted)
    witnessed = tuple(Witnessed(item.origin, item.size, item.time_ms) for item in accepted)
    answer.send((report, witnessed, _newest_alerts(pathlib.Path(witness)) if witness else ()))
    answer.close()


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

    async def _run(self) -> tuple[audit_verify.Report, tuple[Witnessed, ...], tuple[str, ...]]:
        """One verification in a fresh process (a daemon: it never outlives the server)."""
        context = multiprocessing.get_context("spawn")
        receiving, sending = context.Pipe(duplex=False)
        worker = context.Process(
            target=_verify,
            args=([str(d) for d in self.directories], self.key, str(self.witness or ""), sending),
            daemon=True,
        )
        worker.start()
        sending.close()
        self._worker = worker
        try:
            answer: tuple[audit_verify.Report, tuple[Witnessed, ...], tuple[str, ...]] = await asyncio.to_thread(
                receiving.recv
            )
        except EOFError:
            raise RuntimeError(f"the verification process ended without a verdict (exit {worker.exitcode})") from None
        finally:
            receiving.close()
            await asyncio.to_thread(worker.join)
            self._worker = None
        return answer

    def close(self) -> None:
        """Stop a verification under way (at shutdown)."""
        if self._worker is not None and self._worker.is_alive():
            self._worker.terminate()
