"""Search, export and summarize audit records: ``tollgate audit query`` and ``tollgate audit report``.

Records are streamed segment by segment, oldest first; nothing is loaded whole. Cheap byte-level
pre-filters run before JSON parsing (a record that cannot match is never parsed), and segments
that end before ``--since`` are skipped after reading one line, which keeps queries usable on
millions of records (docs/performance.md has the numbers).

Subjects are pseudonymized in the log: ``--subject alice`` with ``--pseudonym-keys`` is turned
into the pseudonym under every listed key, so old records (older keys) are found as well.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import datetime
import io
import json
import pathlib
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TextIO

from authz.audit import layout, pseudonym

__all__ = ["Filters", "is_age", "iter_records", "parse_time", "report", "stream", "write"]

_RELATIVE = re.compile(r"^(\d+)([smhd])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def is_age(text: str) -> bool:
    """Whether ``text`` is an age (``15m``, ``2h``), which :func:`parse_time` reads relative to now."""
    return _RELATIVE.match(text.strip()) is not None


def parse_time(text: str, now_ms: int) -> int:
    """Epoch ms from RFC 3339 (``2026-11-23T10:00:00Z``), epoch ms digits, or an age (``15m``, ``2h``)."""
    text = text.strip()
    relative = _RELATIVE.match(text)
    if relative:
        return now_ms - int(relative.group(1)) * _SECONDS[relative.group(2)] * 1000
    if text.isdigit():
        return int(text)
    moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return int(moment.timestamp() * 1000)


@dataclasses.dataclass
class Filters:
    since_ms: int | None = None
    until_ms: int | None = None
    subjects: frozenset[str] = frozenset()  # pseudonyms
    emails: frozenset[str] = frozenset()  # pseudonyms
    decision: str | None = None
    host: str | None = None
    path_prefix: str | None = None
    reason: str | None = None
    policy: str | None = None  # namespace/name of the deciding policy, exactly
    kinds: frozenset[str] = frozenset({"decision"})

    def subject_needles(self) -> list[bytes]:
        """A matching line contains one of these (any of the subject's or e-mail's pseudonyms)."""
        return [f'"subject":{json.dumps(subject)}'.encode() for subject in sorted(self.subjects)] + [
            f'"email":{json.dumps(email)}'.encode() for email in sorted(self.emails)
        ]

    def prefilter(self) -> list[bytes]:
        """Byte strings every matching line must contain (canonical JSON makes this exact)."""
        needles = []
        if self.decision:
            needles.append(f'"decision":{json.dumps(self.decision)}'.encode())
        if self.host:
            needles.append(f'"host":{json.dumps(self.host)}'.encode())
        if self.reason:
            needles.append(f'"reason":{json.dumps(self.reason)}'.encode())
        if self.policy:
            needles.append(f'"policy":{json.dumps(self.policy)}'.encode())
        return needles

    def match(self, item: dict[str, Any]) -> bool:
        if item.get("kind") not in self.kinds:
            return False
        time_ms = item.get("time_ms", 0)
        if self.since_ms is not None and time_ms < self.since_ms:
            return False
        if self.until_ms is not None and time_ms >= self.until_ms:
            return False
        identity = item.get("identity", {})
        if self.subjects and identity.get("subject") not in self.subjects:
            return False
        if self.emails and identity.get("email") not in self.emails:
            return False
        if self.decision and item.get("decision") != self.decision:
            return False
        request = item.get("request", {})
        if self.host and request.get("host") != self.host:
            return False
        if self.path_prefix and not str(request.get("path", "")).startswith(self.path_prefix):
            return False
        if self.policy and item.get("policy") != self.policy:
            return False
        return not (self.reason and item.get("reason") != self.reason)


def subject_pseudonyms(subject: str, keys: pseudonym.Pseudonymizer | None) -> frozenset[str]:
    """Every pseudonym ``subject`` (a subject or e-mail) has had under the keys; without keys,
    ``subject`` must already be a pseudonym (else ValueError: it could never match)."""
    if keys is None:
        if not pseudonym.is_pseudonym(subject):
            raise ValueError("is not a pseudonym (32 hex digits); to search by the real value, give --pseudonym-keys")
        return frozenset({subject})
    return frozenset(keys.with_key(key_id, subject) for key_id in keys.keys)


def _last_time_ms(segment: pathlib.Path) -> int:
    with segment.open("rb") as handle:
        handle.seek(0, 2)
        handle.seek(max(0, handle.tell() - 65536))
        tail = handle.read().split(b"\n")
    for line in reversed(tail):
        try:
            return int(json.loads(line)["time_ms"])
        except (ValueError, KeyError, TypeError):
            continue
    return 2**63


def iter_records(
    directory: pathlib.Path, filters: Filters, progress: Callable[[int], None] | None = None
) -> Iterator[dict[str, Any]]:
    needles = filters.prefilter()
    any_of = filters.subject_needles()
    for segment in layout.segments(directory):
        size = segment.stat().st_size
        if filters.since_ms is not None and _last_time_ms(segment) < filters.since_ms:
            if progress:
                progress(size)
            continue
        with segment.open("rb") as handle:
            lines = layout.Lines(handle, limit=layout.MAX_RECORD_LINE)  # a line at a time, each bounded
            read = 0
            for line in lines:
                if progress:
                    progress(lines.complete - read)
                    read = lines.complete
                if line is None:
                    continue  # longer than any record; `audit verify` reports it
                if needles and not all(needle in line for needle in needles):
                    continue
                if any_of and not any(needle in line for needle in any_of):
                    continue
                try:
                    item = json.loads(line)
                except ValueError:
                    continue  # not a record; `audit verify` reports it
                if filters.match(item):
                    yield item
            if progress and size > read:
                progress(size - read)  # a torn last line


_COLUMNS = [
    "time",
    "decision",
    "status",
    "reason",
    "policy",
    "rule",
    "subject",
    "method",
    "host",
    "path",
    "source_ip",
    "request_id",
    "trace_id",
    "id",
]


def _flat(item: dict[str, Any]) -> dict[str, Any]:
    identity, request = item.get("identity", {}), item.get("request", {})
    return {
        "time": item.get("time"),
        "decision": item.get("decision"),
        "status": item.get("status"),
        "reason": item.get("reason"),
        "policy": item.get("policy"),
        "rule": item.get("rule"),
        "subject": identity.get("subject"),
        "method": request.get("method"),
        "host": request.get("host"),
        "path": request.get("path"),
        "source_ip": request.get("source_ip"),
        "request_id": request.get("request_id"),
        "trace_id": item.get("trace", {}).get("trace_id"),
        "id": item.get("id"),
    }


_ALERT_COLUMNS = [
    "time",
    "state",
    "detector",
    "key_kind",
    "key",
    "count",
    "threshold",
    "window_seconds",
    "first_decision",
    "last_decision",
    "alert_id",
    "id",
]


def _flat_alert(item: dict[str, Any]) -> dict[str, Any]:
    alert = item.get("alert", {})
    return {"time": item.get("time"), "id": item.get("id")} | {
        name: alert.get(name) for name in _ALERT_COLUMNS if name not in ("time", "id")
    }


def write(items: Iterable[dict[str, Any]], output: TextIO, fmt: str, *, kind: str = "decision") -> int:
    """Write ``items`` as JSON lines, CSV or a table; ``kind``: the records' kind (decision or alert).
    Returns how many were written."""
    count = 0

    def counting() -> Iterator[dict[str, Any]]:
        nonlocal count
        for item in items:
            count += 1
            yield item

    for chunk in stream(counting(), fmt, kind=kind):
        output.write(chunk)
    return count


def stream(items: Iterable[dict[str, Any]], fmt: str, *, kind: str = "decision", batch: int = 500) -> Iterator[str]:
    """The text :func:`write` writes, in chunks of ``batch`` records (a streamed download:
    ``tollgate audit ui``'s export)."""
    buffer = io.StringIO()
    line = _row_writer(buffer, fmt, kind)
    for number, item in enumerate(items, start=1):
        line(item)
        if number % batch == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    if buffer.tell():
        yield buffer.getvalue()


# A cell a spreadsheet would read as a formula (OWASP "CSV injection"): some values are chosen by
# clients (a request id, a host), and CSV exports are opened by people, in spreadsheets.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _spreadsheet_safe(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with every text value that starts like a formula prefixed with ``'`` (CSV only:
    JSON lines keep every value exactly as logged)."""
    return {k: "'" + v if isinstance(v, str) and v.startswith(_FORMULA_STARTS) else v for k, v in row.items()}


def _row_writer(buffer: io.StringIO, fmt: str, kind: str) -> Callable[[dict[str, Any]], object]:
    """Write the header of ``fmt`` to ``buffer``; return what writes one record to it."""
    if fmt == "json":
        return lambda item: buffer.write(json.dumps(item, sort_keys=True, separators=(",", ":")) + "\n")
    if fmt == "csv":
        writer = csv.DictWriter(buffer, fieldnames=_ALERT_COLUMNS if kind == "alert" else _COLUMNS)
        writer.writeheader()
        flat = _flat_alert if kind == "alert" else _flat
        return lambda item: writer.writerow(_spreadsheet_safe(flat(item)))
    if kind == "alert":
        buffer.write(f"{'TIME':24} {'STATE':8} {'DETECTOR':24} {'COUNT':>6} KEY\n")
        return lambda item: buffer.write(_alert_row(_flat_alert(item)))
    buffer.write(f"{'TIME':24} {'DECISION':8} {'STATUS':6} {'REASON':22} {'SUBJECT':12} REQUEST\n")
    return lambda item: buffer.write(_decision_row(_flat(item)))


def _decision_row(flat: dict[str, Any]) -> str:
    return (
        f"{flat['time']:24} {flat['decision']:8} {flat['status']!s:6} {flat['reason']:22} "
        f"{(flat['subject'] or '-')[:12]:12} {flat['method']} {flat['host']}{flat['path']}\n"
    )


def _alert_row(flat: dict[str, Any]) -> str:
    return (
        f"{flat['time']:24} {flat['state']:8} {flat['detector']:24} {flat['count']!s:>6} "
        f"{flat['key_kind']} {flat['key']}\n"
    )


def report(items: Iterable[dict[str, Any]], *, threshold: int = 5, window_s: int = 60, top: int = 10) -> str:
    """Denials per subject and per source, and bursts of failed authentication from one source."""
    totals: collections.Counter[str] = collections.Counter()
    denied_subjects: collections.Counter[str] = collections.Counter()
    denied_sources: collections.Counter[str] = collections.Counter()
    reasons: collections.Counter[str] = collections.Counter()
    failures: dict[str, collections.deque[int]] = collections.defaultdict(collections.deque)
    bursts: dict[str, tuple[int, int, int]] = {}  # source → (largest count in a window, start, end)
    for item in items:
        decision = item.get("decision", "?")
        totals[decision] += 1
        if decision == "allow":
            continue
        source = item.get("request", {}).get("source_ip") or "-"
        subject = item.get("identity", {}).get("subject") or "(anonymous)"
        denied_subjects[subject] += 1
        denied_sources[source] += 1
        reasons[item.get("reason", "?")] += 1
        if item.get("status") == 401:
            window = failures[source]
            now = item.get("time_ms", 0)
            window.append(now)
            while window and window[0] < now - window_s * 1000:
                window.popleft()
            if len(window) >= threshold and len(window) > bursts.get(source, (0, 0, 0))[0]:
                bursts[source] = (len(window), window[0], now)
    out = io.StringIO()
    out.write("decisions: " + ", ".join(f"{k}={v}" for k, v in sorted(totals.items())) + "\n")
    for title, counter in (
        ("denials by reason", reasons),
        ("denials by subject (pseudonym)", denied_subjects),
        ("denials by source (pseudonym)", denied_sources),
    ):
        out.write(f"\n{title}:\n")
        for key, count in counter.most_common(top):
            out.write(f"  {count:8}  {key}\n")
    out.write(f"\nrepeated failed authentication (>= {threshold} x 401 within {window_s}s from one source):\n")
    if not bursts:
        out.write("  none\n")
    for source, (count, start, end) in sorted(bursts.items(), key=lambda kv: -kv[1][0]):
        out.write(f"  {source}: {count} failures between {_iso(start)} and {_iso(end)}\n")
    return out.getvalue()


def _iso(time_ms: int) -> str:
    return datetime.datetime.fromtimestamp(time_ms / 1000, tz=datetime.UTC).isoformat(timespec="milliseconds")
