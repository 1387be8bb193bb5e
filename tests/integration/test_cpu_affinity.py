"""``--cpu-affinity``, read back from the kernel (``/proc/<pid>/task/*/status``): with ``auto`` (the
default) and the threads engine, a server's Python threads — the loop's, gRPC's server thread and
the decision threads started once Checks arrive through a real Envoy — share one CPU, and gRPC's
own I/O threads keep every CPU; ``off`` and the aio engine pin nothing; two workers take two
CPUs; a value that is not a choice is refused in one line."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from authz.dev import harness, idp, upstream

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(
        len(os.sched_getaffinity(0)) < 2,
        reason="needs 2 CPUs (os.sched_getaffinity): on one CPU there is nothing to place",
    ),
]

ALL = sorted(os.sched_getaffinity(0))
Placed = tuple[list[list[int]], list[list[int]]]  # (Python's threads, gRPC's C++ threads): their CPUs


def _threads(pid: int) -> list[tuple[str, list[int]]]:
    """Each thread of ``pid``: its name and the CPUs it may run on."""
    found = []
    for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            status = (task / "status").read_text()
        except OSError:  # it ended meanwhile
            continue
        [line] = [line for line in status.splitlines() if line.startswith("Cpus_allowed_list:")]
        found.append((name, _cpus(line.split()[1])))
    return found


def _cpus(text: str) -> list[int]:
    """The kernel's list format ("0-2,5") as CPUs."""
    cpus: list[int] = []
    for span in text.split(","):
        first, _, last = span.partition("-")
        cpus.extend(range(int(first), int(last or first) + 1))
    return cpus


def _python_threads(pid: int) -> Placed:
    """(Python's threads, gRPC's C++ threads) of ``pid``, as their CPU lists. Python 3.12 does not
    name its threads, so each keeps the process's name; gRPC names its own."""
    process_name = pathlib.Path(f"/proc/{pid}/comm").read_text().strip()
    threads = _threads(pid)
    python = [cpus for name, cpus in threads if name == process_name]
    grpc_core = [cpus for name, cpus in threads if name != process_name]
    return python, grpc_core


@pytest.fixture
def config(tmp_path: pathlib.Path, dev_idp: idp.DevIdentityProvider) -> pathlib.Path:
    path = tmp_path / "policy.yaml"
    path.write_text(dev_idp.app_config("{name: open, action: Allow, to: {paths: ['/*']}}"))
    return path


@pytest.fixture
def placed(
    config: pathlib.Path,
    tollgate: Callable[..., harness.TollgateProcess],
    envoy: Callable[..., harness.Envoy],
    echo_upstream: upstream.EchoUpstream,
    http: Any,
) -> Callable[..., Placed]:
    """Start ``tollgate serve`` with these flags, send Checks through a real Envoy (they start the
    decision threads), and read (Python's threads, gRPC's C++ threads) as :func:`_python_threads`."""

    def start(*flags: str) -> Placed:
        authz = tollgate(config, *flags)
        proxy = envoy(authz_port=authz.port, upstream_port=echo_upstream.port)
        replies = [http(proxy.port, "GET", f"/x/{n}", host="app.test") for n in range(20)]
        assert [reply.status for reply in replies] == [200] * 20
        assert replies[-1].json()["path"] == "/x/19"  # decided, and the upstream got it
        assert authz.process is not None
        return _python_threads(authz.process.pid)

    return start


def test_auto_puts_the_python_threads_on_one_cpu_and_leaves_grpcs_own(
    tmp_path: pathlib.Path, placed: Callable[..., Placed]
) -> None:
    python, grpc_core = placed("--grpc-engine", "threads", "--grpc-threads", "2")
    # The loop's thread, gRPC's server thread and a decision thread, started by the first Check
    # after the server placed its threads (one at a time, these Checks needed one).
    assert len(python) >= 3
    [cpu] = python[0]
    assert all(cpus == [cpu] for cpus in python), python
    assert grpc_core and all(cpus == ALL for cpus in grpc_core), grpc_core
    [line] = [line for line in (tmp_path / "tollgate.log").read_text().splitlines() if "CPU affinity" in line]
    assert f"CPU affinity: Python threads on CPU {cpu} of " in line and "; gRPC's I/O threads unpinned" in line


@pytest.mark.parametrize(
    ("flags", "logged"),
    [
        (("--grpc-engine", "threads", "--cpu-affinity", "off"), "CPU affinity: off"),
        (("--grpc-engine", "aio"), "CPU affinity: none pinned (aio engine: a Check stays on the loop's thread)"),
    ],
)
def test_off_and_the_aio_engine_pin_nothing(
    flags: tuple[str, ...],
    logged: str,
    tmp_path: pathlib.Path,
    placed: Callable[..., Placed],
) -> None:
    python, grpc_core = placed(*flags)
    assert python and all(cpus == ALL for cpus in python + grpc_core)
    assert logged in (tmp_path / "tollgate.log").read_text()


def test_two_workers_take_two_cpus(tmp_path: pathlib.Path, config: pathlib.Path) -> None:
    metrics_port = harness.free_port()
    supervisor = harness.TollgateProcess(
        config,
        extra=["--workers", "2", "--grpc-engine", "threads", "--metrics-listen", f"127.0.0.1:{metrics_port}"],
        log_to=tmp_path / "tollgate.log",
    ).start()
    try:

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz", timeout=2) as reply:
                    return reply.status == 200
            except OSError:
                return False

        harness.wait_until(ready, what="both workers ready")
        assert supervisor.process is not None
        pid = supervisor.process.pid
        workers = [int(child) for child in pathlib.Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        assert len(workers) == 2
        placed = []
        for worker in workers:
            python, _ = _python_threads(worker)
            [cpus] = {tuple(cpus) for cpus in python}  # one CPU for all of a worker's Python threads
            placed.append(cpus)
        assert len(set(placed)) == 2, placed
        supervisor_python, _ = _python_threads(pid)
        assert all(cpus == ALL for cpus in supervisor_python)  # the supervisor decides nothing
    finally:
        assert supervisor.stop() == 0


def test_a_value_that_is_not_a_choice_is_refused_in_one_line(config: pathlib.Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "authz", "serve", "--config", str(config), "--cpu-affinity", "sometimes"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line == "tollgate: --cpu-affinity 'sometimes': must be one of auto, off"
