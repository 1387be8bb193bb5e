"""Alert notifications to Alertmanager's HTTP API (``POST /api/v2/alerts``), never in a Check's way.

Who calls it: :class:`authz.detect.Detection` hands each firing or resolved alert to
:meth:`Notifier.notify` (an append to a bounded queue) and, every sweep, the firing ones to
:meth:`Notifier.refresh`. A background task posts them in batches; each post gets a timeout and
a bounded number of attempts with backoff, and what cannot be delivered is dropped and counted
(``tollgate_alertmanager_notifications_total{result="failed"|"dropped"}``) — the audit log's
``alert`` record is the one that must not be lost, and is written regardless.

As Prometheus does, a firing alert is re-sent while it fires (every ``resend_seconds``) with
``endsAt`` a few intervals ahead, so Alertmanager keeps it open only as long as Tollgate does;
a resolved alert is sent once more with ``endsAt`` set to its resolution. Labels identify the
alert (Alertmanager groups and deduplicates on them): ``alertname``, ``detector``, ``key_kind``,
``key`` (the pseudonym, as in the audit record), ``instance``, ``severity``; the counts and
decision ids are annotations.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import logging
import time
from typing import Any

import aiohttp

from authz import detect

__all__ = ["ALERT_NAME", "Notifier", "payload"]

_log = logging.getLogger(__name__)

ALERT_NAME = "TollgateSuspiciousAccess"
_DESCRIPTIONS = {
    "auth_failures_by_source": "repeated authentication failures (401) from one source address",
    "auth_failures_by_subject": "repeated authentication failures (401) for tokens claiming one subject",
    "token_replay": "one bearer token used from many source addresses",
    "denial_spike": "denials far above their recent baseline",
    "dry_run_denials": "a DryRun policy would deny a large share of traffic",
}


def _rfc3339(time_ms: int) -> str:
    return datetime.datetime.fromtimestamp(time_ms / 1000, tz=datetime.UTC).isoformat(timespec="milliseconds")


def payload(alert: detect.Alert, instance: str, *, ends_ms: int) -> dict[str, Any]:
    """One alert in Alertmanager's API v2 form (``postableAlert``)."""
    return {
        "labels": {
            "alertname": ALERT_NAME,
            "detector": alert.detector,
            "key_kind": alert.key_kind,
            "key": alert.label,
            "instance": instance,
            "severity": "warning",
            "service": "tollgate",
        },
        "annotations": {
            "summary": f"Tollgate: {_DESCRIPTIONS.get(alert.detector, alert.detector)}",
            "description": (
                f"{alert.count} events for {alert.key_kind} {alert.label} (threshold {alert.threshold} "
                f"in {alert.window_seconds} s); audit alert record {alert.alert_id}"
            ),
            "alert_id": alert.alert_id,
            "count": str(alert.count),
            "first_decision": alert.first_decision,
            "last_decision": alert.last_decision,
        },
        "startsAt": _rfc3339(alert.started_ms),
        "endsAt": _rfc3339(ends_ms),
    }


class Notifier:
    def __init__(
        self,
        url: str,
        *,
        instance: str,
        queue_size: int = 1000,
        attempts: int = 3,
        timeout_seconds: float = 5.0,
        backoff_seconds: float = 0.5,
        resend_seconds: float = 60.0,
    ) -> None:
        self.endpoint = url.rstrip("/") + "/api/v2/alerts"
        self.instance = instance
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._capacity = queue_size
        self._attempts = attempts
        self._timeout = timeout_seconds
        self._backoff = backoff_seconds
        self._resend = resend_seconds
        self._last_refresh = time.monotonic()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.results: dict[str, int] = {"sent": 0, "failed": 0, "dropped": 0}  # alerts, by outcome: a metric

    # -- called by the detectors: never waits -------------------------------------------------
    def notify(self, alert: detect.Alert) -> None:
        now = time.time_ns() // 1_000_000
        ends = now if alert.state == "resolved" else now + int(4 * self._resend * 1000)
        self._enqueue(payload(alert, self.instance, ends_ms=ends))

    def refresh(self, firing: list[detect.Alert]) -> None:
        """Re-send the firing alerts, at most every ``resend_seconds``."""
        if time.monotonic() - self._last_refresh < self._resend:
            return
        self._last_refresh = time.monotonic()
        for alert in firing:
            self.notify(alert)

    def _enqueue(self, item: dict[str, Any]) -> None:
        if len(self._queue) >= self._capacity:
            self._queue.popleft()  # the oldest goes: a newer state of the same alert may follow it
            self.results["dropped"] += 1
        self._queue.append(item)
        self._wake.set()

    # -- the sender ---------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="alertmanager")

    async def close(self, flush_seconds: float = 2.0) -> None:
        """Give what is queued ``flush_seconds`` to go out, then stop."""
        if self._task is None:
            return
        deadline = time.monotonic() + flush_seconds
        while self._queue and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.results["dropped"] += len(self._queue)
        self._queue.clear()

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self._timeout)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._queue:
                    batch = [self._queue.popleft() for _ in range(min(len(self._queue), 64))]
                    await self._post(session, batch)

    async def _post(self, session: aiohttp.ClientSession, batch: list[dict[str, Any]]) -> None:
        problem = ""
        for attempt in range(self._attempts):
            if attempt:
                await asyncio.sleep(self._backoff * 2 ** (attempt - 1))
            try:
                async with session.post(self.endpoint, json=batch) as response:
                    if response.status < 300:
                        self.results["sent"] += len(batch)
                        return
                    problem = f"HTTP {response.status}: {(await response.text())[:200]}"
                    if 400 <= response.status < 500:
                        break  # Alertmanager refused these alerts: sending them again will not help
            except (aiohttp.ClientError, TimeoutError, OSError) as error:
                problem = str(error) or error.__class__.__name__
        self.results["failed"] += len(batch)
        _log.warning("alertmanager %s: %d alert notifications not delivered: %s", self.endpoint, len(batch), problem)
