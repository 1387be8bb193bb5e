"""``make bench``: load through a real Envoy with wrk, then the micro-benchmarks.

Every scenario runs in this one process's run, one after the other, on the same machine, behind
the same Envoy configuration (``direct_response``, so no upstream is measured):

    envoy-only           Envoy without ext_authz (the ceiling)
    noop-authz           a do-nothing Python grpc.aio ext_authz server (the baseline)
    noop-authz-jwt       the same, sent the same bearer-token requests as tollgate-jwt-1000
    tollgate-1           Tollgate, 1 policy
    tollgate-1000        Tollgate, 1,000 policies (10,000 rules)
    tollgate-jwt-1000    Tollgate, 1,000 policies, RS256 bearer token (warm cache)
    hostile-token-1000   tollgate-jwt-1000 sent a token of 2,000 nested arrays (refused, 401)
    hostile-host-1000    tollgate-1000 sent two host names joined by a comma (refused, 400)
    baseline-*           with BENCH_BASELINE=<git revision>: tollgate-1000, tollgate-jwt-1000 and
                         audit-sync-1000 running that revision's code, measured in the same run
                         (before/after); and http-jwt-1000 and threads-jwt-1000 when that revision
                         has the HTTP edge and the threads engine
    audit-async-1000     tollgate-1000 with the audit trail, async mode (default)
    audit-sync-1000      tollgate-1000 with the audit trail, sync mode (fsync'd group commit)
    bare-jwt-1000        tollgate-jwt-1000 with --detection off (the others run the detectors, the default)
    observed-jwt-1000    tollgate-jwt-1000 with --metrics-listen, its /metrics scraped every second
    bare-hostile-token-1000
                         hostile-token-1000 with --detection off: every request a 401 the detectors count
    noop-authz-uvloop    noop-authz on uvloop's event loop
    noop-authz-threads   noop-authz on grpcio's synchronous server, 2 handler threads, no event loop
    aio-jwt-1000         tollgate-jwt-1000 with --grpc-engine aio (grpc.aio on uvloop; the scenarios
                         without an engine in their name run the default, auto: gRPC's threads,
                         and grpc.aio for the http-* ones)
    aio-audit-jwt-1000   audit-jwt-1000 with --grpc-engine aio
    threads-jwt-1000     tollgate-jwt-1000 with --grpc-engine threads (Checks on gRPC's threads)
    threads-audit-jwt-1000
                         audit-jwt-1000 with --grpc-engine threads
    threads16-jwt-1000   threads-jwt-1000 with --grpc-threads 16 (the default: 2)
    affinity-off-jwt-1000
                         tollgate-jwt-1000 with --cpu-affinity off (the default, auto, puts the
                         server's Python threads on one CPU; BENCH_PIN=1 pins every thread anyway)
    affinity-off-audit-jwt-1000
                         audit-jwt-1000 with --cpu-affinity off
    noop-http            a do-nothing HTTP ext_authz server: asyncio.Protocol + httptools on uvloop
    noop-http-uvicorn    the same answers from uvicorn (httptools, uvloop) and a raw ASGI app
    audit-jwt-1000       tollgate-jwt-1000 with the async audit trail (the issue's full work per Check)
    http-jwt-1000        tollgate-jwt-1000, Envoy asking over HTTP ext_authz (--http-listen)
    http-audit-jwt-1000  audit-jwt-1000 over HTTP ext_authz
    workers2-jwt-1000    tollgate-jwt-1000 with --workers 2 (Envoy: 8 streams per connection)
    http-workers2-jwt-1000
                         http-jwt-1000 with --workers 2

All backends and their Envoys start first; then short measurements are interleaved round by round
(A, B, C, A, B, C, ...) and the median of the rounds is reported, so machine drift hits every
scenario alike. Ratios are computed between scenarios of this one run only: numbers from different
runs are not comparable. Each ratio is given two ways: the ratio of the medians, and the median of
the per-round ratios (each round's pair was measured seconds apart, so drift cancels). A target is
met only if both meet it. Results: bench/results/latest.json and .md.

Environment: BENCH_DURATION (seconds per measurement, default 4), BENCH_ROUNDS (default 6),
BENCH_CONNECTIONS (default "4,16,64"), BENCH_SCENARIOS (comma-separated subset; "micro" for the
micro-benchmarks), BENCH_PIN (1: the ext_authz server on a CPU of its own, see placement()),
BENCH_BASELINE (a git revision to measure beside the working tree, see baseline-* above),
BENCH_CPU_LIMIT (CPUs, e.g. 0.5: each ext_authz server held to that by a CFS quota, as a pod's CPU
limit holds it; needs a writable cgroup CPU controller, see cpu_limit()).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import pathlib
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from authz.audit import note, pseudonym  # noqa: E402
from authz.dev import harness, idp  # noqa: E402
from bench import micro, policies  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("wrk not found: installing Debian's wrk package", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False)
        found = shutil.which("wrk")
        if found:
            return found
    sys.exit("bench: wrk is required (Debian/Ubuntu: sudo apt-get install wrk; macOS: brew install wrk)")


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    if not match:
        raise ValueError(f"cannot read wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def run_wrk(
    wrk: str,
    url: str,
    host: str,
    connections: int,
    duration: int,
    headers: dict[str, str],
    cpus: set[int] | None = None,
) -> dict[str, Any]:
    command = [wrk, "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-H", f"Host: {host}"]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    affinity = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    output = subprocess.run([*command, url], capture_output=True, text=True, check=True, preexec_fn=affinity).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    latency = {q: _ms(v) for q, v in re.findall(r"^\s+(50|99)%\s+(\S+)$", output, re.MULTILINE)}
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(r"Socket errors: (.*)", output)
    return {
        "rps": rps,
        "requests": requests,
        "p50_ms": latency["50"],
        "p99_ms": latency["99"],
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": errors.group(1) if errors else "",
    }


class Backend:
    """An ext_authz server process for one scenario (or none); ``mode``: how Envoy asks it."""

    def __init__(self, start: Callable[[], Any] | None, mode: str = "grpc", streams: int | None = None) -> None:
        self._start = start
        self.mode, self.streams = mode, streams
        self.process: Any = None

    def __enter__(self) -> int | None:
        if self._start is None:
            return None
        self.process, port = self._start()
        return port  # type: ignore[no-any-return]

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.stop()

    @property
    def pid(self) -> int | None:
        """The ext_authz server's process id (TollgateProcess and _Noop both hold a Popen)."""
        return self.process.process.pid if self.process is not None else None


