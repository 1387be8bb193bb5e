"""A search index over the audit trail, for ``tollgate audit ui``: SQLite, built incrementally.

The log's segment files stay the evidence; the index is a disposable cache beside them (never in
the log directory, which ``tollgate audit ui`` only reads). Each refresh reads only what was
appended since the last one: per segment file, the bytes already indexed are remembered, and a
file that shrank or whose first line changed is indexed again from its start (the verifier, not
the index, says whether that was tampering). A segment moved to the archive keeps its records.

Why SQLite (stdlib ``sqlite3``): the workload is many small filtered lookups (one subject's
denials, one record by id, a page of 50) plus a few aggregations for the overview, against a file
that one writer appends to while pages read it. SQLite's B-tree indexes answer the lookups in
milliseconds, WAL mode lets the pages read while the indexer writes, and it needs no dependency.
The overview's aggregations read a rollup kept at index time (per minute, hour and day), not the
records, so they stay fast on millions of records (docs/performance.md). DuckDB scans faster, but a columnar engine
gains little on these point lookups and would add a 40 MB dependency and a single-writer lock.

Search semantics are :class:`authz.audit.query.Filters`'s: SQL narrows, and the export applies
``Filters.match`` to every record it reads back, so a download matches ``tollgate audit query``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import pathlib
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import orjson

from authz.audit import layout, query

__all__ = ["Index", "Overview", "Reader", "Row"]

_VERSION = 2
_BATCH = 5000  # records per transaction while indexing
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY, key TEXT UNIQUE NOT NULL, path TEXT NOT NULL,
    done INTEGER NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, head TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS records (
    file INTEGER NOT NULL, at INTEGER NOT NULL, length INTEGER NOT NULL,
    id TEXT NOT NULL, time_ms INTEGER NOT NULL, decision TEXT, status INTEGER, reason TEXT,
    policy TEXT, rule TEXT, host TEXT, path TEXT, method TEXT, subject TEXT, email TEXT,
    source_ip TEXT, trace_id TEXT, request_id TEXT
);
CREATE INDEX IF NOT EXISTS records_time ON records (time_ms);
CREATE INDEX IF NOT EXISTS records_id ON records (id);
CREATE INDEX IF NOT EXISTS records_file ON records (file, at);
CREATE INDEX IF NOT EXISTS records_subject ON records (subject, time_ms);
CREATE INDEX IF NOT EXISTS records_email ON records (email, time_ms);
CREATE INDEX IF NOT EXISTS records_host ON records (host, time_ms);
CREATE INDEX IF NOT EXISTS records_reason ON records (reason, time_ms);
CREATE INDEX IF NOT EXISTS records_policy ON records (policy, time_ms);
CREATE INDEX IF NOT EXISTS records_denied_subject ON records (decision, time_ms, subject);
CREATE INDEX IF NOT EXISTS records_denied_source ON records (decision, time_ms, source_ip);
CREATE TABLE IF NOT EXISTS rollup (
    unit TEXT NOT NULL, dim TEXT NOT NULL, start INTEGER NOT NULL, key TEXT NOT NULL, decision TEXT NOT NULL,
    n INTEGER NOT NULL, PRIMARY KEY (unit, dim, start, key, decision)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS alerts (
    file INTEGER NOT NULL, at INTEGER NOT NULL, length INTEGER NOT NULL, id TEXT NOT NULL,
    time_ms INTEGER NOT NULL, state TEXT, detector TEXT, key_kind TEXT, key TEXT, count INTEGER
);
CREATE INDEX IF NOT EXISTS alerts_time ON alerts (time_ms);
CREATE INDEX IF NOT EXISTS alerts_file ON alerts (file, at);
"""
# The rollup: decisions counted per UTC minute, hour and day ("all"), and per hour and day by
# reason, host and policy. A time range is cut into whole days, whole hours, whole minutes and what
# is left (see _pieces); each piece is read from the coarsest table that holds it whole.
UNITS = {"d": 86_400_000, "h": 3_600_000, "m": 60_000}
DIMENSIONS = ("reason", "host", "policy")
# Bucket widths the overview's timeline chooses from: each a whole number of the units it is read from.
_WIDTHS = [m * 60_000 for m in (1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440, 2880, 10080)]
_COLUMNS = (
    "id, time_ms, decision, status, reason, policy, rule, host, path, method, subject, email, source_ip, "
    "trace_id, request_id"
)


