"""``tollgate serve --workers N``: N server processes behind one address, kept at N.

One Python process decides one Check at a time, so a pod with several cores needs several
processes. The supervisor (this module, in the process the user started) runs none of the data
path itself:

- **Workers.** It starts N ``tollgate serve`` processes with the same flags, told apart by the
  ``TOLLGATE_WORKER`` variable (:func:`this_worker`). Each loads and reloads the configuration
  itself (the same files, or the same ConfigMap), and writes its own audit log instance
  (``<instance>-w<index>``: one log per instance and session, as always); worker 0 alone serves
  the witness endpoint, which publishes the whole directory.
- **One address.** Every worker binds the gRPC and HTTP ports with ``SO_REUSEPORT``; the kernel
  spreads *connections* over them. Envoy's gRPC cluster opens one HTTP/2 connection per Envoy
  worker, so it must be told to open more under load: ``tollgate envoy-config --authz-streams``
  (the cluster's ``max_concurrent_streams``). Over HTTP ext_authz Envoy opens a connection per
  concurrent check anyway. Streams are never limited on Tollgate's side (Envoy would exceed the
  limit and its checks would fail).
- **Metrics that add up.** Each worker exports on a loopback port the kernel gave it, and writes
  that port to a file the supervisor reads (a port picked and released could be taken first); the
  supervisor's ``--metrics-listen`` serves all of them in one exposition, every series labelled
  ``worker="<index>"`` (``sum without (worker)`` is the pod's total), and ``/readyz`` is ready
  when every worker is.
- **Replacement.** A worker that exits while the supervisor is not stopping (killed, crashed) is
  started again after :data:`RESTART_DELAY` (doubling up to :data:`MAX_RESTART_DELAY` while it
  keeps exiting within :data:`STABLE_SECONDS`: a crash loop costs little); the others keep
  answering meanwhile, and new connections go to them. A worker that exits with status 2 (a setting or configuration it
  refuses) stops the whole server with status 2: restarting cannot fix that.
- **Stop.** SIGTERM/SIGINT go to every worker, which drains as a single server does; the
  supervisor exits 0 when all have stopped.

Called by :mod:`authz.cli.serve`. Guarded by tests/integration/test_workers.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import pathlib
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

from authz import affinity

__all__ = [
    "RESTART_DELAY",
    "Worker",
    "merge_expositions",
    "restart_delays",
    "supervise",
    "this_worker",
    "worker_log_format",
]

_log = logging.getLogger(__name__)
ENVIRONMENT = "TOLLGATE_WORKER"
RESTART_DELAY = 0.5  # seconds before a worker that exited is started again ...
MAX_RESTART_DELAY = 30.0  # ... doubling, up to this, while it keeps exiting within STABLE_SECONDS
STABLE_SECONDS = 10.0


@dataclasses.dataclass(frozen=True, slots=True)
class Worker:
    """What a worker process is told: its index, where its metrics go ("" : none; a loopback port
    of its own choosing otherwise), and the file it writes that port to for the supervisor."""

    index: int
    metrics_listen: str
    metrics_port_file: str = ""
    first_cpu: int | None = None  # the supervisor's CPU at start: worker i's Python threads go i CPUs on

    def announce_metrics_port(self, port: int) -> None:
        """Tell the supervisor where this worker's metrics are (written whole, then renamed)."""
        if self.metrics_port_file:
            partial = f"{self.metrics_port_file}.partial"
            pathlib.Path(partial).write_text(f"{port}\n")
            os.replace(partial, self.metrics_port_file)


def this_worker() -> Worker | None:
    """This process's place under a supervisor (None: it is not a worker)."""
    text = os.environ.get(ENVIRONMENT, "")
    if not text:
        return None
    index, first_cpu, metrics, port_file = [*text.split(";", 3), "", "", ""][:4]
    return Worker(int(index), metrics, port_file, int(first_cpu) if first_cpu else None)


