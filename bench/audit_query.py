"""Audit tools on a million records: write them with the real log writer, then time the commands.

``python bench/audit_query.py [COUNT]`` (default 1,000,000). Each command runs as a real
``tollgate audit ...`` subprocess, so the times include start-up, reading every segment and
writing the output to /dev/null. Results: bench/results/audit-query.json.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from authz.dev import auditlog  # noqa: E402


def write_log(directory: pathlib.Path, count: int) -> pathlib.Path:
    return auditlog.write_log(directory, count).directory


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def main() -> int:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    with tempfile.TemporaryDirectory(prefix="tollgate-query-") as work:
        directory = pathlib.Path(work)
        start = time.perf_counter()
        audit = write_log(directory, count)
        written = time.perf_counter() - start
        size = sum(p.stat().st_size for p in audit.rglob("*.jsonl"))
        tool = [sys.executable, "-m", "authz", "audit"]
        results = {"records": count, "bytes": size, "write_s": written}
        runs = {
            "verify": [*tool, "verify", str(audit), "--key", str(directory / "verifier.key")],
            "query --decision deny --host svc-7.example.test (json)": [
                *tool,
                "query",
                str(audit),
                "--decision",
                "deny",
                "--host",
                "svc-7.example.test",
                "--format",
                "json",
            ],
            "query --subject user-42 (csv, pseudonym keys)": [
                *tool,
                "query",
                str(audit),
                "--subject",
                "user-42",
                "--pseudonym-keys",
                str(directory / "pseudonyms.yaml"),
                "--format",
                "csv",
            ],
            "query --since 10s (last 1%)": [*tool, "query", str(audit), "--since", "10s", "--format", "json"],
            "query (export everything as csv)": [*tool, "query", str(audit), "--format", "csv"],
            "report": [*tool, "report", str(audit)],
        }
        for name, command in runs.items():
            results[name] = timed(command)
            print(f"{name:55} {results[name]:7.2f} s", flush=True)
    print(f"wrote {count} records ({size / 1e6:.0f} MB) in {written:.1f} s")
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "results" / "audit-query.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
