"""``tollgate serve``: read the settings (flags, then ``TOLLGATE_*``), load the configuration, run.

Every setting is declared in :mod:`authz.configuration`; this module only wires them to the
server (:mod:`authz.server`), the audit recorder and tracing. Whatever stops a start — a bad
setting, an invalid configuration, a key file that cannot be read, an address in use — is one
line on standard error and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import errno
import functools
import logging
import pathlib
import socket
from typing import TYPE_CHECKING, Any

from authz import affinity, configuration, detect, loader, loops, server, telemetry, workers
from authz.audit import log as audit_log
from authz.audit import note, pseudonym, publish, recorder
from authz.cli import common
from authz.errors import ConfigError

if TYPE_CHECKING:
    from authz import kube

__all__ = ["add_parser", "check_listen", "make_recorder"]


def add_parser(commands: Any) -> None:
    serve = commands.add_parser(
        "serve",
        help="run the ext_authz gRPC server",
        description="Run the ext_authz gRPC server. Each flag can also be set by the environment "
        "variable shown; a flag given on the command line wins.",
    )
    configuration.add_arguments(serve, configuration.ServerSettings)
    configuration.add_arguments(serve.add_argument_group("audit trail (docs/audit.md)"), configuration.AuditSettings)
    configuration.add_arguments(
        serve.add_argument_group("detection of suspicious access (docs/operations.md)"), configuration.DetectionSettings
    )
    serve.set_defaults(run=run)


def _settings(
    args: argparse.Namespace,
) -> tuple[configuration.ServerSettings, configuration.AuditSettings, configuration.DetectionSettings]:
    """Every setting, read and checked (:class:`~authz.configuration.UsageError` naming the flag)."""
    settings = configuration.from_arguments(configuration.ServerSettings, args)
    audit_settings = configuration.from_arguments(configuration.AuditSettings, args)
    detection_settings = configuration.from_arguments(configuration.DetectionSettings, args)
    settings.check()
    audit_settings.check()
    detection_settings.check()
    if workers.this_worker() is not None:  # the supervisor checked them; the siblings share them now
        return settings, audit_settings, detection_settings
    check_listen(settings.listen)
    if settings.metrics_listen:
        check_listen(settings.metrics_listen, "--metrics-listen")
    if settings.http_listen:
        check_listen(settings.http_listen, "--http-listen")
    return settings, audit_settings, detection_settings


def run(args: argparse.Namespace) -> int:
    settings, audit_settings, detection_settings = _settings(args)
    worker = workers.this_worker()
    if worker is not None:
        settings, audit_settings = _as_worker(worker, settings, audit_settings)
    engine, engine_name = loops.engine(
        settings.grpc_engine,
        settings.event_loop,
        http_listen=settings.http_listen,
        durable=audit_settings.dir is not None and audit_settings.mode == "sync",
    )
    settings = dataclasses.replace(settings, grpc_engine=engine)
    loop_factory, loop_name = loops.factory(settings.event_loop, settings.grpc_engine)
    logging.basicConfig(level=settings.log_level, format=workers.worker_log_format(worker))
    source = _kubernetes_source(settings)
    if settings.workers > 1 and worker is None:
        return _supervise(args, settings, checked=source is None)
    logging.getLogger("authz.server").info("gRPC engine: %s; event loop: %s", engine_name, loop_name)
    placement = _placement(settings.cpu_affinity, engine, worker)
    try:
        snapshot = None if source else loader.load(settings.config_path)
        tracing = telemetry.Tracing.from_environment()
        audit_recorder = make_recorder(audit_settings)
        detection = make_detection(detection_settings, audit_settings, audit_recorder)
    except ConfigError as error:
        return common.fail(f"invalid configuration, not starting:\n{error}", 2)
    except telemetry.TracingUnavailable as error:
        return common.fail(str(error), 2)

    publisher = _witness_publisher(audit_settings)

    async def serve() -> None:
        first = await source.first() if source is not None else snapshot
        assert first is not None
        runtime = server.Runtime(first, default_allow=settings.default_allow, strict_paths=settings.strict_paths)
        runtime.tracing = tracing
        if audit_recorder is not None:
            await audit_recorder.start()
            runtime.recorder = audit_recorder
        runtime.detection = detection
        if publisher is not None:
            publisher.start()
        follow = None
        if source is not None:
            follow = functools.partial(_follow, source)
        try:
            await server.serve(
                settings,
                runtime,
                follow=follow,
                shared_ports=worker is not None,
                metrics_bound=worker.announce_metrics_port if worker is not None else None,
                python_cpu=placement.cpu,
            )
        finally:
            if publisher is not None:
                publisher.stop()
            if source is not None:
                await source.close()

    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(serve())
    except ConfigError as error:
        return common.fail(f"invalid configuration, not starting:\n{error}", 2)
    except server.ListenError as error:
        return common.fail(str(error), 2)
    except OSError as error:
        return common.fail(f"{error.filename + ': ' if error.filename else ''}{error.strerror or error}", 2)
    return 0


def _supervise(args: argparse.Namespace, settings: configuration.ServerSettings, *, checked: bool) -> int:
    """``--workers N``: start and keep N workers (:mod:`authz.workers`). A configuration file is
    checked here first, once: a broken one is refused before any worker starts."""
    try:
        if checked:
            loader.load(settings.config_path)
    except ConfigError as error:
        return common.fail(f"invalid configuration, not starting:\n{error}", 2)
    return workers.supervise(settings.workers, args.argv, metrics_listen=settings.metrics_listen, grace=settings.grace)


def _placement(choice: str, engine: str, worker: workers.Worker | None) -> affinity.Placement:
    """Where this server's Python threads go (``--cpu-affinity``), said in the log."""
    placement = affinity.choose(
        choice,
        engine,
        affinity.allowed_cpus(),
        first=worker.first_cpu if worker is not None else affinity.current_cpu(),
        index=worker.index if worker is not None else 0,
    )
    logging.getLogger("authz.server").info("CPU affinity: %s", placement.why)
    return placement


