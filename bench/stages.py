"""Where a Check's time goes under load: stage timers inside a real server behind a real Envoy.

    .venv/bin/python -m bench.stages               # RS256 token, 1,000 policies, 16 connections
    BENCH_PIN=1 .venv/bin/python -m bench.stages   # the server on a CPU of its own

Loop micro-benchmarks miss most of it: under load the caches are cold between Checks, and a stage
costs several times its isolated time. This starts the local identity provider, Tollgate with
:mod:`bench.stage_timers` installed, and Envoy; warms up; starts the timers over; loads with wrk
for BENCH_DURATION seconds (default 15); stops the server and prints each stage's mean µs per
Check, and the server's CPU µs per request. Means of one run: compare variants run back to back.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import signal
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from authz.dev import harness, idp  # noqa: E402
from bench import policies  # noqa: E402
from bench.run import cpu_per_request, cpu_seconds, ensure_wrk, pin, placement, run_wrk  # noqa: E402


def main() -> int:
    wrk = ensure_wrk()
    duration = int(os.environ.get("BENCH_DURATION", "15"))
    cpus = placement()
    client_cpus = None if cpus is None else cpus[1]
    with contextlib.ExitStack() as stack:
        work = pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tollgate-stages-")))
        provider = idp.DevIdentityProvider(work / "idp").start()
        stack.callback(provider.stop)
        host = policies.write_policies(
            work / "policies", hosts=1000, rules_per_host=10, provider_issuer=provider.issuer
        )
        headers = {"Authorization": f"Bearer {provider.token('alice', groups=['staff'], lifetime=3600)}"}
        server = harness.TollgateProcess(
            work / "policies",
            extra=["--reload-interval", "0", "--log-level", "WARNING"],
            env={"TOLLGATE_STAGE_TIMES": str(work / "stages.json"), "PYTHONPATH": str(ROOT)},
            log_to=work / "tollgate.log",
        )
        server.args[1:3] = ["-c", "import bench.stage_timers as timers; timers.run()"]  # instead of -m authz
        server.start()
        stack.callback(server.stop)
        proxy = harness.Envoy(authz_port=server.port, upstream_port=None).start()
        stack.callback(proxy.stop)
        assert server.process is not None
        if cpus is not None:
            pin(server.process.pid, cpus[0])
            pin(proxy.pid, cpus[1])
        url = f"{proxy.url}/api/orders"
        run_wrk(wrk, url, host, 16, 3, headers, client_cpus)  # warm-up: connections, caches, keys
        server.process.send_signal(signal.SIGUSR1)
        before = cpu_seconds(server.process.pid)
        load = run_wrk(wrk, url, host, 16, duration, headers, client_cpus)
        server_cpu = cpu_per_request(before, cpu_seconds(server.process.pid), load["requests"])
        server.stop()
        timings = json.loads((work / "stages.json").read_text())
    print(f"tollgate-jwt-1000 at 16 connections, {duration} s: {load['rps']:.0f} rps, non-2xx {load['non_2xx']}")
    print(f"placement: {'pinned ' + str(cpus) if cpus else 'not pinned'}; server CPU {server_cpu:.0f} µs/request")
    print(f"{timings['checks']} Checks timed; mean µs per Check:")
    for name, mean in timings["mean_us"].items():
        print(f"  {name:24} {mean:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
