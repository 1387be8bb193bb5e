"""Instructions per allowed Check, counted by valgrind's callgrind: repeatable where timings are not.

    python -m bench.instructions [REVISION]

Runs ``decide_check()`` + ``response.encode()`` (and, measured separately, what metrics and
detection add: ``CheckMetrics.observe`` and ``Detection.observe``) in-process on one Envoy-shaped CheckRequest (a cached
path, 5 policies of 10 rules, anonymous caller) N and 2N times under callgrind, for the working
tree and, if given, another git revision's ``authz`` package; the difference of the two totals
over N is the cost of one Check, start-up excluded. Needs Debian's valgrind (it says so if absent).
Wall-clock under load is ``make bench``'s job; this tells what a change costs in work done.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

from bench import run

_N = 4000
_WORKLOAD = """
import asyncio, os, pathlib, sys, tempfile
from authz import decision, loader, response
from authz.dev import checks
from authz.identity import model
sys.path.insert(0, os.environ["TOLLGATE_ROOT"])
from bench import policies

class Anonymous:
    def resolve_now(self, request, scope): return model.ANONYMOUS
    async def resolve(self, request, scope): return model.ANONYMOUS

directory = pathlib.Path(tempfile.mkdtemp())
host = policies.write_policies(directory, hosts=5, rules_per_host=10)
headers = {"user-agent": "wrk", "accept": "*/*", "x-forwarded-proto": "http",
           "x-envoy-expected-rq-timeout-ms": "15000", "authorization": "Bearer " + "a" * 600}
message = checks.check_request(host=host, path="/api/orders", headers=headers)
snapshot = loader.load(directory)

decide_check = getattr(decision, "decide_check", None) or decision.decide  # older revisions: decide()

observe = []
if os.environ.get("OBSERVED") == "1":  # what the service adds with metrics and detection on
    from authz import detect, metrics
    tally, detection = metrics.CheckMetrics(), detect.Detection(detect.Settings())
    bearer = model.Identity(authenticated=True, method="jwt", subject="alice", token_hash="ab" * 16)
    def observed(decided):
        tally.in_flight += 1
        tally.in_flight -= 1
        tally.observe(decided)
        decided.identity = bearer  # as a Check with a bearer token: token-replay bookkeeping too
        detection.observe(decided)
    observe.append(observed)

def check():
    coroutine = decide_check(message, snapshot, Anonymous(), wire_size=500)
    try:
        coroutine.send(None)
    except StopIteration as done:
        answer = response.encode(done.value)
        for step in observe:
            step(done.value)
        return answer

for _ in range(2000 + int(os.environ["CHECKS"])):  # the first 2,000 warm caches and templates
    check()
"""


def _count(code: pathlib.Path | None, checks: int, work: pathlib.Path, *, observed: bool) -> int:
    script = work / "workload.py"
    script.write_text(_WORKLOAD)
    # A fixed hash seed: string hashes decide dict probing, and so a few thousand instructions per Check.
    env = {**os.environ, "CHECKS": str(checks), "TOLLGATE_ROOT": str(run.ROOT), "PYTHONHASHSEED": "0"}
    env["OBSERVED"] = "1" if observed else "0"
    if code is not None:
        env["PYTHONPATH"] = str(code)
    output = subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={work / 'out'}", sys.executable, str(script)],
        cwd=work,  # not the repository: its authz/ would come first on sys.path
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    collected = re.search(r"Collected : (\d+)", output)
    if collected is None:
        raise RuntimeError(f"callgrind printed no total:\n{output}")
    return int(collected.group(1))


def per_check(code: pathlib.Path | None, *, observed: bool = False) -> float:
    with tempfile.TemporaryDirectory(prefix="tollgate-instructions-") as name:
        work = pathlib.Path(name)
        return (_count(code, 2 * _N, work, observed=observed) - _count(code, _N, work, observed=observed)) / _N


def main(argv: list[str]) -> int:
    if shutil.which("valgrind") is None:
        print("bench.instructions: valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    plain = per_check(None)
    print(f"working tree: {plain:,.0f} instructions per allowed Check")
    observed = per_check(None, observed=True)
    print(
        f"working tree, with metrics and detection (a bearer-token Check): {observed:,.0f} "
        f"instructions per allowed Check ({100 * (observed / plain - 1):+.1f} %)"
    )
    if argv:
        with tempfile.TemporaryDirectory(prefix="tollgate-baseline-") as name:
            code = run.checkout(argv[0], pathlib.Path(name) / "code")
            print(f"{argv[0]}: {per_check(code):,.0f} instructions per allowed Check")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