class _Scraper(threading.Thread):
    """GET /metrics every second while the server runs, as a (busy) Prometheus would."""

    def __init__(self, port: int, process: Any) -> None:
        super().__init__(daemon=True, name="scraper")
        self._url, self._process = f"http://127.0.0.1:{port}/metrics", process

    def run(self) -> None:
        while self._process.process.poll() is None:
            with contextlib.suppress(OSError), urllib.request.urlopen(self._url, timeout=5) as reply:
                reply.read()
            time.sleep(1)


class _Noop:
    def __init__(self, *loop: str, script: str = "noop_authz.py") -> None:
        self.port = harness.free_port()
        self.process = subprocess.Popen([sys.executable, str(ROOT / "bench" / script), str(self.port), *loop], cwd=ROOT)
        harness.wait_for_port(self.port)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def placement() -> tuple[set[int], set[int]] | None:
    """BENCH_PIN=1: (CPUs for the ext_authz server, CPUs for Envoy and wrk), else None.

    As deployed, the ext_authz service has CPUs of its own rather than sharing them with the proxy
    and the clients; pinning also stops the scheduler from mixing the three differently per round.
    The server gets the last CPU, everything else the rest.
    """
    if os.environ.get("BENCH_PIN", "0") in ("", "0"):
        return None
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        sys.exit("bench: BENCH_PIN needs at least 2 CPUs")
    return {available[-1]}, set(available[:-1])


def cpu_limit() -> float | None:
    """BENCH_CPU_LIMIT=<CPUs> (e.g. 0.5): each ext_authz server held to that much CPU time by a CFS
    quota, as a pod's CPU limit holds it, else None. Where Envoy and wrk are not the bottleneck,
    a server's rps is then its CPU budget over its CPU per request."""
    text = os.environ.get("BENCH_CPU_LIMIT", "")
    if not text:
        return None
    try:
        cpus = float(text)
    except ValueError:
        sys.exit(f"bench: BENCH_CPU_LIMIT {text!r}: not a number of CPUs")
    if not 0 < cpus <= len(os.sched_getaffinity(0)):
        sys.exit(f"bench: BENCH_CPU_LIMIT {text!r}: must be above 0 and at most this machine's CPUs")
    return cpus


