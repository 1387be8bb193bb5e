"""The audit UI's search index (authz.audit.index) against logs written by the real log writer:
it answers exactly what ``tollgate audit query`` answers, grows incrementally, and follows
retention, archiving and files rewritten under it."""

from __future__ import annotations

import collections
import pathlib
import shutil

import pytest

from authz.audit import index, pseudonym, query
from authz.dev import auditlog


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> auditlog.Written:
    # 3,000 decisions one second apart (50 minutes), 30 users, 5 hosts, an alert every 500.
    return auditlog.write_log(tmp_path_factory.mktemp("log"), 3000, spacing_ms=1000, users=30, hosts=5, alert_every=500)


@pytest.fixture
def built(written: auditlog.Written, tmp_path: pathlib.Path) -> index.Index:
    made = index.Index(tmp_path / "index.sqlite3", [written.directory])
    assert made.refresh() == 3000 + 6
    return made


def _ids(items: object) -> list[str]:
    return [item["id"] for item in items]  # type: ignore[attr-defined]


def _cases(written: auditlog.Written) -> list[query.Filters]:
    keys = pseudonym.load_keys(written.pseudonym_keys)
    middle = (written.first_ms + written.last_ms) // 2
    return [
        query.Filters(),
        query.Filters(decision="deny"),
        query.Filters(decision="error"),
        query.Filters(host="svc-3.example.test"),
        query.Filters(reason="token_expired", decision="deny"),
        query.Filters(policy="apps/svc-1"),
        query.Filters(subjects=frozenset({keys("user-7")})),
        query.Filters(emails=frozenset({keys("user-7@example.test")})),
        query.Filters(path_prefix="/api/orders/1"),
        query.Filters(path_prefix="/api/orders/97", decision="allow"),
        query.Filters(since_ms=middle, until_ms=middle + 60_000),
        query.Filters(since_ms=middle, host="svc-0.example.test", decision="deny"),
        query.Filters(host="no-such-host"),
        query.Filters(kinds=frozenset({"alert"})),
    ]


def test_every_filter_finds_what_the_command_line_query_finds_in_the_same_order(
    written: auditlog.Written, built: index.Index
) -> None:
    with built.reader() as reader:
        for filters in _cases(written):
            expected = list(query.iter_records(written.directory, filters))
            assert _ids(reader.export(filters)) == _ids(expected), filters
            if filters.kinds == frozenset({"decision"}):
                newest_first = sorted(expected, key=lambda item: (-item["time_ms"], -item["seq"]))
                assert [row.id for row in reader.search(filters, limit=50)] == _ids(newest_first[:50]), filters
                assert reader.count(filters) == len(expected), filters
    # The cases are not vacuous: most find something, and they differ.
    found = [len(list(query.iter_records(written.directory, f))) for f in _cases(written)]
    assert sum(1 for n in found if n) >= 12 and len(set(found)) >= 10


def test_pages_follow_one_another_without_gaps_or_repeats(built: index.Index) -> None:
    filters = query.Filters(decision="deny")
    with built.reader() as reader:
        total = reader.count(filters)
        seen = [row.id for number in range(0, total, 100) for row in reader.search(filters, limit=100, offset=number)]
    assert len(seen) == total == len(set(seen))