def _as_worker(
    worker: workers.Worker, settings: configuration.ServerSettings, audit: configuration.AuditSettings
) -> tuple[configuration.ServerSettings, configuration.AuditSettings]:
    """A worker's settings: the supervisor's, with its own metrics address and audit instance;
    only worker 0 publishes for witnesses (the publisher serves the whole directory)."""
    settings = dataclasses.replace(settings, workers=1, metrics_listen=worker.metrics_listen)
    audit = dataclasses.replace(
        audit,
        instance=f"{audit.instance_name}-w{worker.index}",
        witness_listen=audit.witness_listen if worker.index == 0 else "",
    )
    return settings, audit


def _witness_publisher(settings: configuration.AuditSettings) -> publish.LogPublisher | None:
    if not settings.witness_listen or settings.dir is None:
        return None
    host, _, port = settings.witness_listen.rpartition(":")
    try:
        return publish.LogPublisher(settings.dir, host.strip("[]"), int(port))
    except OSError as error:
        raise configuration.UsageError(f"--audit-witness-listen {settings.witness_listen}: {error.strerror}") from None


def _kubernetes_source(settings: configuration.ServerSettings) -> kube.ConfigSource | None:
    if not isinstance(settings.config, configuration.KubernetesConfig):
        return None
    from authz import kube  # noqa: PLC0415 - the Kubernetes client loads only for this source

    return kube.ConfigSource(settings.config.namespace, settings.config.name)


async def _follow(source: kube.ConfigSource, runtime: server.Runtime) -> None:
    await source.follow(runtime.install, lambda: runtime.snapshot.revision, runtime.reload_rejected)


