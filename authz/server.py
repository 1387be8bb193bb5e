"""``tollgate serve``: the gRPC server, its health and reflection services, reload and drain.

Owns the process lifecycle, as in grpc's Python examples:

- Start: load the configuration (a broken one at start is fatal: exit 2 with every error named),
  bind, mark health SERVING. Identity providers fetch their keys in the background. The gRPC
  server is grpc.aio on the event loop (``--grpc-engine aio``), or grpcio's synchronous one
  (``threads``): each Check decided on the gRPC thread that received it, under the event loop's
  lock (:mod:`authz.threads`, :mod:`authz.loops`). Everything else (reload, the audit writer, the
  HTTP edge, health and metrics over HTTP) runs on the loop.
- Reload: poll the configuration files (or follow the operator's ConfigMap and Secret through the
  API, :mod:`authz.kube`); on a change, load and compile off the event loop and swap the snapshot
  in one assignment. In-flight Checks keep the snapshot they started with, so
  none fails. An invalid new configuration is logged (file, document, field) and the last good one
  stays in force.
- SIGTERM/SIGINT: health NOT_SERVING first (so Envoy's health checks move away), then stop
  accepting RPCs, let in-flight ones finish within the grace period, exit 0.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import pathlib
import signal
import ssl
from collections.abc import Callable, Coroutine
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import _async as health_aio  # the asyncio HealthServicer (health.aio)
from grpc_health.v1 import health as grpc_health
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from authz import (
    affinity,
    checks,
    configuration,
    detect,
    http_server,
    loader,
    loops,
    metrics,
    receive_first,
    service,
    telemetry,
)
from authz.errors import ConfigError
from authz.identity import resolve

__all__ = ["GrpcServer", "ListenError", "Runtime", "serve", "start", "start_http", "watch"]

_log = logging.getLogger(__name__)


class ListenError(OSError):
    """The server cannot listen where it was told to; the message names the flag and address."""


class Runtime:
    """The state every Check reads: swapped wholesale on reload, never mutated in place."""

    def __init__(self, snapshot: loader.Snapshot, *, default_allow: bool, strict_paths: bool = True) -> None:
        self.identity = resolve.IdentityResolver()
        self.recorder: checks.Recorder | None = None
        self.tracing = telemetry.Tracing(None)
        self.default_allow = default_allow
        self.strict_paths = strict_paths
        self.snapshot = snapshot
        self.identity.update(snapshot.providers)
        self.check_metrics: metrics.CheckMetrics | None = None  # set when metrics are exported
        self.detection: detect.Detection | None = None  # set when detection is on
        self.reloads_applied = self.reloads_rejected = 0  # configuration changes: a metric

    def install(self, snapshot: loader.Snapshot) -> None:
        self.identity.update(snapshot.providers)
        self.identity.start()
        self.snapshot = snapshot
        self.reloads_applied += 1
        _settle_memory()

    def reload_rejected(self) -> None:
        """A new configuration was invalid and the last good one stays (counted for the metrics)."""
        self.reloads_rejected += 1


def _settle_memory() -> None:
    """Move the (large, long-lived) compiled configuration out of the garbage collector's sight.

    Each Check allocates short-lived objects only; without this, every full collection walks
    every compiled rule of every policy. ``gc.freeze`` (Python 3.7+) is the documented tool for
    exactly this. The collection thresholds stay at Python's defaults: raising them (tried:
    20,000/50/100) made each collection longer and the p99 latency under load worse.
    """
    gc.collect()
    gc.freeze()


def _fingerprint(config: pathlib.Path, extra: tuple[str, ...]) -> tuple[tuple[str, int, int, int], ...]:
    """Cheap change detection: names, sizes, mtimes and inodes (ConfigMap updates swap symlinks)."""
    out = []
    for path in [*loader.config_files(config), *map(pathlib.Path, extra)] if config.exists() else []:
        try:
            stat = path.stat()
        except OSError:
            out.append((str(path), -1, -1, -1))
            continue
        out.append((str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino))
    return tuple(sorted(out))


# File systems stamp modification times from a clock that may lag the wall clock by a tick.
_MTIME_SLACK_NS = 100_000_000


async def watch(settings: configuration.ServerSettings, runtime: Runtime) -> None:
    """Reload the configuration whenever its files change; keep the last good one on error."""
    seen = _fingerprint(settings.config_path, runtime.snapshot.files)
    read_ns = runtime.snapshot.read_ns
    if read_ns and any(mtime >= read_ns - _MTIME_SLACK_NS for _, _, mtime, _ in seen):
        # A file changed while, or after, the revision in force was read (the server was starting
        # meanwhile): this first fingerprint may already be the changed files', so read them again.
        seen = ()
    rejected = False  # the files changed to something invalid since the revision in force
    while True:
        await asyncio.sleep(settings.reload_interval)
        current = _fingerprint(settings.config_path, runtime.snapshot.files)
        if current == seen:
            continue
        seen = current
        try:
            snapshot = await asyncio.to_thread(loader.load, settings.config_path)
        except ConfigError as error:
            rejected = True
            runtime.reload_rejected()
            _log.error("configuration rejected, keeping revision %s:\n%s", runtime.snapshot.revision, error)
            continue
        if snapshot.revision == runtime.snapshot.revision and snapshot.files == runtime.snapshot.files:
            if rejected:  # the invalid change was undone: say what is in force now
                rejected = False
                _log.info(
                    "configuration revision %s in force again (the rejected change was undone)", snapshot.revision
                )
            continue
        rejected = False
        runtime.install(snapshot)
        _log.info(
            "configuration revision %s in force: %d policies, %d identity providers",
            snapshot.revision,
            len(snapshot.policies),
            len(snapshot.providers),
        )


def _ssl_context(settings: configuration.ServerSettings) -> ssl.SSLContext | None:
    """The HTTP edge's TLS: the same certificate, key and client CA as the gRPC server's."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    if settings.tls_client_ca is not None:
        context.load_verify_locations(settings.tls_client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


async def start_http(
    settings: configuration.ServerSettings, runtime: Runtime, *, shared_ports: bool = False
) -> http_server.HttpCheckServer:
    """The HTTP ext_authz edge on ``--http-listen`` (:mod:`authz.http_server`), started."""
    host, _, port = settings.http_listen.rpartition(":")
    edge = http_server.HttpCheckServer(
        runtime,
        host.strip("[]"),
        int(port),
        ssl_context=_ssl_context(settings),
        reuse_port=shared_ports,
        max_connections=settings.max_connections,
    )
    try:
        await edge.start()
    except OSError as error:
        raise ListenError(f"--http-listen {settings.http_listen}: {error.strerror or error}") from error
    return edge


def _credentials(settings: configuration.ServerSettings) -> grpc.ServerCredentials | None:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    client_ca = settings.tls_client_ca.read_bytes() if settings.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


class GrpcServer:
    """The running gRPC server, whichever engine: grpc.aio's, or the synchronous one and the pool
    of threads its calls are decided on."""

    def __init__(
        self,
        server: grpc.aio.Server | grpc.Server,
        health: health_aio.HealthServicer | grpc_health.HealthServicer,
        pool: futures.ThreadPoolExecutor | None = None,
    ) -> None:
        self._server, self.health, self._pool = server, health, pool

    async def set_serving(self) -> None:
        for name in ("", service.SERVICE_NAME):
            await _maybe(self.health.set(name, health_pb2.HealthCheckResponse.SERVING))

    async def enter_graceful_shutdown(self) -> None:
        """Health says NOT_SERVING, so Envoy's health checks move away before the stop."""
        await _maybe(self.health.enter_graceful_shutdown())

    async def stop(self, grace: float | None) -> None:
        """Refuse new calls; give those in flight ``grace`` seconds (None: none), then cancel them;
        return once no Check is being decided. The loop keeps running meanwhile: a Check waiting on
        it (durable audit) can still finish, and a cancelled one is recorded as such before the
        audit log is closed after this."""
        if self._pool is None:
            await self._server.stop(grace)  # type: ignore[misc]  # grpc.aio: a coroutine
            return
        await asyncio.to_thread(self._server.stop(grace).wait)  # type: ignore[union-attr]
        # grpc's stop can return while a thread is still finishing a Check (one cut off at the end
        # of the grace period, or waiting for the loop's lock): wait for them; calls never
        # started are dropped (gRPC has ended them).
        await asyncio.to_thread(self._pool.shutdown, wait=True, cancel_futures=True)


async def _maybe(result: Any) -> None:
    """The asyncio health servicer's methods are coroutines, the synchronous one's are not."""
    if asyncio.iscoroutine(result):
        await result


_REFLECTED = (service.SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)


class _Reflection(reflection.ReflectionServicer):
    """Server reflection for the threads engine, on threads of its own: its calls stream their
    requests, and grpcio's synchronous server holds a thread for as long as such a call is open, so
    open reflection calls must not take the threads Checks are decided on. (grpc_health marks its
    Watch the same way: ``experimental_thread_pool`` on the method, which grpcio reads per call.)"""

    def ServerReflectionInfo(self, request_iterator: Any, context: Any) -> Any:
        return super().ServerReflectionInfo(request_iterator, context)

    ServerReflectionInfo.experimental_thread_pool = futures.ThreadPoolExecutor(  # type: ignore[attr-defined]
        2, thread_name_prefix="grpc-reflection", initializer=affinity.pin_this_thread
    )  # one per process, its threads started on first use


def _enable_reflection(server: grpc.aio.Server | grpc.Server, threads_engine: bool) -> None:
    if threads_engine:
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(_Reflection(_REFLECTED), server)
    else:
        reflection.enable_server_reflection(_REFLECTED, server)


async def start(
    settings: configuration.ServerSettings,
    runtime: Runtime,
    *,
    shared_ports: bool = False,
    python_cpu: int | None = None,
) -> tuple[GrpcServer, int]:
    """Build and start the server (``settings.grpc_engine``); return it (its health servicer is
    :attr:`GrpcServer.health`) and the bound port. ``shared_ports``: bind with SO_REUSEPORT, beside the other workers
    (:mod:`authz.workers`). The threads engine answers (health SERVING included) from its own
    threads at once, so :func:`serve` starts the server last, once every other listener is bound;
    it must run on :class:`authz.loops.LockedLoop` (``tollgate serve`` does, and so do the tests).
    ``python_cpu``: the CPU for this process's Python threads (:func:`authz.affinity.choose`: only
    with the threads engine; None: where the kernel puts them)."""
    options: list[tuple[str, int]] = [
        ("grpc.max_receive_message_length", 4 * 1024 * 1024),
        ("grpc.so_reuseport", 1 if shared_ports else 0),
    ]
    if settings.max_connections:  # gRPC core closes each connection past it as it is accepted
        options.append(("grpc.max_allowed_incoming_connections", settings.max_connections))
    checks_service = service.AuthorizationService(runtime)
    pool: futures.ThreadPoolExecutor | None = None
    server: grpc.aio.Server | grpc.Server
    health: health_aio.HealthServicer | grpc_health.HealthServicer
    durable = runtime.recorder is not None and runtime.recorder.durable
    engine, _ = loops.engine(
        settings.grpc_engine, settings.event_loop, http_listen=settings.http_listen, durable=durable
    )
    if engine == "threads":
        loop = asyncio.get_running_loop()
        if not isinstance(loop, loops.LockedLoop):
            raise TypeError(f"--grpc-engine threads needs authz.loops.LockedLoop, not {type(loop).__name__}")
        try:
            receive_first.install()  # a call gets a thread only once its message is here
        except receive_first.Unsupported as error:
            raise configuration.UsageError(f"--grpc-engine threads: {error}") from None
        pool = futures.ThreadPoolExecutor(
            settings.grpc_threads, thread_name_prefix="grpc", initializer=affinity.pin_this_thread
        )
        server = grpc.server(pool, options=options)
        handlers = checks_service.method_handlers(loop)
        health = grpc_health.HealthServicer()  # Watch does not hold a thread (experimental_non_blocking)
    else:
        server = grpc.aio.server(options=options)
        handlers = checks_service.method_handlers()
        health = health_aio.HealthServicer()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.SERVICE_NAME, handlers),))
    # As the generated add_..._to_server does (grpcio >= 1.63; not in the type stubs yet).
    server.add_registered_method_handlers(service.SERVICE_NAME, handlers)  # type: ignore[union-attr]
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    _enable_reflection(server, pool is not None)
    running = GrpcServer(server, health, pool)
    credentials = _credentials(settings)
    try:
        if credentials is None:
            port = server.add_insecure_port(settings.listen)
        else:
            port = server.add_secure_port(settings.listen, credentials)
    except RuntimeError as error:  # gRPC says only "Failed to bind" (the reason goes to its log)
        if pool is not None:
            pool.shutdown(wait=False)
        raise ListenError(
            f"--listen {settings.listen}: cannot listen there (in use, or not an address of this machine)"
        ) from error
    if port == 0:
        if pool is not None:
            pool.shutdown(wait=False)
        raise ListenError(f"--listen {settings.listen}: cannot listen there")
    await _maybe(server.start())
    if python_cpu is not None:  # after start: gRPC's I/O threads exist, and stay unpinned
        affinity.pin_python_threads(python_cpu)
    runtime.identity.start()
    await running.set_serving()
    return running, port


