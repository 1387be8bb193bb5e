"""The auditors' web view on a million records: index build, then page render times.

``python bench/audit_ui.py [COUNT]`` (default 1,000,000 decisions over 30 days, an alert every
10,000). The index is built in this process (timed), then a real ``tollgate audit ui`` serves it;
each page is fetched over HTTP, once to warm up and then 5 times: the median and the worst wall
time are reported (the target: under 1 s). A last step appends 10,000 records and times the
incremental refresh. Results: bench/results/audit-ui.json.
"""

from __future__ import annotations

import json
import pathlib
import statistics
import sys
import tempfile
import time
import urllib.parse
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from authz.audit import index  # noqa: E402
from authz.dev import auditlog, harness  # noqa: E402

DAY_MS = 86_400_000


def fetch(url: str) -> tuple[float, int]:
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as reply:
        size = len(reply.read())
    return time.perf_counter() - start, size


def main() -> int:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    results: dict[str, object] = {"records": count}
    with tempfile.TemporaryDirectory(prefix="tollgate-ui-") as work:
        directory = pathlib.Path(work)
        start = time.perf_counter()
        written = auditlog.write_log(directory, count, spacing_ms=30 * DAY_MS // count, alert_every=10_000)
        results["write_s"] = round(time.perf_counter() - start, 1)
        path = directory / "index.sqlite3"
        start = time.perf_counter()
        index.Index(path, [written.directory]).refresh()
        results["index_build_s"] = round(time.perf_counter() - start, 1)
        results["index_mb"] = round(path.stat().st_size / 1e6)
        results["log_mb"] = round(sum(p.stat().st_size for p in written.directory.rglob("*.jsonl")) / 1e6)
        print(f"wrote {count} records in {results['write_s']} s; indexed in {results['index_build_s']} s", flush=True)
        ui = harness.AuditUI(
            written.directory,
            written.verifier_key,
            path,
            extra=["--local-only", "--pseudonym-keys", str(written.pseudonym_keys), "--verify-interval", "86400"],
        ).start()
        try:
            record_id = _first_record(ui.url)
            pages = {
                "overview, last 24 h": "/?range=24h",
                "overview, all 30 days": "/?range=all",
                "search, no filter (page 1)": "/search",
                "search, one subject by real name (keys)": "/search?subject=user-42",
                "search, denials of one host, last 7 days": "/search?decision=deny&host=svc-7.example.test&since=7d",
                "search, path prefix": "/search?path_prefix=/api/orders/97",
                "search, page 1000 of everything": "/search?page=1000",
                "record": f"/records/{record_id}",
                "export CSV, one subject (~1,000 rows)": "/export?format=csv&subject=user-42",
            }
            timings = {}
            for name, page in pages.items():
                fetch(ui.url + page)
                runs = [fetch(ui.url + page)[0] for _ in range(5)]
                timings[name] = {"median_s": round(statistics.median(runs), 3), "max_s": round(max(runs), 3)}
                print(
                    f"{name:45} median {timings[name]['median_s']:6.3f} s  max {timings[name]['max_s']:6.3f} s",
                    flush=True,
                )
            results["pages"] = timings
        finally:
            ui.stop()
        # Incremental: 10,000 more records in a new session, then one refresh.
        more = directory / "more"
        more.mkdir()
        extra = auditlog.write_log(more, 10_000, seed=2)
        target = written.directory / "synthetic-2"
        extra.directory.joinpath("synthetic").rename(target)
        start = time.perf_counter()
        added = index.Index(path, [written.directory]).refresh()
        results["incremental_refresh_s"] = round(time.perf_counter() - start, 2)
        results["incremental_records"] = added
        print(f"incremental refresh: {added} records in {results['incremental_refresh_s']} s")
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "results" / "audit-ui.json").write_text(json.dumps(results, indent=2))
    return 0


def _first_record(url: str) -> str:
    with urllib.request.urlopen(url + "/search?decision=deny", timeout=60) as reply:
        page = reply.read().decode()
    marker = 'href="/records/'
    start = page.index(marker) + len(marker)
    return urllib.parse.unquote(page[start : page.index('"', start)])


if __name__ == "__main__":
    sys.exit(main())