def restart_delays(delay: float, lived: float) -> tuple[float, float]:
    """(seconds to wait before the next start, the delay after that) for a worker that ran
    ``lived`` seconds: :data:`RESTART_DELAY` after a stable run, else the delay, doubling."""
    if lived >= STABLE_SECONDS:
        delay = RESTART_DELAY
    return delay, min(2 * delay, MAX_RESTART_DELAY)


def supervise(count: int, argv: Sequence[str], *, metrics_listen: str, grace: float) -> int:
    """Run ``count`` workers of ``tollgate <argv>`` until SIGTERM/SIGINT; the exit status."""
    supervisor = _Supervisor(count, list(argv), metrics_listen=metrics_listen, grace=grace)
    return asyncio.run(supervisor.run())


class _Supervisor:
    def __init__(self, count: int, argv: list[str], *, metrics_listen: str, grace: float) -> None:
        self.count = count
        self.argv = argv
        self.metrics_listen = metrics_listen
        self.grace = grace
        # Each worker binds its metrics to a loopback port it is given by the kernel (a port chosen
        # here and released could be taken by then) and writes it to its file in this directory.
        self._ports = pathlib.Path(tempfile.mkdtemp(prefix="tollgate-workers-")) if metrics_listen else None
        self.metrics_ports = [0] * count  # 0: not known yet (the worker has not written it)
        self.processes: list[asyncio.subprocess.Process | None] = [None] * count
        self.stopping = False
        self.status = 0
        self.restarts = 0
        self.first_cpu = affinity.current_cpu()  # --cpu-affinity auto: the workers' CPUs start here

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        runner = None
        if self.metrics_listen:
            runner = await self._serve_metrics()
        keepers = [loop.create_task(self._keep(index, stop)) for index in range(self.count)]
        _log.info("supervising %d workers", self.count)
        await stop.wait()
        self.stopping = True
        _log.info("stopping %d workers", self.count)
        for process in self.processes:
            if process is not None and process.returncode is None:
                process.send_signal(signal.SIGTERM)
        await asyncio.wait(keepers, timeout=self.grace + 15)
        for process in self.processes:  # past the grace period and more: no drain is that slow
            if process is not None and process.returncode is None:
                process.kill()
        await asyncio.gather(*keepers, return_exceptions=True)
        if runner is not None:
            await runner.cleanup()
        if self._ports is not None:
            shutil.rmtree(self._ports, ignore_errors=True)
        return self.status

    async def _keep(self, index: int, stop: asyncio.Event) -> None:
        """Keep worker ``index`` running until the supervisor stops."""
        delay = RESTART_DELAY
        loop = asyncio.get_running_loop()
        while True:
            self.metrics_ports[index] = 0
            port_file = self._port_file(index)
            if port_file is not None:
                port_file.unlink(missing_ok=True)
            metrics = f"127.0.0.1:0;{port_file}" if port_file is not None else ""
            first_cpu = "" if self.first_cpu is None else self.first_cpu
            environment = {**os.environ, ENVIRONMENT: f"{index};{first_cpu};{metrics}"}
            process = await asyncio.create_subprocess_exec(sys.executable, "-m", "authz", *self.argv, env=environment)
            self.processes[index] = process
            started = loop.time()
            code = await process.wait()
            if self.stopping:
                return
            if code == 2:  # a refused setting or configuration: another start would be refused too
                _log.error("worker %d refused to start (exit status 2): stopping", index)
                self.status = 2
                stop.set()
                return
            self.restarts += 1
            wait, delay = restart_delays(delay, loop.time() - started)
            _log.warning(
                "worker %d (pid %d) exited with status %s: starting a new one in %.1f s",
                index,
                process.pid,
                code,
                wait,
            )
            await asyncio.sleep(wait)
            if self.stopping:
                return

    def _port_file(self, index: int) -> pathlib.Path | None:
        return self._ports / f"worker-{index}.port" if self._ports is not None else None

    def _metrics_port(self, index: int) -> int:
        """Worker ``index``'s metrics port, once it has written it (0 until then)."""
        port_file = self._port_file(index)
        if not self.metrics_ports[index] and port_file is not None:
            with contextlib.suppress(OSError, ValueError):
                self.metrics_ports[index] = int(port_file.read_text())
        return self.metrics_ports[index]

    async def _serve_metrics(self) -> Any:
        import aiohttp.web  # noqa: PLC0415 - only with --metrics-listen

        app = aiohttp.web.Application()
        app.add_routes(
            [
                aiohttp.web.get("/metrics", self._metrics),
                aiohttp.web.get("/healthz", self._alive),
                aiohttp.web.get("/readyz", self._ready),
            ]
        )
        runner = aiohttp.web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        host, _, port = self.metrics_listen.rpartition(":")
        await aiohttp.web.TCPSite(runner, host.strip("[]"), int(port), reuse_address=True).start()
        return runner

    async def _fetch(self, path: str) -> list[tuple[int, int, str]]:
        """(worker, status, body) of ``path`` on every worker; status 0: it did not answer."""
        import aiohttp  # noqa: PLC0415

        async def one(index: int, session: aiohttp.ClientSession) -> tuple[int, int, str]:
            port = self._metrics_port(index)
            if not port:
                return index, 0, ""
            try:
                url = f"http://127.0.0.1:{port}{path}"
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as reply:
                    return index, reply.status, await reply.text()
            except (aiohttp.ClientError, TimeoutError, OSError):
                return index, 0, ""

        async with aiohttp.ClientSession() as session:
            return list(await asyncio.gather(*(one(index, session) for index in range(self.count))))

    async def _metrics(self, request: Any) -> Any:
        import aiohttp.web  # noqa: PLC0415

        answers = await self._fetch("/metrics")
        texts = {str(index): body for index, status, body in answers if status == 200}
        body = await asyncio.to_thread(merge_expositions, texts, self.restarts)
        return aiohttp.web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def _alive(self, request: Any) -> Any:
        import aiohttp.web  # noqa: PLC0415

        return aiohttp.web.Response(text="ok\n")

    async def _ready(self, request: Any) -> Any:
        import aiohttp.web  # noqa: PLC0415

        answers = await self._fetch("/readyz")
        problems = [
            f"worker {index}: {body.strip() or 'not answering'}" for index, status, body in answers if status != 200
        ]
        if self.stopping:
            problems.insert(0, "draining: shutting down")
        if problems:
            return aiohttp.web.Response(status=503, text="".join(f"{line}\n" for line in problems))
        return aiohttp.web.Response(text=f"ready: {self.count} workers\n")


def merge_expositions(texts: dict[str, str], restarts: int = 0) -> bytes:
    """The workers' Prometheus expositions as one, each series labelled ``worker``; plus the
    supervisor's own ``tollgate_worker_restarts_total``."""
    from prometheus_client import exposition, parser, registry  # noqa: PLC0415
    from prometheus_client import metrics_core as core  # noqa: PLC0415

    families: dict[str, Any] = {}
    for worker, text in texts.items():
        for family in parser.text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = core.Metric(
                    family.name, family.documentation, family.type, family.unit
                )
            for sample in family.samples:
                merged.samples.append(sample._replace(labels={**sample.labels, "worker": worker}))
    restarted = core.CounterMetricFamily(
        "tollgate_worker_restarts", "Workers started again after they exited", value=restarts
    )

    class _Collected(registry.Collector):
        def collect(self) -> Iterator[Any]:
            yield from families.values()
            yield restarted

    collected = registry.CollectorRegistry(auto_describe=False)
    collected.register(_Collected())
    data: bytes = exposition.generate_latest(collected)
    return data


def worker_log_format(worker: Worker | None) -> str:
    """The log line format: which worker wrote it, when there are several."""
    prefix = f"worker {worker.index} " if worker is not None else ""
    return f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s"
