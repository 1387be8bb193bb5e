"""What ``tollgate serve`` and ``tollgate operator`` can be told, in one place: every setting, its
unit, default and sources.

Each setting is a dataclass field with its command-line flag; the environment variable is the flag
in upper case with ``TOLLGATE_`` in front (``--reload-interval`` → ``TOLLGATE_RELOAD_INTERVAL``).
A flag on the command line wins over the variable, the variable over the default. Values are read
and checked when the command runs, not when its help is printed, and a bad one is a
:class:`UsageError` naming the flag or variable and the value — never a traceback.

The model is kopf's ``configuration.py``: plain dataclasses, each field documented where it is
declared, grouped by concern (:class:`ServerSettings`, :class:`AuditSettings`).
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
import pathlib
import re
import socket
from collections.abc import Callable, Mapping
from typing import Any

__all__ = [
    "AuditSettings",
    "DetectionSettings",
    "KubernetesConfig",
    "OperatorSettings",
    "ServerSettings",
    "UsageError",
    "add_arguments",
    "environment_variable",
    "from_arguments",
]


class UsageError(Exception):
    """A flag, variable or file the user gave cannot be used: one line, exit status 2."""


Parse = Callable[[str], Any]


def _setting(default: Any, flag: str, help: str, parse: Parse = str, *, shown: str = "") -> Any:
    """A settings field: ``flag`` (also ``TOLLGATE_<FLAG>``), its help, and how text becomes a value.

    ``parse`` raises ValueError with a message that completes "--flag VALUE: …". ``shown``: the
    default as the help text should show it, when ``default`` is not what a user would type.
    """
    return dataclasses.field(
        default=default, metadata={"flag": flag, "help": help, "parse": parse, "shown": shown or _show(default)}
    )


def _show(value: Any) -> str:
    if value is None or value == "":
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def environment_variable(flag: str) -> str:
    """``--reload-interval`` → ``TOLLGATE_RELOAD_INTERVAL``."""
    return "TOLLGATE_" + flag.removeprefix("--").upper().replace("-", "_")


# Parsers: text → value, or ValueError saying what is wrong with the text.


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("not a number of seconds") from None
    if not 0 <= value < 10**7 or value != value:  # noqa: PLR0124 - NaN
        raise ValueError("seconds must be 0 or more")
    return value


def _positive_seconds(text: str) -> float:
    value = _seconds(text)
    if value == 0:
        raise ValueError("seconds must be more than 0")
    return value


def _count(minimum: int) -> Parse:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError("not a whole number") from None
        if value < minimum:
            raise ValueError(f"must be {minimum} or more")
        return value

    return parse


def _choice(**choices: Any) -> Parse:
    def parse(text: str) -> Any:
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return choices[text]

    return parse


def _boolean(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def _path(text: str) -> pathlib.Path | None:
    if "\x00" in text:
        raise ValueError("not a file name")
    return pathlib.Path(text) if text else None


_PORT = re.compile(r"[0-9]{1,5}")
_NAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


def listen_address(text: str) -> str:
    """``HOST:PORT`` with a numeric port from 0 to 65535 (0: any free port); HOST an IP address,
    ``[IPv6]`` or a name. Checked here because gRPC takes ``:99999`` as some other port."""
    host, colon, port = text.rpartition(":")
    if not colon or not _PORT.fullmatch(port) or int(port) > 65535:
        raise ValueError("must be HOST:PORT with a port from 0 to 65535")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"{host} is not an IPv6 address") from None
    elif not (_NAME.fullmatch(host) or _is_ipv4(host)):
        raise ValueError(f"{host or 'the host'} is not an IP address or host name")
    return text


def _optional_listen_address(text: str) -> str:
    """A :func:`listen_address`, or "" for off."""
    return listen_address(text) if text else ""


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def _log_level(text: str) -> str:
    level = text.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return level


@dataclasses.dataclass(frozen=True, slots=True)
class KubernetesConfig:
    """``--config kubernetes:NAMESPACE/NAME``: the ConfigMap and Secret the operator publishes."""

    namespace: str
    name: str


def _config_source(text: str) -> pathlib.Path | KubernetesConfig | None:
    if text.startswith("kubernetes:"):
        try:
            return KubernetesConfig(*_object_name(text.removeprefix("kubernetes:")))
        except ValueError:
            raise ValueError("must be kubernetes:NAMESPACE/NAME (lower-case DNS names)") from None
    return _path(text)


@dataclasses.dataclass(frozen=True, slots=True)
class ServerSettings:
    """The ext_authz server: where it listens, what it serves, how it reloads and stops."""

    config: pathlib.Path | KubernetesConfig | None = _setting(
        None,
        "--config",
        "policy YAML file or directory, or kubernetes:NAMESPACE/NAME (the operator's ConfigMap and Secret, "
        "followed through the API) (required)",
        _config_source,
    )
    listen: str = _setting("127.0.0.1:9001", "--listen", "HOST:PORT for the gRPC server", listen_address)
    http_listen: str = _setting(
        "",
        "--http-listen",
        "HOST:PORT for Envoy's HTTP ext_authz (http_service), beside gRPC (docs/operations.md)",
        _optional_listen_address,
        shown="off",
    )
    default_allow: bool = _setting(
        False,
        "--default-action",
        "decision for hosts no policy covers: Allow or Deny",
        _choice(Allow=True, Deny=False),
        shown="Deny",
    )
    strict_paths: bool = _setting(
        True,
        "--path-mode",
        "strict: refuse encoded dots and double encoding in paths (docs/policy.md); lenient",
        _choice(strict=True, lenient=False),
        shown="strict",
    )
    reload_interval: float = _setting(
        2.0, "--reload-interval", "seconds between config change checks; 0: never", _seconds
    )
    grace: float = _setting(10.0, "--grace", "seconds in-flight requests get to finish on SIGTERM", _seconds)
    tls_cert: pathlib.Path | None = _setting(None, "--tls-cert", "server certificate, PEM (with --tls-key)", _path)
    tls_key: pathlib.Path | None = _setting(None, "--tls-key", "server private key, PEM (with --tls-cert)", _path)
    tls_client_ca: pathlib.Path | None = _setting(
        None, "--tls-client-ca", "CA for client certificates, PEM: clients (Envoy) must present one", _path
    )
    metrics_listen: str = _setting(
        "",
        "--metrics-listen",
        "HOST:PORT for HTTP /metrics (Prometheus) and health (/healthz, /readyz) for Kubernetes probes",
        _optional_listen_address,
        shown="off",
    )
    workers: int = _setting(
        1,
        "--workers",
        "server processes sharing the listen addresses (SO_REUSEPORT), kept running by this one "
        "(docs/operations.md: choosing a worker count)",
        _count(1),
    )
    max_connections: int = _setting(
        0,
        "--max-connections",
        "connections each of --listen and --http-listen holds open at once, per worker; one more is "
        "closed at once (Envoy fails that check closed); 0: no limit",
        _count(0),
        shown="no limit",
    )
    grpc_engine: str = _setting(
        "auto",
        "--grpc-engine",
        "threads: gRPC checks on gRPC's own threads (less CPU per check); aio: on the event loop "
        "(grpc.aio); auto: threads, or aio with --http-listen, --audit-mode sync, --event-loop "
        "uvloop, or a grpcio threads cannot run on (the log says which and why; docs/operations.md: "
        "how a check is run)",
        _choice(auto="auto", aio="aio", threads="threads"),
    )
    grpc_threads: int = _setting(
        2,
        "--grpc-threads",
        "with the threads engine: gRPC calls decided at once, per worker, each on a thread of its own "
        "(checks are decided one at a time; more threads only contend for Python's lock); more wait "
        "their turn",
        _count(1),
    )
    cpu_affinity: str = _setting(
        "auto",
        "--cpu-affinity",
        "auto: with the threads engine, each worker's Python threads share one CPU (they run one at a "
        "time; spread over CPUs they cost more per check), gRPC's I/O threads stay unpinned; off: the "
        "kernel places every thread (docs/operations.md: CPU affinity)",
        _choice(auto="auto", off="off"),
    )
    log_level: str = _setting("INFO", "--log-level", "DEBUG, INFO, WARNING or ERROR", _log_level)
    event_loop: str = _setting(
        "auto",
        "--event-loop",
        "auto: uvloop if installed, else asyncio; uvloop (required); asyncio. --grpc-engine threads "
        "runs on asyncio's loop",
        _choice(auto="auto", uvloop="uvloop", asyncio="asyncio"),
    )

    @property
    def config_path(self) -> pathlib.Path:
        if not isinstance(self.config, pathlib.Path):
            raise UsageError("--config (or TOLLGATE_CONFIG) must name a file or directory here")
        return self.config

    def check(self) -> None:
        """What no single setting can say wrong on its own; :class:`UsageError` naming the flags."""
        if self.config is None:
            raise UsageError("--config (or TOLLGATE_CONFIG) is required")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise UsageError("--tls-cert and --tls-key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise UsageError("--tls-client-ca needs --tls-cert and --tls-key")
        if self.workers > MAX_WORKERS:
            raise UsageError(f"--workers {self.workers}: at most {MAX_WORKERS}")
        if self.grpc_threads > MAX_GRPC_THREADS:
            raise UsageError(f"--grpc-threads {self.grpc_threads}: at most {MAX_GRPC_THREADS}")
        if self.grpc_engine == "threads" and self.event_loop == "uvloop":
            raise UsageError("--event-loop uvloop: --grpc-engine threads runs on asyncio's loop")
        for flag, path in (
            ("--tls-cert", self.tls_cert),
            ("--tls-key", self.tls_key),
            ("--tls-client-ca", self.tls_client_ca),
        ):
            if path is not None and not path.is_file():
                raise UsageError(f"{flag} {path}: no such file")


MAX_WORKERS = 64
MAX_GRPC_THREADS = 1024  # each a thread of the process, idle ones included


def _hostname() -> str:
    return socket.gethostname().split(".")[0] or "tollgate"


@dataclasses.dataclass(frozen=True, slots=True)
class AuditSettings:
    """The audit trail (docs/audit.md): where records go and when files and checkpoints are cut."""

    dir: pathlib.Path | None = _setting(None, "--audit-dir", "log directory; unset: no audit trail", _path)
    signing_key: pathlib.Path | None = _setting(
        None, "--audit-signing-key", "checkpoint signing key file (tollgate audit keygen)", _path
    )
    pseudonym_keys: pathlib.Path | None = _setting(
        None, "--audit-pseudonym-keys", "HMAC key file for pseudonyms (tollgate audit keygen)", _path
    )
    mode: str = _setting(
        "async",
        "--audit-mode",
        "async: never wait on disk; sync: answer after fsync, deny if the log cannot be written",
        _choice(**{"async": "async", "sync": "sync"}),
    )
    instance: str = _setting("", "--audit-instance", "this replica's name in the log", str, shown="the host name")
    queue_size: int = _setting(10_000, "--audit-queue-size", "records waiting for the disk, at most", _count(1))
    checkpoint_every: int = _setting(1000, "--audit-checkpoint-every", "records per signed checkpoint", _count(1))
    checkpoint_seconds: float = _setting(
        10.0, "--audit-checkpoint-seconds", "seconds between checkpoints, and the idle heartbeat", _positive_seconds
    )
    segment_max_bytes: int = _setting(64 << 20, "--audit-segment-max-bytes", "bytes per segment file", _count(4096))
    segment_max_seconds: float = _setting(
        3600.0, "--audit-segment-max-seconds", "seconds before a new segment file", _positive_seconds
    )
    retain_segments: int = _setting(
        0, "--audit-retain-segments", "newest segments kept per instance; 0: all", _count(0)
    )
    archive_dir: pathlib.Path | None = _setting(
        None, "--audit-archive-dir", "retention moves old segments here instead of deleting them", _path
    )
    witness_listen: str = _setting(
        "",
        "--audit-witness-listen",
        "HOST:PORT to publish the newest checkpoints and consistency proofs for witnesses (read-only HTTP)",
        _optional_listen_address,
        shown="off",
    )
    group: str = _setting(
        "", "--audit-group", "group (name or id) that may read the log files", str, shown="the server's own"
    )
    otel_logs: bool = _setting(
        False,
        "--audit-otel-logs",
        "also send every record as an OpenTelemetry log record over OTLP (a copy: integrity lives in the files)",
        _boolean,
    )

    @property
    def instance_name(self) -> str:
        return self.instance or _hostname()

    @property
    def group_id(self) -> int | None:
        """The ``--audit-group`` as a group id (None: unset); :class:`UsageError` if there is no such group."""
        if not self.group:
            return None
        if self.group.isdigit():
            return int(self.group)
        import grp  # noqa: PLC0415 - POSIX only, and only when asked for

        try:
            return grp.getgrnam(self.group).gr_gid
        except KeyError:
            raise UsageError(f"--audit-group {self.group!r}: no such group") from None

    def check(self) -> None:
        if self.dir is not None and (self.signing_key is None or self.pseudonym_keys is None):
            raise UsageError("--audit-dir needs --audit-signing-key and --audit-pseudonym-keys")
        _ = self.group_id  # an unknown group is named now, not when the first file is created


def _object_name(text: str) -> tuple[str, str]:
    """``NAMESPACE/NAME`` of a Kubernetes object."""
    namespace, slash, name = text.partition("/")
    if not slash or not _DNS_LABEL.fullmatch(namespace) or not _DNS_SUBDOMAIN.fullmatch(name):
        raise ValueError("must be NAMESPACE/NAME (lower-case DNS names)")
    return namespace, name


def _namespaces(text: str) -> tuple[str, ...]:
    """Comma-separated namespace names; empty: every namespace."""
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    for name in names:
        if not _DNS_LABEL.fullmatch(name):
            raise ValueError(f"{name!r} is not a namespace name")
    return names


_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"(?=.{1,253}$)[a-z0-9]([-a-z0-9.]*[a-z0-9])?")


def _http_url(text: str) -> str:
    if text and (not text.startswith(("http://", "https://")) or "\x00" in text or " " in text):
        raise ValueError("must be an http:// or https:// URL")
    return text


@dataclasses.dataclass(frozen=True, slots=True)
class DetectionSettings:
    """Real-time detection of suspicious access (docs/operations.md): on or off, thresholds, where alerts go."""

    enabled: bool = _setting(
        True,
        "--detection",
        "on: watch decisions for brute force, token replay, spikes; off",
        _choice(on=True, off=False),
    )
    detectors: pathlib.Path | None = _setting(
        None,
        "--detectors",
        "YAML file of detector thresholds and windows (docs/operations.md)",
        _path,
        shown="built in",
    )
    alertmanager_url: str = _setting(
        "", "--alertmanager-url", "Alertmanager base URL to notify of alerts (POST /api/v2/alerts)", _http_url
    )

    def check(self) -> None:
        if self.detectors is not None and not self.detectors.is_file():
            raise UsageError(f"--detectors {self.detectors}: no such file")
        if self.alertmanager_url and not self.enabled:
            raise UsageError("--alertmanager-url needs --detection on")


@dataclasses.dataclass(frozen=True, slots=True)
class OperatorSettings:
    """The operator (docs/operations.md): what it watches, where it publishes, its webhook and peers."""

    publish: tuple[str, str] = _setting(
        ("tollgate-system", "tollgate-config"),
        "--publish",
        "NAMESPACE/NAME of the ConfigMap (policies, providers) and Secret (keys, HMAC secrets) it publishes",
        _object_name,
        shown="tollgate-system/tollgate-config",
    )
    watch_namespaces: tuple[str, ...] = _setting(
        (), "--watch-namespaces", "comma-separated namespaces to watch", _namespaces, shown="all"
    )
    delegations: pathlib.Path | None = _setting(
        None, "--delegations", "YAML file: namespace → host patterns handed to it (docs/policy.md)", _path
    )
    webhook_listen: str = _setting(
        "0.0.0.0:9443", "--webhook-listen", "HOST:PORT of the validating admission webhook (HTTPS)", listen_address
    )
    webhook_host: str = _setting(
        "",
        "--webhook-host",
        "the name the API server calls the webhook by (its Service's DNS name)",
        str,
        shown="the listen address",
    )
    webhook_cert_dir: pathlib.Path | None = _setting(
        None,
        "--webhook-cert-dir",
        "directory with tls.crt and tls.key (re-read when they change)",
        _path,
        shown="a self-signed certificate made at start",
    )
    webhook_configuration: str = _setting(
        "tollgate.dev",
        "--webhook-configuration",
        "ValidatingWebhookConfiguration the operator keeps up to date (with its CA bundle); empty: none",
        str,
    )
    liveness_listen: str = _setting(
        "0.0.0.0:8080", "--liveness-listen", "HOST:PORT of the liveness endpoint /healthz", _optional_listen_address
    )
    audit_keys_secret: str = _setting(
        "",
        "--audit-keys-secret",
        "NAME of a Secret (beside the published ones) to create with new audit keys if it does not exist",
        str,
        shown="none",
    )
    peering: str = _setting(
        "tollgate",
        "--peering",
        "kopf peering name: of several replicas one is active; empty: standalone (a single replica)",
        str,
    )
    priority: int = _setting(
        0,
        "--priority",
        "peering priority: the highest active replica works, the others wait; 0: random at start",
        _count(0),
        shown="random",
    )
    log_level: str = _setting("INFO", "--log-level", "DEBUG, INFO, WARNING or ERROR", _log_level)

    @property
    def peering_priority(self) -> int:
        """kopf pauses every replica of one priority, so replicas need distinct ones: ``--priority``,
        or a random one (a clash among a few replicas is a one-in-a-billion event)."""
        import secrets  # noqa: PLC0415

        return self.priority or 1 + secrets.randbelow(2**31 - 2)

    def check(self) -> None:
        """What no single setting can say wrong on its own (the delegations file's content)."""
        _ = self.host_delegations()

    def host_delegations(self) -> dict[str, tuple[str, ...]]:
        """The ``--delegations`` file: ``{namespace: [host pattern, ...]}``; :class:`UsageError`
        naming the file and entry if it cannot be used."""
        if self.delegations is None:
            return {}
        import yaml  # noqa: PLC0415 - only the operator reads it

        where = f"--delegations {self.delegations}"
        try:
            document = yaml.safe_load(self.delegations.read_text())
        except OSError as error:
            raise UsageError(f"{where}: {error.strerror}") from None
        except yaml.YAMLError as error:
            raise UsageError(f"{where}: invalid YAML: {str(error).splitlines()[0]}") from None
        if not isinstance(document, Mapping):
            raise UsageError(f"{where}: must be a mapping of namespace to a list of host patterns")
        found: dict[str, tuple[str, ...]] = {}
        for namespace, patterns in document.items():
            if not isinstance(namespace, str) or not _DNS_LABEL.fullmatch(namespace):
                raise UsageError(f"{where}: {namespace!r} is not a namespace name")
            if not isinstance(patterns, list) or not all(_HOST_PATTERN.fullmatch(str(p)) for p in patterns):
                raise UsageError(f"{where}: {namespace}: must be a list of hosts, *.suffix patterns or *")
            found[namespace] = tuple(str(p).lower() for p in patterns)
        return found


_HOST_PATTERN = re.compile(r"\*|(\*\.)?[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?")


def add_arguments(parser: argparse.ArgumentParser | Any, settings: type) -> None:
    """One option per field of ``settings``; help shows the default and the variable. Values stay
    text here (argparse default None): :func:`from_arguments` parses them, flag or variable alike."""
    for field in dataclasses.fields(settings):
        meta = field.metadata
        flag = meta["flag"]
        help_text = f"{meta['help']} (default: {meta['shown']}; env {environment_variable(flag)})"
        if meta["parse"] is _boolean:
            parser.add_argument(flag, dest=field.name, action="store_const", const="true", help=help_text)
        else:
            parser.add_argument(flag, dest=field.name, metavar=_metavar(field), help=help_text)


def _metavar(field: dataclasses.Field[Any]) -> str:
    parse = field.metadata["parse"]
    if parse in (_seconds, _positive_seconds):
        return "SECONDS"
    if parse in (_path, _config_source):
        return "PATH"
    if parse in (listen_address, _optional_listen_address):
        return "HOST:PORT"
    flag: str = field.metadata["flag"]
    return flag.removeprefix("--").rsplit("-", 1)[-1].upper()


def from_arguments[T](settings: type[T], arguments: argparse.Namespace, environ: Mapping[str, str] | None = None) -> T:
    """The settings from the parsed flags, else ``TOLLGATE_*`` variables, else the defaults.

    Raises :class:`UsageError` naming the flag or variable whose value cannot be used.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for field in dataclasses.fields(settings):  # type: ignore[arg-type]
        flag = field.metadata["flag"]
        text, source = getattr(arguments, field.name, None), flag
        if text is None:
            source = environment_variable(flag)
            text = environ.get(source)
        if text is None:
            continue
        try:
            values[field.name] = field.metadata["parse"](text)
        except ValueError as error:
            shown = text if len(text) <= 80 else text[:80] + "…"
            raise UsageError(f"{source} {shown!r}: {error}") from None
    return settings(**values)