@dataclasses.dataclass(frozen=True, slots=True)
class Row:
    """One decision as the index holds it (a page of search results)."""

    id: str
    time_ms: int
    decision: str
    status: int
    reason: str
    policy: str
    rule: str
    host: str
    path: str
    method: str
    subject: str
    email: str
    source_ip: str
    trace_id: str
    request_id: str


@dataclasses.dataclass
class Overview:
    """What the overview page draws, for one time range."""

    buckets: list[tuple[int, dict[str, int]]]  # (bucket start ms, {decision: count}), oldest first
    bucket_ms: int
    totals: dict[str, int]
    reasons: list[tuple[str, int]]  # denials (deny and error) by reason, largest first
    hosts: list[tuple[str, dict[str, int]]]  # (host, {decision: count}), busiest first
    policies: list[tuple[str, dict[str, int]]]
    subjects: list[tuple[str, int]]  # top denied subjects (pseudonyms)
    sources: list[tuple[str, int]]  # top denied source addresses (pseudonyms)
    alerts: list[dict[str, Any]]  # the newest alert records in the range


def _where(filters: query.Filters, alias: str = "", *, times_only: bool = False) -> tuple[str, list[Any]]:
    """SQL conditions and parameters for ``filters`` on columns of the table named ``alias``
    (``times_only``: the alerts table, which only the time range applies to)."""
    t = f"{alias}." if alias else ""
    clauses: list[str] = []
    params: list[Any] = []
    if filters.since_ms is not None:
        clauses.append(f"{t}time_ms >= ?")
        params.append(filters.since_ms)
    if filters.until_ms is not None:
        clauses.append(f"{t}time_ms < ?")
        params.append(filters.until_ms)
    if times_only:
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params
    for column, values in (("subject", filters.subjects), ("email", filters.emails)):
        if values:
            clauses.append(f"{t}{column} IN ({', '.join('?' * len(values))})")
            params.extend(sorted(values))
    for column, value in (
        ("decision", filters.decision),
        ("host", filters.host),
        ("reason", filters.reason),
        ("policy", filters.policy),
    ):
        if value:
            clauses.append(f"{t}{column} = ?")
            params.append(value)
    if filters.path_prefix:
        clauses.append(f"{t}path >= ? AND substr({t}path, 1, ?) = ?")
        params.extend([filters.path_prefix, len(filters.path_prefix), filters.path_prefix])
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def _blank_nulls(row: tuple[Any, ...]) -> list[Any]:
    return [value if value is not None else "" for value in row]