def make_detection(
    settings: configuration.DetectionSettings,
    audit_settings: configuration.AuditSettings,
    audit: recorder.AuditRecorder | None,
) -> detect.Detection | None:
    """The detectors (None with ``--detection off``), writing alerts to the audit log (keyed by its
    pseudonyms) and notifying Alertmanager when ``--alertmanager-url`` is set. A ``--detectors``
    file that cannot be used is a :class:`~authz.errors.ConfigError` naming it."""
    if not settings.enabled:
        return None
    thresholds = detect.load_settings(settings.detectors) if settings.detectors else detect.Settings()
    notifier = None
    if settings.alertmanager_url:
        from authz import alertmanager  # noqa: PLC0415 - only when alerts are sent

        notifier = alertmanager.Notifier(settings.alertmanager_url, instance=audit_settings.instance_name)
    return detect.Detection(
        thresholds,
        pseudonyms=audit.pseudonyms if audit is not None else None,
        recorder=audit,
        events=_alert_events(audit_settings),
        notifier=notifier,
    )


def _alert_events(audit: configuration.AuditSettings) -> Any:
    """Where alerts go as OpenTelemetry log events: with ``--audit-otel-logs``, the audit copy
    carries them (they are audit records); else, with ``OTEL_LOGS_EXPORTER=otlp``, their own export."""
    if audit.otel_logs or not telemetry.otlp_requested("OTEL_LOGS_EXPORTER"):
        return None
    from authz.audit import otel_export  # noqa: PLC0415 - the logs SDK loads only when asked for

    return otel_export.LogExport(scope="tollgate.detect", asked_by="OTEL_LOGS_EXPORTER=otlp (alert events)")


def check_listen(address: str, flag: str = "--listen") -> None:
    """:class:`~authz.configuration.UsageError` if ``address`` cannot be bound now (in use, not
    this machine's), with the reason gRPC would only write to its own log."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        found = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise configuration.UsageError(f"{flag} {address}: cannot resolve {host!r} ({error.strerror})") from None
    for family, kind, protocol, _, where in found:
        with socket.socket(family, kind, protocol) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(where)
            except OSError as error:
                reason = "address already in use" if error.errno == errno.EADDRINUSE else error.strerror
                raise configuration.UsageError(f"{flag} {address}: {reason}") from None


def make_recorder(settings: configuration.AuditSettings) -> recorder.AuditRecorder | None:
    """The audit recorder the settings describe (None when the audit trail is off); a key file
    that cannot be used is a :class:`~authz.errors.ConfigError` naming it."""
    if settings.dir is None:
        logging.getLogger("authz.audit").warning("audit trail disabled (no --audit-dir): decisions are not recorded")
        return None
    assert settings.signing_key is not None and settings.pseudonym_keys is not None  # settings.check()
    try:
        signer = note.Signer.from_skey(settings.signing_key.read_text())
    except (OSError, UnicodeDecodeError, note.NoteError) as error:
        raise ConfigError(f"cannot use the signing key: {error}", file=str(settings.signing_key)) from error
    pseudonyms = pseudonym.load_keys(pathlib.Path(settings.pseudonym_keys))
    log_settings = audit_log.LogSettings(
        segment_max_bytes=settings.segment_max_bytes,
        segment_max_seconds=settings.segment_max_seconds,
        checkpoint_every=settings.checkpoint_every,
        checkpoint_seconds=settings.checkpoint_seconds,
        retain_segments=settings.retain_segments,
        archive_dir=settings.archive_dir,
        group_id=settings.group_id,
    )
    log = audit_log.AuditLog(settings.dir, signer, instance=settings.instance_name, settings=log_settings)
    audit = recorder.AuditRecorder(log, pseudonyms, mode=settings.mode, queue_size=settings.queue_size)
    if settings.otel_logs:
        from authz.audit import otel_export  # noqa: PLC0415 - the logs SDK loads only when asked for

        audit.exporter = otel_export.LogExport()
    return audit
