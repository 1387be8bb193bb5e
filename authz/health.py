"""Metrics and health over HTTP, on ``--metrics-listen``: for Prometheus and Kubernetes probes.

- ``GET /metrics``: every metric in Prometheus' text format (:mod:`authz.metrics`), when metrics are on.
- ``GET /healthz``: 200 while the event loop answers (liveness).
- ``GET /readyz``: 200 when the server should get traffic: a configuration is loaded, it is not
  draining, and in sync audit mode the audit log is writable (a sync server denies every request
  it cannot record, so it is better out of the Service). Otherwise 503 with the reasons, one per
  line.

Consistent with the gRPC health service during a drain: :func:`authz.server.serve` marks this
draining at the same moment it sets gRPC health NOT_SERVING. Served by aiohttp (already in the
image for the operator), on the same event loop as Checks; a probe's answer is a few attribute
reads, and a scrape renders the metrics on a worker thread (about 50 µs of CPU per series, once
per scrape interval).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp.web

__all__ = ["HealthServer"]

_log = logging.getLogger(__name__)


class HealthServer:
    def __init__(self, runtime: Any, host: str, port: int, *, export: Any = None) -> None:
        self._runtime = runtime
        self._export = export
        self._host, self._port = host, port
        self.draining = False
        self._runner: aiohttp.web.AppRunner | None = None
        self.port = port

    async def start(self) -> None:
        app = aiohttp.web.Application()
        app.add_routes([aiohttp.web.get("/healthz", self._alive), aiohttp.web.get("/readyz", self._ready)])
        if self._export is not None:
            app.add_routes([aiohttp.web.get("/metrics", self._metrics)])
        self._runner = aiohttp.web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = aiohttp.web.TCPSite(self._runner, self._host, self._port, reuse_address=True)
        await site.start()
        server = site._server  # the bound port, when 0 was asked for
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        _log.info("metrics and health on http://%s:%d (/metrics, /healthz, /readyz)", self._host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def problems(self) -> list[str]:
        """Why the server should not get traffic now (empty: ready)."""
        found = []
        if self.draining:
            found.append("draining: shutting down")
        if getattr(self._runtime, "snapshot", None) is None:
            found.append("no configuration loaded")
        recorder = getattr(self._runtime, "recorder", None)
        if recorder is not None and recorder.durable and not recorder.writable:
            found.append("audit log not writable (sync mode denies what it cannot record)")
        return found

    async def _metrics(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        # On a thread: a scrape of thousands of series takes tens of ms, which the event loop (and
        # every Check on it) must not wait for in one piece.
        body, content_type = await asyncio.to_thread(self._export.exposition)
        response = aiohttp.web.Response(body=body)
        response.headers["Content-Type"] = content_type
        return response

    async def _alive(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.Response(text="ok\n")

    async def _ready(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        problems = self.problems()
        if problems:
            return aiohttp.web.Response(status=503, text="".join(f"{p}\n" for p in problems))
        return aiohttp.web.Response(text=f"ready: configuration revision {self._runtime.snapshot.revision}\n")
