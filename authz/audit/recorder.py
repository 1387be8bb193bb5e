"""Recording decisions from the server: asynchronous by default, group-committed when durable.

Called by :mod:`authz.service` once per Check.

- ``async`` (default): :meth:`record` puts the decision on a bounded queue and returns at once;
  a background task writes batches. Check never waits on disk. When the queue is full the
  decision is not recorded, but counted: the next write begins with a ``loss`` record
  ("n decisions between <time> and <time> could not be recorded: queue_full").
- ``sync``: group commit. :meth:`record` returns only once the record is on disk (fsync'd with
  its batch). If the log cannot be written (disk full, permissions), it returns False and the
  service denies the request with ``audit_unavailable``; those decisions are counted and a
  ``loss`` record is written once writing works again. When records arrived while the previous
  batch was being written (other Checks are in flight), the next batch waits a commit delay of
  1 ms for company, as databases' group commit does: on a busy CPU a batch otherwise holds about
  one record, and every record pays for its own fsync. A lone caller never waits.

Checkpoints are signed every N records or T seconds, and at least every T seconds when idle.
On close (SIGTERM) the queue is drained and the session closed with a final checkpoint.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from typing import Any

from authz import decision as decision_model
from authz import ids, metrics
from authz.audit import log as audit_log
from authz.audit import pseudonym, record

__all__ = ["AuditRecorder"]

_log = logging.getLogger(__name__)
_LINGER = 0.005  # seconds an async batch may gather before it is written
_COMMIT_DELAY = 0.001  # seconds a sync batch waits for company, only when other records are coming
# decision (or a ready-made record: an alert), time (ms), ack
Item = tuple["decision_model.Decision | dict[str, Any]", int, "asyncio.Future[bool] | None"]


class AuditRecorder:
    def __init__(
        self,
        log: audit_log.AuditLog,
        pseudonyms: pseudonym.Pseudonymizer,
        *,
        mode: str = "async",
        queue_size: int = 10_000,
    ) -> None:
        if mode not in ("async", "sync"):
            raise ValueError("audit mode is async or sync")
        self.log = log
        self.pseudonyms = pseudonyms
        self.durable = mode == "sync"
        # A plain deque drained whole by the writer: far cheaper per record than asyncio.Queue.
        self._pending: collections.deque[Item] = collections.deque()
        self._capacity = queue_size
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._lost = 0
        self._lost_reason = ""
        self._lost_first_ms = 0
        self._lost_last_ms = 0
        self.written = 0  # records written (decisions and alerts): a metric
        self.lost_total: dict[str, int] = {}  # decisions never recorded, by reason: a metric
        self.fsync_latency = metrics.Histogram(metrics.FSYNC_BUCKETS_SECONDS)  # sync mode: a metric
        self.batches = 0  # batches written (written / batches: the group commit's batch size)
        self._concurrent = False  # sync: did records arrive while the last batch was being written?
        self._healthy = True
        self._lock = asyncio.Lock()  # one of writer or heartbeat touches the log at a time
        self.exporter: Any = None  # optional copy of every record (authz.audit.otel_export.LogExport)

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        await asyncio.to_thread(self.log.open)
        loop = asyncio.get_running_loop()
        self._writer = loop.create_task(self._write_loop(), name="audit-writer")
        self._heartbeat = loop.create_task(self._heartbeat_loop(), name="audit-heartbeat")

    async def close(self) -> None:
        """Drain everything queued, then close the session with a final checkpoint."""
        # The writer and heartbeat are cancelled only between their writes, with the lock held: a
        # cancelled `await asyncio.to_thread(...)` leaves its thread running, so cancelling a write
        # mid-checkpoint let the drain below append while that checkpoint was being signed.
        async with self._lock:
            for task in (self._heartbeat, self._writer):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            while self._pending:
                batch = list(self._pending)
                self._pending.clear()
                await self._write(batch)
            if self._lost:
                self._write_loss()
            await asyncio.to_thread(self.log.close)
        if self.exporter is not None:
            self.exporter.shutdown()

    # -- the request path ------------------------------------------------------------------
    async def record(self, decision: decision_model.Decision) -> bool:
        """Hand one decision over; with ``sync``, wait until it is durable (False: it is not)."""
        now = time.time_ns() // 1_000_000
        pending = self._pending
        if not self.durable:
            if len(pending) >= self._capacity:
                self._count_loss(now, "queue_full")
                return True
            pending.append((decision, now, None))
            if len(pending) == 1:
                self._wake.set()
            return True
        if not self._healthy:
            self._count_loss(now, "write_failed")
            return False
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        pending.append((decision, now, done))
        self._wake.set()
        return await done

    def record_event(self, entry: dict[str, Any]) -> None:
        """Queue a record that is not a decision (an alert, :mod:`authz.detect`): complete but for
        the log's own fields. Never waits, in either mode. A full queue takes it all the same: alerts
        are few (one per detector, key and window), and a loss record counts decisions only."""
        self._pending.append((entry, time.time_ns() // 1_000_000, None))
        self._wake.set()

    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    def _count_loss(self, now: int, reason: str) -> None:
        self.lost_total[reason] = self.lost_total.get(reason, 0) + 1
        if not self._lost:
            self._lost_first_ms = now
        self._lost += 1
        self._lost_last_ms = now
        self._lost_reason = reason

    # -- the writer ------------------------------------------------------------------------
    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self.durable:
                # Nobody waits for these records: let a batch gather, so one write serves many.
                await asyncio.sleep(_LINGER)
            elif self._concurrent:
                # Sync: records came in during the last write, so more are on their way; one fsync
                # for several of them costs less CPU than one each (see the module docstring).
                await asyncio.sleep(_COMMIT_DELAY)
            async with self._lock:
                # Taken with the lock held: close() cancels this task only while it waits for the
                # lock, and then the records are still pending for close() to drain.
                batch = list(self._pending)
                self._pending.clear()
                if batch:
                    await self._write(batch)
            self._concurrent = bool(self._pending)

    async def _write(self, batch: list[Item]) -> None:
        try:
            if self._lost:
                self._write_loss()
            for decision, time_ms, _ in batch:
                if isinstance(decision, dict):
                    entry = decision
                else:
                    entry = record.decision_record(decision, time_ms, self.pseudonyms)
                line = self.log.append(entry)
                if self.exporter is not None:
                    self.exporter.emit(entry, line)
                if self.log.rotation_due():
                    await asyncio.to_thread(self.log.rotate)  # fsync and retention: not on the loop
            if self.durable:
                started = time.perf_counter_ns()
                await asyncio.to_thread(self.log.flush, fsync=True)
                self.fsync_latency.observe("", time.perf_counter_ns() - started)
            else:
                self.log.flush(fsync=False)
            if self.log.checkpoint_due():
                await asyncio.to_thread(self.log.checkpoint)
        except OSError as error:
            self._healthy = False
            _log.error("audit log cannot be written (%s): %s", error.strerror, error.filename or self.log.session_dir)
            for item, time_ms, done in batch:
                if isinstance(item, dict):  # an alert: it also went out as a log line and a metric
                    _log.error("audit: alert record %s could not be written", item.get("id"))
                    continue
                self._count_loss(time_ms, "write_failed")
                if done is not None and not done.done():
                    done.set_result(False)
            asyncio.get_running_loop().call_later(1.0, self._probe)
            return
        self.written += len(batch)
        self.batches += 1
        for _, _, done in batch:
            if done is not None and not done.done():
                done.set_result(True)

    @property
    def writable(self) -> bool:
        """False from a failed write until the next attempt (a second later) succeeds."""
        return self._healthy

    def _probe(self) -> None:
        """After a write failure, let the next batch try again (the disk may have recovered)."""
        self._healthy = True

    def _write_loss(self) -> None:
        now = time.time_ns() // 1_000_000
        entry = {
            "v": record.SCHEMA_VERSION,
            "kind": "loss",
            "id": ids.new_id(),
            "time": record.format_time(now),
            "time_ms": now,
            "loss": {
                "count": self._lost,
                "first_time_ms": self._lost_first_ms,
                "last_time_ms": self._lost_last_ms,
                "reason": self._lost_reason,
            },
        }
        line = self.log.append(entry)
        if self.exporter is not None:
            self.exporter.emit(entry, line)
        _log.warning(
            "audit: %d decisions could not be recorded (%s); loss record written", self._lost, self._lost_reason
        )
        self._lost = 0

    async def _heartbeat_loop(self) -> None:
        interval = self.log.settings.checkpoint_seconds
        while True:
            await asyncio.sleep(interval / 2)
            if not self._pending and self.log.checkpoint_due():
                async with self._lock:
                    try:
                        await asyncio.to_thread(self.log.checkpoint)
                    except OSError as error:
                        _log.error("audit heartbeat checkpoint failed: %s", error)