@pytest.mark.parametrize(
    ("start", "length"),
    [(600_123, 10**9), (0, 2_999_001), (61_001, 59_000), (1_234_567, 3_600_000), (-86_400_000, 2 * 86_400_000)],
)
def test_the_overview_counts_what_the_records_hold(
    written: auditlog.Written, built: index.Index, start: int, length: int
) -> None:
    # Ranges that start and end off minute, hour and day boundaries: rollup and records together, exactly.
    since = written.first_ms + start
    until = min(since + length, written.last_ms + 1)
    items = list(query.iter_records(written.directory, query.Filters(since_ms=since, until_ms=until)))
    with built.reader() as reader:
        summary = reader.overview(since, until, buckets=20)
    assert summary.totals == dict(collections.Counter(item["decision"] for item in items))
    assert sum(sum(counts.values()) for _, counts in summary.buckets) == len(items)
    assert len(summary.buckets) <= 20
    denied = [item for item in items if item["decision"] != "allow"]
    assert [n for _, n in summary.reasons] == sorted((n for _, n in summary.reasons), reverse=True)
    assert dict(summary.reasons) == {
        reason: n for reason, n in collections.Counter(item["reason"] for item in denied).items()
    }
    top = collections.Counter(item["identity"]["subject"] for item in denied).most_common(1)
    assert [n for _, n in summary.subjects[:1]] == [n for _, n in top]
    for start_ms, counts in summary.buckets:  # each bar counts exactly its slice of the range
        inside = [i for i in items if start_ms <= i["time_ms"] < start_ms + summary.bucket_ms]
        assert counts == dict(collections.Counter(i["decision"] for i in inside))
    hosts = collections.Counter(item["request"]["host"] for item in items)
    assert {host: sum(counts.values()) for host, counts in summary.hosts} == dict(hosts)
    policies = collections.Counter((item["policy"], item["decision"]) for item in items)
    assert {(p, d): n for p, counts in summary.policies for d, n in counts.items()} == dict(policies)
    assert len(summary.alerts) == sum(
        1
        for _ in query.iter_records(
            written.directory, query.Filters(since_ms=since, until_ms=until, kinds=frozenset({"alert"}))
        )
    )


def test_a_refresh_reads_only_what_was_appended(written: auditlog.Written, tmp_path: pathlib.Path) -> None:
    copy = tmp_path / "audit"
    shutil.copytree(written.directory, copy)
    (segment,) = [p for p in copy.rglob("segment-*.jsonl")]
    lines = segment.read_bytes().splitlines(keepends=True)
    segment.write_bytes(b"".join(lines[:1000]) + lines[1000][:40])  # a record being written: not yet indexed
    made = index.Index(tmp_path / "index.sqlite3", [copy])
    first = made.refresh()
    assert first == sum(1 for line in lines[:1000] if b'"kind":"decision"' in line or b'"kind":"alert"' in line)
    assert made.refresh() == 0  # nothing new: nothing read
    segment.write_bytes(b"".join(lines))
    assert made.refresh() == 3006 - first
    with made.reader() as reader:
        assert reader.indexed() == 3000


def test_retention_archiving_and_rewritten_files(written: auditlog.Written, tmp_path: pathlib.Path) -> None:
    live, archive = tmp_path / "audit", tmp_path / "archive"
    shutil.copytree(written.directory, live)
    (segment,) = [p for p in live.rglob("segment-*.jsonl")]
    made = index.Index(tmp_path / "index.sqlite3", [live, archive])
    made.refresh()
    # Archived: the same file under the archive directory keeps its records, found at the new place.
    moved = archive / segment.relative_to(live)
    moved.parent.mkdir(parents=True)
    segment.rename(moved)
    assert made.refresh() == 0
    with made.reader() as reader:
        record_id = reader.search(query.Filters(), limit=1)[0].id
        located = reader.locate(record_id)
        assert located is not None and located[0] == moved
    # Rewritten under the index (shorter): read again from its start, nothing stale is kept.
    lines = moved.read_bytes().splitlines(keepends=True)
    moved.write_bytes(b"".join(lines[:500]))
    made.refresh()
    with made.reader() as reader:
        assert reader.indexed() == sum(1 for line in lines[:500] if b'"kind":"decision"' in line)
        assert reader.overview(0, 2**62).totals == dict(
            collections.Counter(i["decision"] for i in query.iter_records(archive, query.Filters()))
        )
    # Deleted (retention): its records leave the index, and the rollup with them.
    moved.unlink()
    made.refresh()
    with made.reader() as reader:
        assert reader.indexed() == 0 and reader.overview(0, 2**62).totals == {}


def test_an_index_of_another_log_or_format_is_rebuilt(written: auditlog.Written, tmp_path: pathlib.Path) -> None:
    path = tmp_path / "index.sqlite3"
    index.Index(path, [written.directory]).refresh()
    other = tmp_path / "other"
    other.mkdir()
    reused = index.Index(path, [other])  # the same file for another directory: starts empty
    with reused.reader() as reader:
        assert reader.indexed() == 0