class Quota:
    """A cgroup holding the processes put in it to ``cpus`` CPUs (CFS bandwidth: cgroup v2's
    ``cpu.max``, or v1's ``cpu`` controller); removed on :meth:`close`."""

    PERIOD_US = 100_000

    def __init__(self, name: str, cpus: float) -> None:
        quota = round(cpus * self.PERIOD_US)
        unified = pathlib.Path("/sys/fs/cgroup")
        try:
            if "cpu" in _read(unified / "cgroup.controllers").split():
                self.path = unified / name
                self.path.mkdir()
                (self.path / "cpu.max").write_text(f"{quota} {self.PERIOD_US}\n")
            elif (unified / "cpu" / "cpu.cfs_quota_us").exists():
                self.path = unified / "cpu" / name
                self.path.mkdir()
                (self.path / "cpu.cfs_period_us").write_text(f"{self.PERIOD_US}\n")
                (self.path / "cpu.cfs_quota_us").write_text(f"{quota}\n")
            else:
                sys.exit("bench: BENCH_CPU_LIMIT needs a cgroup CPU controller (v2 cpu.max or v1 cpu)")
        except OSError as error:  # not root, or the controller not delegated here
            sys.exit(f"bench: BENCH_CPU_LIMIT: cannot set a CPU quota: {error.strerror}: {error.filename}")

    def add(self, pid: int | None) -> None:
        """Move a process (every thread; processes it starts later follow) into the group."""
        if pid is not None:
            (self.path / "cgroup.procs").write_text(f"{pid}\n")

    def close(self) -> None:
        for pid in _read(self.path / "cgroup.procs").split():  # none once the server stopped
            with contextlib.suppress(OSError):
                (self.path.parent / "cgroup.procs").write_text(f"{pid}\n")
        with contextlib.suppress(OSError):
            self.path.rmdir()