def _bars(since_ms: int, until_ms: int, width: int) -> int:
    """How many buckets of ``width``, aligned to multiples of it, cover [since_ms, until_ms)."""
    return -(-(until_ms - (since_ms - since_ms % width)) // width)


def _pieces(low: int, high: int, units: Sequence[str]) -> list[tuple[str | None, int, int]]:
    """[low, high) as whole ``units`` (coarsest first) and, with unit None, the rest: at most two
    pieces per unit and two of records."""
    if low >= high:
        return []
    if not units:
        return [(None, low, high)]
    size = UNITS[units[0]]
    first, last = -(-low // size) * size, high // size * size
    if first >= last:
        return _pieces(low, high, units[1:])
    return [*_pieces(low, first, units[1:]), (units[0], first, last), *_pieces(last, high, units[1:])]


class Reader:
    """Read-only queries on one connection (one per request: cheap, and safe across threads)."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._db = connection

    def search(self, filters: query.Filters, *, limit: int, offset: int = 0) -> list[Row]:
        """Matching decisions, newest first."""
        where, params = _where(filters)
        sql = f"SELECT {_COLUMNS} FROM records{where} ORDER BY time_ms DESC, rowid DESC LIMIT ? OFFSET ?"
        return [Row(*_blank_nulls(row)) for row in self._db.execute(sql, [*params, limit, offset])]

    def count(self, filters: query.Filters) -> int:
        where, params = _where(filters)
        return int(self._db.execute(f"SELECT count(*) FROM records{where}", params).fetchone()[0])

    def locate(self, record_id: str) -> tuple[pathlib.Path, int, int] | None:
        """Where the record (a decision or an alert) with this id is: (segment file, offset, length)."""
        for table in ("records", "alerts"):
            found = self._db.execute(
                f"SELECT f.path, t.at, t.length FROM {table} t JOIN files f ON f.id = t.file WHERE t.id = ?",
                (record_id,),
            ).fetchone()
            if found:
                return pathlib.Path(found[0]), int(found[1]), int(found[2])
        return None

    def export(self, filters: query.Filters) -> Iterator[dict[str, Any]]:
        """The matching records, read back from the segment files, in the log's order (the order of
        ``tollgate audit query``), each checked with ``filters.match``."""
        alerts = filters.kinds == frozenset({"alert"})
        where, params = _where(filters, "t", times_only=alerts)
        sql = (
            f"SELECT f.path, t.at, t.length FROM {'alerts' if alerts else 'records'} t "
            f"JOIN files f ON f.id = t.file{where} ORDER BY f.key, t.at"
        )
        for path, rows in itertools.groupby(self._db.execute(sql, params), key=lambda row: row[0]):
            with open(path, "rb") as handle:
                for _, offset, length in rows:
                    handle.seek(offset)
                    try:
                        item = json.loads(handle.read(length))
                    except ValueError:
                        continue  # changed on disk since it was indexed: `audit verify` reports it
                    if isinstance(item, dict) and filters.match(item):
                        yield item

    def overview(self, since_ms: int, until_ms: int, *, top: int = 10, buckets: int = 60) -> Overview:
        """Counts for the overview page over [since_ms, until_ms), exact to the millisecond: from
        the rollup for the whole days, hours and minutes inside the range, and from the records
        for the rest. Top denied subjects and sources come from the records (a covering index)."""
        day = UNITS["d"]
        longest = day * -(-(until_ms - since_ms) // (day * max(1, buckets - 1)))  # whole days, for long ranges
        width = next((w for w in _WIDTHS if _bars(since_ms, until_ms, w) <= buckets), max(longest, _WIDTHS[-1]))
        origin = since_ms - since_ms % width
        series: dict[int, dict[str, int]] = {}
        for bucket, decision, n in self._counted("all", since_ms, until_ms, width=width, origin=origin):
            counts = series.setdefault(int(bucket), {})
            counts[decision] = counts.get(decision, 0) + n
        totals: dict[str, int] = {}
        for counts in series.values():
            for decision, n in counts.items():
                totals[decision] = totals.get(decision, 0) + n
        filled = [(origin + i * width, series.get(i, {})) for i in range(_bars(since_ms, until_ms, width))]
        per: dict[str, dict[str, dict[str, int]]] = {}
        for dim in DIMENSIONS:
            grouped = per.setdefault(dim, {})
            for key, decision, n in self._counted(dim, since_ms, until_ms):
                counts = grouped.setdefault(str(key), {})
                counts[decision] = counts.get(decision, 0) + n
        reasons = sorted(
            ((key, sum(n for d, n in counts.items() if d != "allow")) for key, counts in per["reason"].items()),
            key=lambda kv: (-kv[1], kv[0]),
        )
        busiest = {
            dim: sorted(per[dim].items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))[:top]
            for dim in ("host", "policy")
        }
        denied = {}
        for column in ("subject", "source_ip"):
            denied[column] = [
                (str(key), int(n))
                for key, n in self._db.execute(
                    f"SELECT {column}, count(*) FROM records INDEXED BY records_denied_{column.removesuffix('_ip')} "
                    f"WHERE decision IN ('deny', 'error') AND time_ms >= ? AND time_ms < ? AND {column} != '' "
                    "GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT ?",
                    (since_ms, until_ms, top),
                )
            ]
        alerts = [
            dict(zip(("id", "time_ms", "state", "detector", "key_kind", "key", "count"), row, strict=True))
            for row in self._db.execute(
                "SELECT id, time_ms, state, detector, key_kind, key, count FROM alerts "
                "WHERE time_ms >= ? AND time_ms < ? ORDER BY time_ms DESC LIMIT ?",
                (since_ms, until_ms, top),
            )
        ]
        return Overview(
            buckets=filled,
            bucket_ms=width,
            totals=totals,
            reasons=[(key, n) for key, n in reasons if n][:top],
            hosts=busiest["host"],
            policies=busiest["policy"],
            subjects=denied["subject"],
            sources=denied["source_ip"],
            alerts=alerts,
        )

    def _counted(
        self, dim: str, since_ms: int, until_ms: int, *, width: int = 0, origin: int = 0
    ) -> Iterator[tuple[Any, str, int]]:
        """(group, decision, count) over [since_ms, until_ms) for ``dim``: "all" grouped into time
        buckets of ``width`` from ``origin``, else grouped by the dimension's value."""
        units = [u for u, size in UNITS.items() if (dim == "all" or u != "m") and (not width or width % size == 0)]
        for unit, low, high in _pieces(since_ms, until_ms, units):
            if unit is None:
                group = f"(time_ms - {origin}) / {width}" if width else dim
                rows = self._db.execute(
                    f"SELECT {group}, decision, count(*) FROM records WHERE time_ms >= ? AND time_ms < ? GROUP BY 1, 2",
                    (low, high),
                )
            else:
                group = f"(start - {origin}) / {width}" if width else "key"
                rows = self._db.execute(
                    f"SELECT {group}, decision, sum(n) FROM rollup WHERE unit = ? AND dim = ? AND start >= ? "
                    "AND start < ? GROUP BY 1, 2",
                    (unit, dim, low, high),
                )
            for key, decision, n in rows:
                yield (key if key is not None else ""), str(decision), int(n)

    def span(self) -> tuple[int, int] | None:
        """The times of the oldest and newest decision indexed."""
        low, high = self._db.execute("SELECT min(time_ms), max(time_ms) FROM records").fetchone()
        return None if low is None else (int(low), int(high))

    def indexed(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM records").fetchone()[0])


class Index:
    """The index file for a set of log directories (a live directory and its archive)."""

    def __init__(self, path: pathlib.Path, directories: Sequence[pathlib.Path]) -> None:
        self.path = path
        self.directories = [d.resolve() for d in directories]
        self._lock = threading.Lock()  # one refresh at a time
        path.parent.mkdir(parents=True, exist_ok=True)
        identity = json.dumps([str(d) for d in self.directories])
        with contextlib.closing(self._connect()) as db:
            known = None
            if db.execute("PRAGMA user_version").fetchone()[0] == _VERSION:
                row = db.execute("SELECT value FROM meta WHERE name = 'directories'").fetchone()
                known = row[0] if row else None
        if known != identity:  # another format or another log: start over
            for suffix in ("", "-wal", "-shm"):
                pathlib.Path(f"{path}{suffix}").unlink(missing_ok=True)
            with contextlib.closing(self._connect()) as db:
                db.executescript(_SCHEMA)
                db.execute(f"PRAGMA user_version = {_VERSION}")
                db.execute("INSERT INTO meta VALUES ('directories', ?)", (identity,))
                db.commit()

    def _connect(self, read_only: bool = False) -> sqlite3.Connection:
        if read_only:
            db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
        else:
            db = sqlite3.connect(self.path, check_same_thread=False)
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
        return db

    @contextlib.contextmanager
    def reader(self) -> Iterator[Reader]:
        db = self._connect(read_only=True)
        try:
            yield Reader(db)
        finally:
            db.close()

    def refresh(self) -> int:
        """Index what was appended since the last refresh; return how many records were added."""
        with self._lock, contextlib.closing(self._connect()) as db:
            added = 0
            seen: set[str] = set()
            for directory in self.directories:
                for segment in layout.segments(directory):
                    key = "/".join(segment.parts[-3:])
                    seen.add(key)
                    added += self._refresh_file(db, key, segment)
            for file_id, key in db.execute("SELECT id, key FROM files").fetchall():
                if key not in seen:  # removed by retention (its records are gone from the log)
                    self._forget(db, file_id)
            db.commit()
            return added

    def _forget(self, db: sqlite3.Connection, file_id: int) -> None:
        batch = _Batch(file_id)
        for unit, size in UNITS.items():
            for dim in ("all", *DIMENSIONS):
                if dim != "all" and unit == "m":
                    continue
                key = "''" if dim == "all" else f"coalesce({dim}, '')"
                for start, value, decision, n in db.execute(
                    f"SELECT time_ms / {size} * {size}, {key}, decision, count(*) FROM records WHERE file = ? "
                    "GROUP BY 1, 2, 3",
                    (file_id,),
                ).fetchall():
                    batch.rollup[(unit, dim, start, value, decision)] = -n
        batch.flush(db)
        db.execute("DELETE FROM rollup WHERE n <= 0")
        for table in ("records", "alerts"):
            db.execute(f"DELETE FROM {table} WHERE file = ?", (file_id,))
        db.execute("DELETE FROM files WHERE id = ?", (file_id,))

    def _refresh_file(self, db: sqlite3.Connection, key: str, segment: pathlib.Path) -> int:
        try:
            stat = segment.stat()
        except FileNotFoundError:
            return 0
        known = db.execute("SELECT id, done, size, mtime_ns, head, path FROM files WHERE key = ?", (key,)).fetchone()
        if known and known[2] == stat.st_size and known[3] == stat.st_mtime_ns:
            if known[5] != str(segment):
                db.execute("UPDATE files SET path = ? WHERE id = ?", (str(segment), known[0]))
            return 0
        with segment.open("rb") as handle:
            head = hashlib.sha256(handle.readline()).hexdigest()
            if known and (stat.st_size < known[1] or head != known[4]):
                self._forget(db, known[0])  # rewritten under the index: read it again
                known = None
            if known is None:
                file_id = int(
                    db.execute(
                        "INSERT INTO files (key, path, done, size, mtime_ns, head) "
                        "VALUES (?, ?, 0, 0, 0, ?) RETURNING id",
                        (key, str(segment), head),
                    ).fetchone()[0]
                )
                done = 0
            else:
                file_id, done = known[0], known[1]
            handle.seek(done)
            batch = _Batch(file_id)
            offset = done
            # Complete lines only (one being written is indexed once complete), each bounded: a
            # line longer than any record is skipped (`audit verify` reports it), never held.
            lines = layout.Lines(handle, limit=layout.MAX_RECORD_LINE)
            for line in lines:
                end = done + lines.complete
                if line is not None:
                    batch.add(line, offset, end - offset)
                offset = end
                if batch.size >= _BATCH:
                    batch.flush(db)
            batch.flush(db)
            db.execute(
                "UPDATE files SET path = ?, done = ?, size = ?, mtime_ns = ?, head = ? WHERE id = ?",
                (str(segment), offset, stat.st_size, stat.st_mtime_ns, head, file_id),
            )
            db.commit()
        return batch.added


class _Batch:
    """Rows parsed from one segment file, written in one transaction per :data:`_BATCH`."""

    def __init__(self, file_id: int) -> None:
        self.file_id = file_id
        self.rows: list[tuple[Any, ...]] = []
        self.alerts: list[tuple[Any, ...]] = []
        self.rollup: dict[tuple[str, str, int, str, str], int] = {}
        self.added = 0

    @property
    def size(self) -> int:
        return len(self.rows) + len(self.alerts)

    def add(self, line: bytes, offset: int, length: int) -> None:
        """One record line (without its newline) that starts at ``offset`` and takes ``length``
        bytes of its file, newline included."""
        try:
            item = orjson.loads(line)
        except orjson.JSONDecodeError:
            return  # not a record: `audit verify` reports it
        if not isinstance(item, dict):
            return
        kind = item.get("kind")
        time_ms = item["time_ms"] if isinstance(item.get("time_ms"), int) else 0
        where = (self.file_id, offset, length, str(item.get("id", "")), time_ms)
        if kind == "decision":
            identity = item.get("identity") or {}
            request = item.get("request") or {}
            decision, reason = str(item.get("decision", "")), str(item.get("reason", ""))
            host, policy = str(request.get("host", "")), str(item.get("policy", ""))
            self.rows.append(
                (
                    *where,
                    decision,
                    item.get("status", 0),
                    reason,
                    policy,
                    item.get("rule", ""),
                    host,
                    request.get("path", ""),
                    request.get("method", ""),
                    identity.get("subject", ""),
                    identity.get("email", ""),
                    request.get("source_ip", ""),
                    (item.get("trace") or {}).get("trace_id", ""),
                    request.get("request_id", ""),
                )
            )
            rollup = self.rollup
            for unit, size in UNITS.items():
                start = time_ms - time_ms % size
                slot = (unit, "all", start, "", decision)
                rollup[slot] = rollup.get(slot, 0) + 1
                if unit != "m":
                    for dim, value in (("reason", reason), ("host", host), ("policy", policy)):
                        slot = (unit, dim, start, value, decision)
                        rollup[slot] = rollup.get(slot, 0) + 1
        elif kind == "alert":
            alert = item.get("alert") or {}
            fields = ("state", "detector", "key_kind", "key")
            self.alerts.append((*where, *(alert.get(name, "") for name in fields), alert.get("count", 0)))

    def flush(self, db: sqlite3.Connection) -> None:
        db.executemany(f"INSERT INTO records (file, at, length, {_COLUMNS}) VALUES ({', '.join('?' * 18)})", self.rows)
        db.executemany("INSERT INTO alerts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", self.alerts)
        db.executemany(
            "INSERT INTO rollup VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET n = n + excluded.n",
            [(*slot, n) for slot, n in self.rollup.items()],
        )
        db.commit()
        self.added += self.size
        self.rows.clear()
        self.alerts.clear()
        self.rollup.clear()