async def serve(
    settings: configuration.ServerSettings,
    runtime: Runtime,
    *,
    ready: asyncio.Event | None = None,
    follow: Callable[[Runtime], Coroutine[Any, Any, None]] | None = None,
    shared_ports: bool = False,
    metrics_bound: Callable[[int], None] | None = None,
    python_cpu: int | None = None,
) -> None:
    """Run until SIGTERM/SIGINT, then drain. ``follow``: what keeps the configuration current
    (default: :func:`watch` the files, every ``--reload-interval``). ``metrics_bound``: told the
    port ``--metrics-listen`` got (a worker announces it to its supervisor). ``python_cpu``: see
    :func:`start`. Metrics are counted when they are exported: on ``--metrics-listen``'s
    ``/metrics``, or over OTLP (``OTEL_METRICS_EXPORTER``)."""
    export = None
    otlp = telemetry.otlp_requested("OTEL_METRICS_EXPORTER")
    if settings.metrics_listen or otlp:
        runtime.check_metrics = metrics.CheckMetrics()
        export = metrics.Export(runtime, otlp=otlp)
    http_edge = await start_http(settings, runtime, shared_ports=shared_ports) if settings.http_listen else None
    http_health = None
    if settings.metrics_listen:
        from authz import health  # noqa: PLC0415 - aiohttp loads only when HTTP health is asked for

        host, _, http_port = settings.metrics_listen.rpartition(":")
        http_health = health.HealthServer(runtime, host.strip("[]"), int(http_port), export=export)
        await http_health.start()
        if metrics_bound is not None:
            metrics_bound(http_health.port)
    server, port = await start(settings, runtime, shared_ports=shared_ports, python_cpu=python_cpu)
    if runtime.detection is not None:
        runtime.detection.start()
    _settle_memory()
    _log.info(
        "listening on %s (port %d)%s, configuration revision %s, %d policies",
        settings.listen,
        port,
        f" and HTTP ext_authz on {settings.http_listen} (port {http_edge.port})" if http_edge else "",
        runtime.snapshot.revision,
        len(runtime.snapshot.policies),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if follow is None and settings.reload_interval > 0:
        follow = functools.partial(watch, settings)
    watcher = loop.create_task(follow(runtime)) if follow is not None else None
    if ready is not None:
        ready.set()
    await stop.wait()
    _log.info("shutting down: draining for up to %.1fs", settings.grace)
    if http_health is not None:
        http_health.draining = True  # /readyz says 503 when gRPC health says NOT_SERVING
    await server.enter_graceful_shutdown()
    if watcher is not None:
        watcher.cancel()
    if http_edge is not None:
        await asyncio.gather(server.stop(settings.grace), http_edge.stop(settings.grace))
    else:
        await server.stop(settings.grace)
    await runtime.identity.close()
    if runtime.detection is not None:
        await runtime.detection.close()  # before the recorder: its last alert records go in
    if runtime.recorder is not None:
        await runtime.recorder.close()
    runtime.tracing.shutdown()
    if export is not None:
        export.shutdown()
    if http_health is not None:
        await http_health.stop()
    _log.info("stopped")
