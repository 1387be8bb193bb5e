"""The integrity verdict every page shows: ``tollgate audit verify`` run again and again.

Verification reads every record, so it runs in a separate process (it must not hold the event loop
or the pages' GIL) at most once per interval, and again whenever a log file changed. The newest
verdict is kept until the next is ready: a tampered log stays flagged; it is never hidden by a
verification still in progress.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import multiprocessing
import pathlib
import time
from collections.abc import Sequence

from authz.audit import note
from authz.audit import verify as audit_verify

__all__ = ["Integrity", "Verdict"]


@dataclasses.dataclass(frozen=True)
class Verdict:
    """One verification's outcome."""

    report: audit_verify.Report
    finished_ms: int
    seconds: float

    @property
    def state(self) -> str:
        """tampered | crashed | intact"""
        return {1: "tampered", 3: "crashed"}.get(self.report.exit_code, "intact")

    @property
    def problems(self) -> list[audit_verify.Finding]:
        return [f for f in self.report.findings if f.severity != "info"]


def _verify(directories: list[str], key: str) -> audit_verify.Report:
    """In the worker process: the verifier's report (picklable dataclasses)."""
    return audit_verify.verify_directory([pathlib.Path(d) for d in directories], note.Verifier(key))


def fingerprint(directories: Sequence[pathlib.Path]) -> tuple[tuple[str, int, int], ...]:
    """Size and modification time of every file of the log: any write changes it."""
    found = []
    for directory in directories:
        for path in sorted(directory.rglob("*")):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            if path.is_file():
                found.append((str(path), stat.st_size, stat.st_mtime_ns))
    return tuple(found)


class Integrity:
    """Owns the verification process and the newest verdict."""

    def __init__(self, directories: Sequence[pathlib.Path], verifier_key: str, *, interval: float) -> None:
        note.Verifier(verifier_key)  # a bad key is refused now, not in the worker
        self.directories = list(directories)
        self.key = verifier_key
        self.interval = interval
        self.verdict: Verdict | None = None
        self._seen: tuple[tuple[str, int, int], ...] | None = None
        self._last_start = 0.0
        self._pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=1, mp_context=multiprocessing.get_context("spawn")
        )

    async def check(self) -> None:
        """Verify again if a file changed and the interval has passed since the last run."""
        current = await asyncio.to_thread(fingerprint, self.directories)
        if current == self._seen and self.verdict is not None:
            return
        if time.monotonic() - self._last_start < self.interval and self.verdict is not None:
            return
        self._last_start = started = time.monotonic()
        report = await asyncio.get_running_loop().run_in_executor(
            self._pool, _verify, [str(d) for d in self.directories], self.key
        )
        self._seen = current
        self.verdict = Verdict(report, time.time_ns() // 1_000_000, time.monotonic() - started)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
