"""Memory for reading a long-lived session's checkpoints file, which the idle heartbeat grows by
8,640 lines a day per instance.

``python bench/audit_long_session.py [HEARTBEATS] [TREE]`` (default 100,000 heartbeats: 11.6 days
of an idle server). Writes one session with the real log writer — a few records, then HEARTBEATS
checkpoints 10 s apart (the writer's clock is stepped so that they are) — and then, each in a
fresh process importing Tollgate from TREE (default: this checkout; give another checkout to
compare revisions), the peak resident memory (``ru_maxrss``) of: the interpreter with the modules
imported and nothing read; ``tollgate audit verify`` of the log; the server's start-up after that
session (a new session links to the previous one's last checkpoint); retention's evidence for the
session's first segment; and the checkpoints witnesses fetch. Results:
bench/results/audit-long-session.json.
"""

from __future__ import annotations

import contextlib
import io
import json
import pathlib
import random
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from authz import cli  # noqa: E402
from authz.audit import log as audit_log  # noqa: E402
from authz.audit import note, pseudonym  # noqa: E402
from authz.dev import auditlog  # noqa: E402

_SETUP = """
import pathlib, resource, shutil, sys
sys.path.insert(0, sys.argv[1])
from authz import cli
from authz.audit import layout, note, publish, log as audit_log
base = pathlib.Path(sys.argv[2])
audit, keys = base / "audit", base / "keys"
"""

_WORK = {
    "imported, nothing read": "pass",
    "audit verify": (
        "import contextlib, io\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert cli.main(['audit', 'verify', str(audit), '--key', str(keys / 'verifier.key')]) == 0"
    ),
    "server start-up after the session": (
        "copy = base / 'start'; shutil.copytree(audit, copy)\n"
        "signer = note.Signer.from_skey((keys / 'signing.key').read_text())\n"
        "log = audit_log.AuditLog(copy, signer, instance='pod-1', settings=audit_log.LogSettings())\n"
        "log.open(); log.close(); shutil.rmtree(copy)"
    ),
    "retention evidence for the first segment": (
        "session = next(audit.glob('pod-1/*'))\n"
        "assert layout.segment_evidence(layout.session_segments(session)[0]) is not None"
    ),
    "checkpoints for witnesses": (
        "server = publish.LogPublisher(audit, '127.0.0.1', 0).start()\n"
        "status, body = server.answer('/audit/v1/checkpoints'); server.stop()\n"
        "assert status == 200 and len(body['logs']) == 1"
    ),
}
_REPORT = "\nprint(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"


def _write(base: pathlib.Path, heartbeats: int) -> int:
    with contextlib.redirect_stdout(io.StringIO()):
        cli.main(["audit", "keygen", "--name", "tollgate.dev/audit/bench", "--out", str(base / "keys")])
        cli.main(["audit", "pseudonym-key", "--file", str(base / "keys" / "pseudonyms.yaml"), "--id", "k1"])
    signer = note.Signer.from_skey((base / "keys" / "signing.key").read_text())
    keys = pseudonym.load_keys(base / "keys" / "pseudonyms.yaml")
    clock = iter(range(time.time_ns() // 1_000_000 - 20_000 * heartbeats, 1 << 62, 10_000))
    audit_log._now_ms = lambda: next(clock)  # heartbeats 10 s apart, as an idle server signs them
    settings = audit_log.LogSettings(segment_max_bytes=64 * 1024, checkpoint_seconds=3600)
    log = audit_log.AuditLog(base / "audit", signer, instance="pod-1", settings=settings)
    log.open()
    auditlog.append_decisions(log, keys, random.Random(5), 300)
    for _ in range(heartbeats):
        log.checkpoint()
    log.close()
    return (log.session_dir / "checkpoints.jsonl").stat().st_size


def main() -> None:
    heartbeats = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    tree = pathlib.Path(sys.argv[2]).resolve() if len(sys.argv) > 2 else ROOT
    base = pathlib.Path(tempfile.mkdtemp(prefix="tollgate-long-session-"))
    try:
        size = _write(base, heartbeats)
        print(f"checkpoints file: {size / 1e6:.1f} MB, {heartbeats} heartbeats; code from {tree}")
        peaks: dict[str, int] = {}
        results = {"heartbeats": heartbeats, "checkpoints_bytes": size, "tree": str(tree), "peak_rss_kib": peaks}
        for name, work in _WORK.items():
            started = time.monotonic()
            done = subprocess.run(
                [sys.executable, "-c", _SETUP + work + _REPORT, str(tree), str(base)],
                capture_output=True,
                text=True,
                check=True,
            )
            peak = int(done.stdout.split()[-1])
            peaks[name] = peak
            print(f"{name:45s} {peak / 1024:8.1f} MiB peak  {time.monotonic() - started:6.2f} s")
        out = ROOT / "bench" / "results" / "audit-long-session.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
