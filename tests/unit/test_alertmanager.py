"""authz.alertmanager.Notifier over real HTTP on loopback: what it posts for firing, re-sent and
resolved alerts; bounded retries when Alertmanager fails or is away; never waiting in notify().
(Debian's Alertmanager receiving a real brute force is tests/integration/test_metrics_and_alerts.py;
here an aiohttp server stands in for it, to cause the faults a real one will not.)"""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp.web
import pytest

from authz import alertmanager, detect
from authz.dev import harness


class Receiver:
    def __init__(self) -> None:
        self.posts: list[list[dict[str, Any]]] = []
        self.answer = 200

    async def handle(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        assert request.path == "/api/v2/alerts"
        self.posts.append(await request.json())
        return aiohttp.web.Response(status=self.answer, text="" if self.answer < 300 else "refused")


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    sink = Receiver()
    app = aiohttp.web.Application()
    app.add_routes([aiohttp.web.post("/api/v2/alerts", sink.handle)])
    runner = aiohttp.web.AppRunner(app, access_log=None)
    await runner.setup()
    port = harness.free_port()
    await aiohttp.web.TCPSite(runner, "127.0.0.1", port).start()
    yield sink, f"http://127.0.0.1:{port}"
    await runner.cleanup()


def alert(state: str = "firing") -> detect.Alert:
    made = detect.Alert(
        alert_id="01a22b31-7090-7f38-97a4-9ae46f8a6a1f",
        detector="auth_failures_by_source",
        key_kind="source_ip",
        key="203.0.113.7",
        count=20,
        threshold=20,
        window_seconds=60,
        first_decision="d1",
        last_decision="d20",
        first_time_ms=0,
        last_time_ms=0,
        state=state,
    )
    made.label, made.started_ms = "96252d4ea7d12662be5818da7c7b4076", time.time_ns() // 1_000_000
    return made


async def eventually(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def instant(text: str) -> float:
    return datetime.datetime.fromisoformat(text).timestamp()


async def test_firing_resent_and_resolved(receiver: tuple[Receiver, str]) -> None:
    sink, url = receiver
    notifier = alertmanager.Notifier(url, instance="pod-1", resend_seconds=0.2)
    notifier.start()
    firing = alert()
    notifier.notify(firing)
    await eventually(lambda: len(sink.posts) == 1)
    (posted,) = sink.posts[0]
    assert posted["labels"] == {
        "alertname": "TollgateSuspiciousAccess",
        "detector": "auth_failures_by_source",
        "key_kind": "source_ip",
        "key": firing.label,
        "instance": "pod-1",
        "severity": "warning",
        "service": "tollgate",
    }
    assert "203.0.113.7" not in str(posted)  # the raw key never leaves
    assert posted["annotations"]["alert_id"] == firing.alert_id and posted["annotations"]["first_decision"] == "d1"
    assert instant(posted["endsAt"]) > time.time() + 0.5  # open while it is re-sent
    await asyncio.sleep(0.25)
    notifier.refresh([firing])  # what the sweep does every second
    await eventually(lambda: len(sink.posts) == 2)
    assert sink.posts[1][0]["labels"] == posted["labels"] and sink.posts[1][0]["startsAt"] == posted["startsAt"]
    notifier.refresh([firing])  # too soon: nothing
    firing.state = "resolved"
    notifier.notify(firing)
    await eventually(lambda: len(sink.posts) == 3)
    assert instant(sink.posts[2][0]["endsAt"]) <= time.time()
    await notifier.close()
    assert notifier.results == {"sent": 3, "failed": 0, "dropped": 0}


async def test_refusals_are_not_retried_and_failures_are_retried_a_bounded_number_of_times(
    receiver: tuple[Receiver, str],
) -> None:
    sink, url = receiver
    sink.answer = 400
    notifier = alertmanager.Notifier(url, instance="pod-1", backoff_seconds=0.01)
    notifier.start()
    notifier.notify(alert())
    await eventually(lambda: notifier.results["failed"] == 1)
    assert len(sink.posts) == 1  # a 4xx is Alertmanager refusing these alerts: once
    sink.answer = 503
    notifier.notify(alert())
    await eventually(lambda: notifier.results["failed"] == 2)
    assert len(sink.posts) == 4  # a 5xx is tried three times
    await notifier.close()


async def test_an_absent_alertmanager_never_makes_notify_wait_and_the_queue_is_bounded() -> None:
    notifier = alertmanager.Notifier(
        f"http://127.0.0.1:{harness.free_port()}", instance="pod-1", queue_size=5, backoff_seconds=0.01
    )
    started = time.perf_counter()
    for _ in range(20):
        notifier.notify(alert())  # before the sender even runs
    assert time.perf_counter() - started < 0.05
    assert notifier.results["dropped"] == 15
    notifier.start()
    await eventually(lambda: notifier.results["failed"] == 5)  # connection refused, three attempts each
    await notifier.close()
    assert notifier.results == {"sent": 0, "failed": 5, "dropped": 15}