def _read(path: pathlib.Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def pin(pid: int | None, cpus: set[int]) -> None:
    """Move every thread of a running process onto ``cpus`` (threads it starts later inherit it)."""
    if pid is None:
        return
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(tid), cpus)


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of a process, all its threads and its children (``--workers``: the
    supervisor and every worker) so far (Linux /proc), else None."""
    split = cpu_split(pid)
    return None if split is None else sum(split)


def cpu_split(pid: int | None) -> list[float] | None:
    """CPU seconds of the process, then of each of its child processes (the workers), else None."""
    return None if pid is None else harness.cpu_split(pid)


def cpu_per_request(before: float | None, after: float | None, requests: int) -> float | None:
    """Microseconds of CPU per request between two readings, if both exist."""
    if before is None or after is None or not requests:
        return None
    return 1e6 * (after - before) / requests


@contextlib.contextmanager
def scenarios(work: pathlib.Path) -> Iterator[list[tuple[str, Backend, str, dict[str, str]]]]:
    provider = idp.DevIdentityProvider(work / "idp").start()
    try:
        one = work / "one"
        one_host = policies.write_policies(one, hosts=1, rules_per_host=10)
        many = work / "many"
        many_host = policies.write_policies(many, hosts=1000, rules_per_host=10)
        jwt_dir = work / "jwt"
        jwt_host = policies.write_policies(jwt_dir, hosts=1000, rules_per_host=10, provider_issuer=provider.issuer)
        token = provider.token("alice", groups=["staff"], lifetime=24 * 3600)
        # A token of 2,000 nested arrays (under 8 KiB): once a RecursionError and a 500, now a 401.
        nested = ".".join(
            base64.urlsafe_b64encode(part).rstrip(b"=").decode()
            for part in (b'{"alg":"RS256"}', b'{"x":' + b"[" * 2000 + b"]" * 2000 + b"}", b"sig")
        )

        skey, _ = note.generate("tollgate.dev/audit/bench")
        (work / "signing.key").write_text(skey)
        pseudonym.generate_key_file(work / "pseudonyms.yaml", "bench")

        def tollgate(
            config: pathlib.Path,
            audit: str = "",
            code: pathlib.Path | None = None,
            *flags: str,
            scrape: bool = False,
        ) -> Callable[[], Any]:
            extra = ["--reload-interval", "0", "--log-level", "WARNING", *flags]
            metrics_port = harness.free_port() if scrape else 0
            if scrape:
                extra += ["--metrics-listen", f"127.0.0.1:{metrics_port}"]
            if audit:
                extra += [
                    "--audit-dir",
                    str(work / f"audit-{audit}"),
                    "--audit-mode",
                    audit,
                    "--audit-signing-key",
                    str(work / "signing.key"),
                    "--audit-pseudonym-keys",
                    str(work / "pseudonyms.yaml"),
                ]

            def start() -> Any:
                http = "--http" in flags
                process = harness.TollgateProcess(
                    config,
                    extra=[flag for flag in extra if flag != "--http"],
                    log_to=work / "tollgate.log",
                    code=code,
                    http=http,
                ).start()
                if "--workers" in flags:
                    time.sleep(2)  # every worker listening, not only the first
                if scrape:
                    _Scraper(metrics_port, process).start()
                return process, process.http_port if http else process.port

            return start

        def noop() -> Any:
            server = _Noop()
            return server, server.port

        def noop_uvloop() -> Any:
            server = _Noop("uvloop")
            return server, server.port

        def noop_threads() -> Any:
            server = _Noop("threads", "2")
            return server, server.port

        def noop_http(kind: str) -> Callable[[], Any]:
            def start() -> Any:
                server = _Noop(kind, script="noop_http.py")
                return server, server.port

            return start

        bearer = {"Authorization": f"Bearer {token}"}
        threads = ("--grpc-engine", "threads", "--audit-instance", "threads")  # its own log instance
        aio = ("--grpc-engine", "aio", "--audit-instance", "aio")
        unplaced = ("--cpu-affinity", "off", "--audit-instance", "unplaced")

        compared = []
        revision = os.environ.get("BENCH_BASELINE", "")
        if revision:
            code = checkout(revision, work / "baseline")
            compared = [
                ("baseline-tollgate-1000", Backend(tollgate(many, code=code)), many_host, {}),
                (
                    "baseline-tollgate-jwt-1000",
                    Backend(tollgate(jwt_dir, code=code)),
                    jwt_host,
                    {"Authorization": f"Bearer {token}"},
                ),
            ]
            # Durable audit: every Check waits for its record (the gRPC engine's other path).
            synced = Backend(tollgate(many, "sync", code, "--audit-instance", "baseline"))
            compared.append(("baseline-audit-sync-1000", synced, many_host, {}))
            if "--grpc-engine" in (code / "authz" / "configuration.py").read_text():  # both engines there
                threads_baseline = Backend(tollgate(jwt_dir, "", code, *threads))
                compared.append(("baseline-threads-jwt-1000", threads_baseline, jwt_host, bearer))
            if (code / "authz" / "http_server.py").exists():
                http_baseline = Backend(tollgate(jwt_dir, "", code, "--http"), "http")
                compared.append(("baseline-http-jwt-1000", http_baseline, jwt_host, bearer))
        yield [
            ("envoy-only", Backend(None), one_host, {}),
            ("noop-authz", Backend(noop), one_host, {}),
            ("noop-authz-uvloop", Backend(noop_uvloop), one_host, {}),
            ("noop-authz-threads", Backend(noop_threads), one_host, {}),
            ("tollgate-1", Backend(tollgate(one)), one_host, {}),
            ("tollgate-1000", Backend(tollgate(many)), many_host, {}),
            ("noop-authz-jwt", Backend(noop), jwt_host, {"Authorization": f"Bearer {token}"}),
            ("tollgate-jwt-1000", Backend(tollgate(jwt_dir)), jwt_host, {"Authorization": f"Bearer {token}"}),
            # Hostile requests (docs/policy.md, security model): the cost of refusing them.
            ("hostile-token-1000", Backend(tollgate(jwt_dir)), jwt_host, {"Authorization": f"Bearer {nested}"}),
            ("hostile-host-1000", Backend(tollgate(many)), f"{many_host},a.{many_host}", {}),
            ("audit-async-1000", Backend(tollgate(many, "async")), many_host, {}),
            ("audit-sync-1000", Backend(tollgate(many, "sync")), many_host, {}),
            # Detection and metrics (docs/performance.md): the same requests, each costed alone.
            (
                "bare-jwt-1000",
                Backend(tollgate(jwt_dir, "", None, "--detection", "off")),
                jwt_host,
                {"Authorization": f"Bearer {token}"},
            ),
            (
                "observed-jwt-1000",
                Backend(tollgate(jwt_dir, scrape=True)),
                jwt_host,
                {"Authorization": f"Bearer {token}"},
            ),
            ("aio-jwt-1000", Backend(tollgate(jwt_dir, "", None, *aio)), jwt_host, bearer),
            ("aio-audit-jwt-1000", Backend(tollgate(jwt_dir, "async", None, *aio)), jwt_host, bearer),
            ("threads-jwt-1000", Backend(tollgate(jwt_dir, "", None, *threads)), jwt_host, bearer),
            ("threads-audit-jwt-1000", Backend(tollgate(jwt_dir, "async", None, *threads)), jwt_host, bearer),
            # --cpu-affinity off: every thread where the kernel puts it (unpinned runs; BENCH_PIN pins all).
            ("affinity-off-jwt-1000", Backend(tollgate(jwt_dir, "", None, *unplaced)), jwt_host, bearer),
            ("affinity-off-audit-jwt-1000", Backend(tollgate(jwt_dir, "async", None, *unplaced)), jwt_host, bearer),
            (
                "threads16-jwt-1000",
                Backend(tollgate(jwt_dir, "", None, *threads, "--grpc-threads", "16")),
                jwt_host,
                {"Authorization": f"Bearer {token}"},
            ),
            (
                "bare-hostile-token-1000",
                Backend(tollgate(jwt_dir, "", None, "--detection", "off")),
                jwt_host,
                {"Authorization": f"Bearer {nested}"},
            ),
            # The HTTP ext_authz edge and several workers (issue: cost per decision).
            ("noop-http", Backend(noop_http("protocol"), "http"), one_host, {}),
            ("noop-http-uvicorn", Backend(noop_http("uvicorn"), "http"), one_host, {}),
            ("audit-jwt-1000", Backend(tollgate(jwt_dir, "async")), jwt_host, bearer),
            ("http-jwt-1000", Backend(tollgate(jwt_dir, "", None, "--http"), "http"), jwt_host, bearer),
            ("http-audit-jwt-1000", Backend(tollgate(jwt_dir, "async", None, "--http"), "http"), jwt_host, bearer),
            (
                "workers2-jwt-1000",
                Backend(tollgate(jwt_dir, "", None, "--workers", "2"), "grpc", streams=8),
                jwt_host,
                bearer,
            ),
            (
                "http-workers2-jwt-1000",
                Backend(tollgate(jwt_dir, "", None, "--workers", "2", "--http"), "http"),
                jwt_host,
                bearer,
            ),
            *compared,
        ]
    finally:
        provider.stop()


def checkout(revision: str, directory: pathlib.Path) -> pathlib.Path:
    """The ``authz`` package of ``revision`` (git archive), for a before/after comparison in one run."""
    archive = subprocess.run(["git", "archive", revision, "authz"], cwd=ROOT, capture_output=True, check=True).stdout
    directory.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(directory, filter="data")
    return directory


def main() -> int:
    wrk = ensure_wrk()
    duration = int(os.environ.get("BENCH_DURATION", "4"))
    rounds = int(os.environ.get("BENCH_ROUNDS", "6"))
    connection_counts = [int(c) for c in os.environ.get("BENCH_CONNECTIONS", "4,16,64").split(",")]
    wanted = set(filter(None, os.environ.get("BENCH_SCENARIOS", "").split(",")))
    results: dict[str, Any] = {
        "duration_s": duration,
        "rounds": rounds,
        "cpus": os.cpu_count(),
        "load": {},
        "micro": {},
    }
    cpus = placement()
    results["pinned"] = None if cpus is None else {"ext_authz": sorted(cpus[0]), "envoy_and_wrk": sorted(cpus[1])}
    client_cpus = None if cpus is None else cpus[1]
    limit = cpu_limit()
    results["cpu_limit"] = limit
    with contextlib.ExitStack() as stack:
        directory = pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tollgate-bench-")))
        plan = [p for p in stack.enter_context(scenarios(directory)) if not wanted or p[0] in wanted]
        running: list[tuple[str, str, str, dict[str, str], int | None, int | None]] = []
        for name, backend, host, headers in plan:
            authz_port = stack.enter_context(backend)
            proxy = harness.Envoy(
                authz_port=authz_port, upstream_port=None, authz_mode=backend.mode, authz_streams=backend.streams
            ).start()
            stack.callback(proxy.stop)
            if cpus is not None:
                pin(backend.pid, cpus[0])
                pin(proxy.pid, cpus[1])
            if limit is not None and backend.pid is not None:
                quota = Quota(f"tollgate-bench-{os.getpid()}-{len(running)}", limit)
                stack.callback(quota.close)  # runs before the server stops: its process moves back out
                quota.add(backend.pid)
            url = f"{proxy.url}/api/orders"
            run_wrk(wrk, url, host, 16, 2, headers, client_cpus)  # warm-up: connections, caches, keys
            running.append((name, url, host, headers, backend.pid, proxy.pid))
        # Interleaved rounds: every scenario sees the same machine drift; medians are reported.
        samples: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for connections in connection_counts:
            for round_number in range(rounds):
                for name, url, host, headers, authz_pid, envoy_pid in running:
                    cpu_before = cpu_seconds(authz_pid), cpu_seconds(envoy_pid)
                    split_before = cpu_split(authz_pid)
                    numbers = run_wrk(wrk, url, host, connections, duration, headers, client_cpus)
                    split_after = cpu_split(authz_pid)
                    if split_before and split_after and len(split_after) == len(split_before) > 2:
                        # --workers: each process's share of the server's CPU in this measurement
                        used = [after - before for before, after in zip(split_before, split_after, strict=True)]
                        numbers["cpu_split"] = [round(part / (sum(used) or 1), 3) for part in used]
                    # CPU per request is far less noisy than rps here: it is what a change costs.
                    numbers["authz_cpu_us"] = cpu_per_request(
                        cpu_before[0], cpu_seconds(authz_pid), numbers["requests"]
                    )
                    numbers["envoy_cpu_us"] = cpu_per_request(
                        cpu_before[1], cpu_seconds(envoy_pid), numbers["requests"]
                    )
                    samples.setdefault((name, connections), []).append(numbers)
                    flag = f"  NON-2xx: {numbers['non_2xx']}" if numbers["non_2xx"] else ""
                    print(
                        f"round {round_number + 1}  {name:20} c={connections:<3} {numbers['rps']:9.0f} rps  "
                        f"p50 {numbers['p50_ms']:7.2f} ms  p99 {numbers['p99_ms']:7.2f} ms{flag}",
                        flush=True,
                    )
        for (name, connections), runs in samples.items():
            results["load"].setdefault(name, {})[str(connections)] = {
                "rps": statistics.median(r["rps"] for r in runs),
                "p50_ms": statistics.median(r["p50_ms"] for r in runs),
                "p99_ms": statistics.median(r["p99_ms"] for r in runs),
                "non_2xx": sum(r["non_2xx"] for r in runs),
                "rounds_rps": [r["rps"] for r in runs],
                "rounds_cpu_us": [r["authz_cpu_us"] for r in runs],
                "authz_cpu_us": _median_or_none([r["authz_cpu_us"] for r in runs]),
                "envoy_cpu_us": _median_or_none([r["envoy_cpu_us"] for r in runs]),
                "cpu_split": [r["cpu_split"] for r in runs if "cpu_split" in r],
            }
    if not wanted or "micro" in wanted:
        results["micro"] = micro.run()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2))
    report = render(results)
    (RESULTS / "latest.md").write_text(report)
    print("\n" + report)
    return 0


def _median_or_none(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _paired_cpu(n: dict[str, Any], b: dict[str, Any]) -> str:
    pairs = [
        x / y
        for x, y in zip(n.get("rounds_cpu_us", []), b.get("rounds_cpu_us", []), strict=False)
        if x is not None and y
    ]
    return f"{100 * statistics.median(pairs):.1f} %" if pairs else "—"


def _us(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f}"


def render(results: dict[str, Any]) -> str:
    load = results["load"]
    pinned = results.get("pinned")
    where = (
        f"Placement: ext_authz server on CPU {pinned['ext_authz']}, Envoy and wrk on CPU {pinned['envoy_and_wrk']}."
        if pinned
        else "Placement: not pinned (every process may run on every CPU)."
    )
    if results.get("cpu_limit"):
        where += f" Each ext_authz server limited to {results['cpu_limit']} CPU (a CFS quota, as a pod's CPU limit)."
    lines = [
        where,
        "",
        "| scenario | conns | rps (median) | p50 ms | p99 ms | non-2xx | ext_authz CPU µs/req | Envoy CPU µs/req "
        "| rps per round |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, by_connections in load.items():
        for connections, n in by_connections.items():
            per_round = ", ".join(f"{r:.0f}" for r in n["rounds_rps"])
            lines.append(
                f"| {name} | {connections} | {n['rps']:.0f} | {n['p50_ms']:.2f} | {n['p99_ms']:.2f} "
                f"| {n['non_2xx']} | {_us(n.get('authz_cpu_us'))} | {_us(n.get('envoy_cpu_us'))} | {per_round} |"
            )
    pairs = [(name, "noop-authz") for name in load if name.startswith("tollgate")]
    pairs += [("tollgate-jwt-1000", "noop-authz-jwt")]
    compared = ("tollgate-1000", "tollgate-jwt-1000", "http-jwt-1000", "audit-sync-1000", "threads-jwt-1000")
    pairs += [(name, "baseline-" + name) for name in compared]
    pairs += [("audit-async-1000", "tollgate-1000"), ("audit-sync-1000", "audit-async-1000")]
    pairs += [("tollgate-jwt-1000", "bare-jwt-1000"), ("observed-jwt-1000", "tollgate-jwt-1000")]
    pairs += [("observed-jwt-1000", "bare-jwt-1000"), ("hostile-token-1000", "bare-hostile-token-1000")]
    pairs += [("noop-authz-uvloop", "noop-authz"), ("threads16-jwt-1000", "threads-jwt-1000")]
    pairs += [("threads-jwt-1000", "tollgate-jwt-1000"), ("threads-audit-jwt-1000", "audit-jwt-1000")]
    pairs += [("tollgate-jwt-1000", "aio-jwt-1000"), ("audit-jwt-1000", "aio-audit-jwt-1000")]
    pairs += [("aio-audit-jwt-1000", "noop-authz-uvloop")]
    pairs += [("tollgate-jwt-1000", "affinity-off-jwt-1000"), ("audit-jwt-1000", "affinity-off-audit-jwt-1000")]
    pairs += [("threads-jwt-1000", "noop-authz-uvloop"), ("threads-audit-jwt-1000", "noop-authz-uvloop")]
    pairs += [("tollgate-jwt-1000", "noop-authz-uvloop"), ("audit-jwt-1000", "noop-authz-uvloop")]
    pairs += [("noop-authz-threads", "noop-authz-uvloop")]
    pairs += [("noop-http-uvicorn", "noop-http"), ("http-jwt-1000", "noop-http")]
    pairs += [("http-jwt-1000", "tollgate-jwt-1000"), ("http-audit-jwt-1000", "audit-jwt-1000")]
    pairs += [("workers2-jwt-1000", "tollgate-jwt-1000"), ("http-workers2-jwt-1000", "http-jwt-1000")]
    ratios = []
    for name, base in pairs:
        if name in load and base in load:
            for connections, n in load[name].items():
                if connections in load[base]:
                    b = load[base][connections]
                    paired = statistics.median(x / y for x, y in zip(n["rounds_rps"], b["rounds_rps"], strict=True))
                    of_medians = 100 * n["rps"] / b["rps"]
                    cpu = _paired_cpu(n, b)
                    ratios.append(
                        f"| {name} / {base} | {connections} | {of_medians:.1f} % | {100 * paired:.1f} % | {cpu} |"
                    )
    if ratios:
        lines += [
            "",
            "| ratio (same run) | conns | rps: ratio of medians | rps: median of per-round ratios "
            "| ext_authz CPU µs/req: median of per-round ratios |",
            "|---|---:|---:|---:|---:|",
            *ratios,
        ]
    if results.get("micro"):
        lines += ["", "| micro-benchmark | p50 µs | p99 µs |", "|---|---:|---:|"]
        lines += [f"| {k} | {v['p50_us']:.2f} | {v['p99_us']:.2f} |" for k, v in results["micro"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
