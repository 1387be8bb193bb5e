"""The operator's test bench: a real HTTP Kubernetes API (kmock's emulator, :mod:`authz.dev.apiserver`),
real ``tollgate operator`` processes (kopf) talking to it, and lightkube as the test's kubectl.

- ``apiserver``: the API on loopback, in its own thread; ``apiserver.get(...)`` reads its store.
- ``kube``: a lightkube client (what ``kubectl apply/get/delete`` would do).
- ``start_operator``: a factory for ``tollgate operator`` subprocesses, always stopped.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Iterator

import pytest
from lightkube import Client, KubeConfig

from authz.dev import apiserver, harness

PUBLISHED = ("tollgate-system", "tollgate-config")


@pytest.fixture
def apiserver_thread() -> Iterator[apiserver.ApiServerThread]:
    server = apiserver.ApiServerThread().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def kubeconfig(tmp_path: pathlib.Path, apiserver_thread: apiserver.ApiServerThread) -> pathlib.Path:
    return apiserver_thread.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture
def kube(kubeconfig: pathlib.Path) -> Iterator[Client]:
    client = Client(config=KubeConfig.from_file(kubeconfig), field_manager="tests")
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def start_operator(
    tmp_path: pathlib.Path, kubeconfig: pathlib.Path
) -> Iterator[Callable[..., harness.OperatorProcess]]:
    started: list[harness.OperatorProcess] = []

    def start(*extra: str, log: str = "operator.log") -> harness.OperatorProcess:
        process = harness.OperatorProcess(kubeconfig, extra=["--peering", "", *extra], log_to=tmp_path / log).start()
        started.append(process)
        return process

    try:
        yield start
    finally:
        for process in reversed(started):
            process.stop()
