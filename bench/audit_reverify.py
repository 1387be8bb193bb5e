"""Verifying a growing log again, as the auditors' web view does every few minutes: from scratch
against with what the last verification checked (:mod:`authz.audit.checked`).

``python bench/audit_reverify.py [COUNT] [ADDED] [HEARTBEATS]`` (defaults 1,000,000, 10,000 and
25,920). One live session written by the real log writer with the server's defaults (64 MiB
segments, a checkpoint every 1,000 records), then HEARTBEATS checkpoints of an idle server (one
every 10 s: 25,920 is three days); then, in this process, CPU time (``time.process_time``) of: a
verification from scratch; the first verification with a cache (it fills it); the same again
with nothing changed; and after ADDED more records and their checkpoints, once with the cache
and once from scratch. Every verification must find the log intact. Results:
bench/results/audit-reverify.json.
"""

from __future__ import annotations

import json
import pathlib
import random
import sys
import tempfile
import time
from collections.abc import Callable

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from authz.audit import checked, note, pseudonym, verify  # noqa: E402
from authz.audit import log as audit_log  # noqa: E402
from authz.dev import auditlog  # noqa: E402


def _cpu(run: Callable[[], verify.Report]) -> float:
    start = time.process_time()
    report = run()
    spent = time.process_time() - start
    if report.exit_code != 0:
        raise SystemExit(f"the log did not verify intact: {report.findings[:3]}")
    return round(spent, 2)


def main() -> int:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    added = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
    heartbeats = int(sys.argv[3]) if len(sys.argv) > 3 else 25_920
    with tempfile.TemporaryDirectory(prefix="tollgate-reverify-") as work:
        directory = pathlib.Path(work)
        skey, vkey = note.generate("tollgate.dev/audit/bench")
        pseudonym.generate_key_file(directory / "pseudonyms.yaml", "bench")
        keys = pseudonym.load_keys(directory / "pseudonyms.yaml")
        settings = audit_log.LogSettings(checkpoint_seconds=3600)  # heartbeats written below, not timed
        log = audit_log.AuditLog(directory / "audit", note.Signer.from_skey(skey), instance="bench", settings=settings)
        log.open()
        rng = random.Random(1)
        try:
            auditlog.append_decisions(log, keys, rng, count)
            log.checkpoint()
            for _ in range(heartbeats):
                log.checkpoint()
            verifier = note.Verifier(vkey)
            audit = directory / "audit"
            cache = checked.Cache()
            results: dict[str, object] = {"records": log.size, "added": added}
            results["checkpoints"] = len((log.session_dir / "checkpoints.jsonl").read_bytes().splitlines())
            results["from_scratch_cpu_s"] = _cpu(lambda: verify.verify_directory(audit, verifier))
            results["first_with_cache_cpu_s"] = _cpu(lambda: verify.verify_directory(audit, verifier, cache=cache))
            results["unchanged_cpu_s"] = _cpu(lambda: verify.verify_directory(audit, verifier, cache=cache))
            auditlog.append_decisions(log, keys, rng, added)
            log.checkpoint()
            results["grown_with_cache_cpu_s"] = _cpu(lambda: verify.verify_directory(audit, verifier, cache=cache))
            results["grown_from_scratch_cpu_s"] = _cpu(lambda: verify.verify_directory(audit, verifier))
            results["bytes"] = sum(p.stat().st_size for p in audit.rglob("*.jsonl"))
        finally:
            log.close()
    for name, value in results.items():
        print(f"{name}: {value}")
    out = ROOT / "bench" / "results" / "audit-reverify.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
