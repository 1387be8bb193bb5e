"""``tollgate audit verify DIR --key VKEY``: check an audit directory offline, with a pinned key.

Findings, each with a precise message naming the session, file, line and sequence number:

    integrity (exit 1)   edited, re-serialized, deleted, swapped or duplicated records; records
                         from another instance or session; a broken hash chain; a checkpoint that
                         does not match the records; a truncated tail; forged or altered
                         checkpoints or the wrong key; two different checkpoints for one size;
                         a broken or rolled-back session chain; records no checkpoint covers in a
                         session that was closed; schema violations; a file that belongs to no log;
                         records, segments or sessions missing that no retention record accounts for
    crash (exit 3)       a torn last line, or records after the last checkpoint, in a session that
                         never closed and stopped checkpointing: what a power cut leaves behind
    ok (exit 0)          intact; the newest session of an instance may be live: not closed, but
                         checkpointed within twice its interval (recorded at its start) plus 2 s;
                         its uncovered records and a line being written are reported as info

The verifier trusts nothing in the directory but what the pinned key signed.
"""

from __future__ import annotations

import base64
import dataclasses
import filecmp
import hashlib
import json
import pathlib
import time
from collections.abc import Callable, Iterable, Sequence
from typing import IO, Any

from authz.audit import checked, layout, merkle, note, record

__all__ = ["Finding", "Report", "SessionState", "verify_directory"]


@dataclasses.dataclass(frozen=True, slots=True)
class Finding:
    severity: str  # "integrity" | "crash" | "info"
    where: str
    message: str
    origin: str = ""  # the session's log it concerns ("" for the directory as a whole)

    def __str__(self) -> str:
        return f"{self.severity.upper()}: {self.where}: {self.message}"


@dataclasses.dataclass
class SessionResult:
    directory: pathlib.Path
    origin: str
    size: int = 0  # records read
    closed: bool = False
    last_checkpoint: note.Checkpoint | None = None
    previous: dict[str, Any] | None = None
    roots: dict[int, bytes] = dataclasses.field(default_factory=dict)
    first_seq: int = 0
    checkpoint_interval_ms: int = 0  # from session_start (0: an older log that did not record it)
    newest: bool = False  # the newest session of its instance: the only one that may still be running
    torn: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (where, message): a write cut short
    empty: bool = False  # no segment left: every record went by retention, or by hand
    checkpoint_sizes: set[int] = dataclasses.field(default_factory=set)
    retained: list[tuple[str, dict[str, Any]]] = dataclasses.field(default_factory=list)  # (where, retention record)


@dataclasses.dataclass(frozen=True, slots=True)
class SessionState:
    """One session's verdict, for a summary (``tollgate audit ui``'s integrity page)."""

    instance: str
    session: str
    origin: str
    state: str  # tampered | crashed | live | closed | archived (an archive read alone)
    records: int
    last_checkpoint_ms: int | None  # when the newest signed checkpoint was made


@dataclasses.dataclass
class Report:
    findings: list[Finding] = dataclasses.field(default_factory=list)
    sessions: int = 0
    records: int = 0
    checkpoints: int = 0
    states: list[SessionState] = dataclasses.field(default_factory=list)

    def add(self, severity: str, where: str, message: str) -> None:
        self.findings.append(Finding(severity, where, message))

    def attribute(self, since: int, origin: str) -> None:
        """Mark the findings added since index ``since`` as concerning ``origin``'s log."""
        self.findings[since:] = [dataclasses.replace(f, origin=f.origin or origin) for f in self.findings[since:]]

    @property
    def exit_code(self) -> int:
        if any(f.severity == "integrity" for f in self.findings):
            return 1
        if any(f.severity == "crash" for f in self.findings):
            return 3
        return 0


def verify_directory(
    directory: pathlib.Path | Sequence[pathlib.Path],
    verifier: note.Verifier,
    *,
    progress: Callable[[int], None] | None = None,
    trusted: note.Checkpoint | Sequence[note.Checkpoint] | None = None,
    now_ms: int | None = None,
    cache: checked.Cache | None = None,
) -> Report:
    """Verify every session under ``directory`` — or under several, read as one log: a live
    directory and its archive, say (a session's segments and checkpoints may be in both).
    ``now_ms`` (default: the clock) decides whether the newest session of an instance is live:
    see :func:`_is_live`. An archive read alone (:data:`~authz.audit.layout.ARCHIVE_MARKER`) is
    checked for what it holds; that its sessions continue elsewhere is expected. ``trusted``:
    checkpoints kept off the box (``--trusted``, or a witness's state): the log must still hold
    each, unless retention accounts for it. ``cache``: what an earlier verification of the same
    directories read (:mod:`authz.audit.checked`): segments and checkpoints files that still begin
    with the bytes read then reuse what reading them gave; the report is the same."""
    directories = [directory] if isinstance(directory, pathlib.Path) else list(directory)
    kept = [trusted] if isinstance(trusted, note.Checkpoint) else list(trusted or ())
    now_ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    report = Report()
    for given in directories:
        if not given.is_dir():
            report.add("integrity", str(given), "not a directory")
    if report.findings:
        return report
    archive_only = all(layout.is_archive(given) for given in directories)
    merged: dict[str, dict[str, list[pathlib.Path]]] = {}
    for given in directories:
        for instance, session_dirs in layout.sessions(given):
            for session_dir in session_dirs:
                merged.setdefault(instance, {}).setdefault(session_dir.name, []).append(session_dir)
    if cache is not None:
        cache.begin()
    results: dict[str, SessionResult] = {}
    links: list[tuple[SessionResult | None, SessionResult]] = []
    for instance in sorted(merged):
        previous: SessionResult | None = None
        names = sorted(merged[instance])
        for position, name in enumerate(names):
            wanted = {checkpoint.size for checkpoint in kept}
            since = len(report.findings)
            result = _verify_session(
                merged[instance][name],
                instance,
                verifier,
                report,
                progress=progress,
                wanted=wanted,
                newest=position == len(names) - 1 and not archive_only,
                now_ms=now_ms,
                archive_only=archive_only,
                cache=cache,
            )
            report.attribute(since, result.origin)
            results[result.origin] = result
            report.sessions += 1
            links.append((previous, result))
            previous = result
    if cache is not None:
        cache.end()
    retained = _retention_evidence(results.values(), verifier, report)
    for previous, result in links:
        since = len(report.findings)
        _check_session_link(previous, result, report, retained)
        report.attribute(since, result.origin)
    for result in results.values():
        since = len(report.findings)
        _check_removed_records(result, report, retained, archive_only)
        report.attribute(since, result.origin)
    if report.sessions == 0:
        report.add("integrity", ", ".join(map(str, directories)), "no audit sessions found")
    for given in directories:
        for stray in layout.strays(given):
            report.add("integrity", str(stray), "this file belongs to no log (copied in, or left behind by hand)")
    for checkpoint in kept:
        since = len(report.findings)
        _check_trusted(checkpoint, results, report, retained)
        report.attribute(since, checkpoint.origin if checkpoint.origin in results else "")
    report.states = [_state(result, report, now_ms, archive_only) for result in results.values()]
    return report


def _state(result: SessionResult, report: Report, now_ms: int, archive_only: bool) -> SessionState:
    severities = {f.severity for f in report.findings if f.origin == result.origin}
    if "integrity" in severities:
        state = "tampered"
    elif "crash" in severities:
        state = "crashed"
    elif result.closed:
        state = "closed"
    elif archive_only:
        state = "archived"
    else:
        state = "live" if _is_live(result, now_ms) else "crashed"
    instance = result.origin.split("/")[-2]
    last = result.last_checkpoint.time_ms if result.last_checkpoint is not None else None
    return SessionState(instance, result.directory.name, result.origin, state, result.size, last)


Retained = dict[str, list[tuple[int, int, str]]]  # origin → (first seq, last seq, where recorded)


def _retention_evidence(results: Iterable[SessionResult], verifier: note.Verifier, report: Report) -> Retained:
    """The segments retention says it removed, per log — each with a signed checkpoint of that log
    covering it (else the record itself is reported)."""
    retained: Retained = {}
    for result in results:
        for where, entry in result.retained:
            try:
                origin, first, last = str(entry["origin"]), int(entry["first_seq"]), int(entry["last_seq"])
                checkpoint = note.parse_checkpoint(verifier.open(str(entry["checkpoint"])))
            except (KeyError, TypeError, ValueError, note.NoteError) as error:
                report.add("integrity", where, f"retention record without a valid signed checkpoint ({error})")
                continue
            if checkpoint.origin != origin or checkpoint.size <= last or first > last:
                report.add("integrity", where, "retention record's checkpoint does not cover what it says went")
                continue
            retained.setdefault(origin, []).append((first, last, where))
    return retained


def _accounted(retained: Retained, origin: str, first: int, last: int) -> str:
    """Where the retention records that account for records ``first..last`` of ``origin`` are
    ("" if they do not account for every one)."""
    covered_to, places = first - 1, list[str]()
    for start, end, where in sorted(retained.get(origin, [])):
        if start > covered_to + 1:
            break
        if end > covered_to:
            covered_to, places = end, [*places, where]
    return ", ".join(dict.fromkeys(place.split(" seq ")[0] for place in places)) if covered_to >= last else ""


def _check_removed_records(result: SessionResult, report: Report, retained: Retained, archive_only: bool) -> None:
    """Records missing from the front of a session (or all of them) must be accounted for by
    retention records; without one, they were removed by hand."""
    where = result.directory.name
    last = result.first_seq - 1
    if result.empty:
        last = (max(result.checkpoint_sizes) - 1) if result.checkpoint_sizes else -1
    if last < 0:
        return
    recorded = _accounted(retained, result.origin, 0, last)
    if recorded:
        report.add("info", where, f"records 0..{last} removed by retention (recorded in {recorded})")
    elif archive_only:
        report.add("info", where, f"records 0..{last} are not in this archive (verify it with the live log)")
    else:
        report.add(
            "integrity",
            where,
            f"records 0..{last} are missing and no retention record accounts for them: removed by hand",
        )


def _check_session_link(
    previous: SessionResult | None, current: SessionResult, report: Report, retained: Retained
) -> None:
    where = current.directory.name
    committed = current.previous
    if previous is None:
        if committed is not None:
            gone = (
                f"first session here commits to {committed['origin']} at size {committed['size']}, which is not present"
            )
            size = committed.get("size")
            recorded = _accounted(retained, str(committed.get("origin")), 0, size - 1) if isinstance(size, int) else ""
            if recorded:
                report.add("info", where, f"{gone}: removed by retention (recorded in {recorded})")
            else:
                report.add("integrity", where, f"{gone}, and no retention record accounts for it: removed by hand")
        return
    if committed is None:
        started_elsewhere = current.first_seq > 0 or current.empty  # its session_start is not here
        if started_elsewhere and _accounted(retained, current.origin, 0, 0):
            report.add(
                "info", where, "the session's first record went by retention: its link to the one before is gone"
            )
            return
        report.add(
            "integrity",
            where,
            f"session does not commit to the previous session {previous.directory.name}: the session chain is broken",
        )
        return
    last = previous.last_checkpoint
    if (
        last is None
        or committed["origin"] != last.origin
        or committed["size"] != last.size
        or committed["root"] != base64.b64encode(last.root).decode()
    ):
        have = f"{last.origin} size {last.size}" if last else "no checkpoint"
        report.add(
            "integrity",
            where,
            f"session commits to {committed['origin']} size {committed['size']}, but the "
            f"previous session's last checkpoint is {have}: previous session truncated, rolled back or replaced",
        )


def _check_trusted(
    trusted: note.Checkpoint, results: dict[str, SessionResult], report: Report, retained: Retained
) -> None:
    result = results.get(trusted.origin)
    recorded = _accounted(retained, trusted.origin, 0, trusted.size - 1)
    if recorded:
        report.add(
            "info", trusted.origin, f"the trusted checkpoint's records went by retention (recorded in {recorded})"
        )
    elif result is None:
        report.add("integrity", trusted.origin, "the trusted checkpoint's session is missing from the directory")
    elif result.size < trusted.size:
        report.add(
            "integrity",
            trusted.origin,
            f"the trusted checkpoint covers {trusted.size} records but only "
            f"{result.size} remain: the log was truncated or rolled back",
        )
    elif result.roots.get(trusted.size) != trusted.root:
        report.add(
            "integrity",
            trusted.origin,
            f"the records do not match the trusted checkpoint at size {trusted.size}: the log was rewritten",
        )


@dataclasses.dataclass
class Signed:
    """What a session's checkpoint lines said so far: the first signed checkpoint for each tree
    size, how many lines were checkpoints, and the findings (where, message). Memory grows with
    the number of tree sizes, not of lines: an idle server's heartbeats re-sign one size."""

    by_size: dict[int, note.Checkpoint] = dataclasses.field(default_factory=dict)
    count: int = 0
    findings: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def add(self, where: str, outcome: checked.Opened, last_time: int) -> int:
        """Count one line; return the newest checkpoint time of its copy so far."""
        if isinstance(outcome, str):
            self.findings.append((where, outcome))
            return last_time
        checkpoint, size_agrees = outcome
        if not size_agrees:
            self.findings.append((where, "checkpoint line's size differs from its signed size"))
        known = self.by_size.get(checkpoint.size)
        if known is not None and known.root != checkpoint.root:
            forked = f"two different signed checkpoints for tree size {checkpoint.size}"
            self.findings.append((where, f"{forked} (the log was forked or rewritten)"))
        if checkpoint.time_ms < last_time:
            self.findings.append((where, "checkpoint time goes backwards"))
        self.by_size.setdefault(checkpoint.size, checkpoint)
        self.count += 1
        return max(last_time, checkpoint.time_ms)

    def copy(self) -> Signed:
        return Signed(dict(self.by_size), self.count, list(self.findings))


def _load_checkpoints(
    session_dirs: Sequence[pathlib.Path],
    origin: str,
    verifier: note.Verifier,
    report: Report,
    result: SessionResult,
    *,
    cache: checked.Cache | None,
) -> dict[int, note.Checkpoint]:
    """The session's signed checkpoints by tree size, from every copy of its checkpoints file (an
    archive keeps one, copied from the live file as it grew). The longest copy is read line by
    line; every other copy must be a prefix of it, which SHA-256 digests tell without reading its
    lines. A copy that is not is reported, and its lines that differ from the longest copy's at the
    same place count too, so a copy that lost or changed lines cannot hide any. Files are read a
    line at a time: memory does not grow with a session's age. ``cache``: the longest copy's lines
    read before, if it still begins with them, are not read again."""
    paths = [d / layout.CHECKPOINTS for d in session_dirs if (d / layout.CHECKPOINTS).exists()]
    if not paths:
        report.add("integrity", str(session_dirs[0] / layout.CHECKPOINTS), "no checkpoints file")
        return {}
    longest = max(paths, key=lambda path: path.stat().st_size)  # the first of equals
    copies: dict[pathlib.Path, tuple[int, bytes]] = {}  # the others: their complete lines' length and digest
    for path in paths:
        if path != longest:
            with path.open("rb") as handle:
                lines = layout.Lines(handle, hasher=hashlib.sha256())
                for _ in lines:
                    pass
            copies[path] = (lines.complete, lines.hasher.digest())
            _torn_checkpoints(path, lines.torn, lines.count, result)
            if cache is not None:
                cache.checkpoints(str(path))  # seen: kept, if it was once the longest
    cuts = {length for length, _ in copies.values()}
    signed, prefixes = _read_longest(longest, origin, verifier, result, cuts=cuts, cache=cache)
    for path, (length, digest) in copies.items():
        if prefixes.get(length) != digest:
            signed.findings.append((str(path), f"differs from {longest}: two versions of one checkpoints file"))
            _read_divergent(path, longest, origin, verifier, signed)
    for where, message in signed.findings:
        report.add("integrity", where, message)
    report.checkpoints += signed.count
    return signed.by_size


def _torn_checkpoints(path: pathlib.Path, torn: bool, lines: int, result: SessionResult) -> None:
    """Note a checkpoints file's torn last line (after its ``lines`` complete ones)."""
    if torn:
        result.torn.append((f"{path}:{lines + 1}", "torn last checkpoint line (interrupted write)"))


def _read_longest(
    path: pathlib.Path,
    origin: str,
    verifier: note.Verifier,
    result: SessionResult,
    *,
    cuts: set[int],
    cache: checked.Cache | None,
) -> tuple[Signed, dict[int, bytes]]:
    """Read the longest copy: what its lines said, and the digest of its first ``n`` bytes for each
    ``n`` in ``cuts`` that ends a line (the other copies' lengths)."""
    entry = cache.checkpoints(str(path)) if cache is not None else None
    with path.open("rb") as handle:
        hasher, prefixes = entry.prefix(handle, cuts) if entry is not None else (None, {})
        if entry is not None and hasher is not None:
            signed, last_time, before, base = entry.signed.copy(), entry.last_time, entry.lines, entry.length
        else:
            handle.seek(0)
            hasher, prefixes = hashlib.sha256(), {0: hashlib.sha256().digest()}
            signed, last_time, before, base = Signed(), 0, 0, 0
        lines = layout.Lines(handle, hasher=hasher)
        for number, line in enumerate(lines, start=before + 1):
            outcome = _open_checkpoint(line, origin, verifier)
            last_time = signed.add(f"{path}:{number}", outcome, last_time)
            if base + lines.complete in cuts:
                prefixes[base + lines.complete] = lines.hasher.copy().digest()
    total = before + lines.count  # the file's complete lines, the entry's included
    _torn_checkpoints(path, lines.torn, total, result)
    if cache is not None:
        kept = checked.Checkpoints(base + lines.complete, lines.hasher.digest(), total, signed.copy(), last_time)
        cache.put(str(path), kept)
    return signed, prefixes


def _read_divergent(
    path: pathlib.Path, longest: pathlib.Path, origin: str, verifier: note.Verifier, signed: Signed
) -> None:
    """Count the lines of a copy that is not a prefix of the longest one, except each that is the
    same as the longest copy's line at the same place (counted there); the times of those counted
    must not go backwards."""
    last_time = 0
    with path.open("rb") as handle, longest.open("rb") as reference:
        theirs = iter(layout.Lines(reference))
        for number, line in enumerate(layout.Lines(handle), start=1):
            same = next(theirs, None)
            if line is not None and line == same:
                continue
            last_time = signed.add(f"{path}:{number}", _open_checkpoint(line, origin, verifier), last_time)


def _open_checkpoint(line: bytes | None, origin: str, verifier: note.Verifier) -> checked.Opened:
    """One line of a checkpoints file: its checkpoint and whether the line's size agrees with the
    signed one, or the finding it gets (None: a line too long to be one)."""
    if line is None:
        return f"checkpoint line is longer than {layout.MAX_CHECKPOINT_LINE} bytes"
    try:
        entry = json.loads(line)
        checkpoint = note.parse_checkpoint(verifier.open(entry["note"]))
    except note.NoteError as error:
        return f"checkpoint rejected: {error} (forged, altered, or signed by another key)"
    except (ValueError, KeyError, TypeError):
        return "checkpoint line is not valid JSON"
    if checkpoint.origin != origin:
        return f"checkpoint belongs to {checkpoint.origin}, not this session"
    return checkpoint, entry.get("size") == checkpoint.size


@dataclasses.dataclass
class _Walk:
    """Where the walk through one session's records stands."""

    origin: str
    tree: merkle.CompactRange | None = None
    prev: str = ""
    expected: int = 0


def _verify_session(
    session_dirs: Sequence[pathlib.Path],
    instance: str,
    verifier: note.Verifier,
    report: Report,
    *,
    progress: Callable[[int], None] | None,
    wanted: set[int],
    newest: bool,
    now_ms: int,
    archive_only: bool,
    cache: checked.Cache | None,
) -> SessionResult:
    origin = layout.origin_for(instance, session_dirs[0].name)
    result = SessionResult(session_dirs[0], origin, newest=newest)
    checkpoints = _load_checkpoints(session_dirs, origin, verifier, report, result, cache=cache)
    result.checkpoint_sizes = set(checkpoints)
    wanted = wanted | set(checkpoints)  # the tree sizes whose roots must be compared
    segments = _segments(session_dirs, report)
    if not segments:
        result.empty = True  # accounted for (or not) by retention records: see _check_removed_records
        return result
    walk = _Walk(origin)
    for segment_index, segment in enumerate(segments):
        with segment.open("rb") as handle:  # a line at a time: memory does not grow with the segment
            if cache is None:
                lines = layout.Lines(handle, limit=layout.MAX_RECORD_LINE)
                for number, line in enumerate(lines, start=1):
                    _check_record(line, f"{segment.name}:{number}", walk, result, report, wanted=wanted)
                count = lines.count
            else:
                lines, count = _check_segment_cached(segment, handle, walk, result, report, wanted=wanted, cache=cache)
            if progress is not None:
                progress(handle.tell())
        if lines.torn:
            where = f"{segment}:{count + 1}"
            if segment_index == len(segments) - 1:
                result.torn.append((where, "torn last record (an interrupted write); it is ignored"))
            else:
                report.add("integrity", where, "segment does not end with a complete record")
    _match_checkpoints(result, checkpoints, report, now_ms, archive_only)
    return result


def _walk_state(walk: _Walk, result: SessionResult) -> tuple[Any, ...]:
    """Everything checking a segment's records depends on besides their bytes and the wanted roots;
    the tree (its size and hashes) first: :meth:`authz.audit.checked.Segment.covers` reads it."""
    tree = (walk.tree.size, tuple(walk.tree.hashes)) if walk.tree is not None else None
    return (
        tree,
        walk.prev,
        walk.expected,
        result.size,
        result.closed,
        result.previous,
        result.checkpoint_interval_ms,
        result.first_seq,
    )


def _check_segment_cached(
    segment: pathlib.Path,
    handle: IO[bytes],
    walk: _Walk,
    result: SessionResult,
    report: Report,
    *,
    wanted: set[int],
    cache: checked.Cache,
) -> tuple[layout.Lines, int]:
    """Check a segment's complete lines, replaying what ``cache`` holds for them when it may (see
    :mod:`authz.audit.checked`), then checking the lines after those; and keep what was checked.
    Returns the lines read and the number of complete lines in the segment."""
    start = _walk_state(walk, result)
    since, records, retained, roots = len(report.findings), report.records, len(result.retained), dict(result.roots)
    entry = cache.segment(str(segment))
    hasher = entry.prefix(handle, set())[0] if entry is not None and entry.replayable(start, wanted) else None
    if entry is not None and hasher is not None:
        tree, walk.prev, walk.expected, *fields = entry.end
        walk.tree = merkle.CompactRange(*tree) if tree is not None else None
        result.size, result.closed, result.previous, result.checkpoint_interval_ms, result.first_seq = fields
        report.findings.extend(entry.findings)
        report.records += entry.records
        result.roots.update(entry.roots)
        result.retained.extend(entry.retained)
        offset, before = entry.length, entry.lines
        cache.replayed += 1
    else:
        handle.seek(0)
        offset, before, hasher = 0, 0, hashlib.sha256()
    lines = layout.Lines(handle, limit=layout.MAX_RECORD_LINE, hasher=hasher)
    for number, line in enumerate(lines, start=before + 1):
        _check_record(line, f"{segment.name}:{number}", walk, result, report, wanted=wanted)
    cache.put(
        str(segment),
        checked.Segment(
            length=offset + lines.complete,
            digest=lines.hasher.digest(),
            lines=before + lines.count,
            start=start,
            end=_walk_state(walk, result),
            findings=tuple(report.findings[since:]),
            records=report.records - records,
            roots={size: root for size, root in result.roots.items() if roots.get(size) != root},
            retained=tuple(result.retained[retained:]),
        ),
    )
    return lines, before + lines.count


def _segments(session_dirs: Sequence[pathlib.Path], report: Report) -> list[pathlib.Path]:
    """The session's segments from every directory, in order; one file per name (two copies of a
    segment must be the same bytes)."""
    by_name: dict[str, pathlib.Path] = {}
    for session_dir in session_dirs:
        for segment in layout.session_segments(session_dir):
            known = by_name.setdefault(segment.name, segment)
            if known is not segment and not filecmp.cmp(known, segment, shallow=False):  # compared in chunks
                report.add("integrity", str(segment), f"differs from {known}: two versions of one segment")
    return [by_name[name] for name in sorted(by_name)]


def _check_record(
    line: bytes | None, where: str, walk: _Walk, result: SessionResult, report: Report, *, wanted: set[int]
) -> None:
    parsed = _parse(line, where, report)
    if parsed is None or line is None:  # _parse said what is wrong with it
        return
    seq = parsed.get("seq")
    if not isinstance(seq, int):
        report.add("integrity", where, "record has no sequence number")
        return
    if walk.tree is None:
        walk.tree, walk.prev, walk.expected = _start(parsed, where, report, result)
        if walk.tree.size:
            # The frontier a segment_start carries must match the checkpoint signed at that size.
            result.roots[walk.tree.size] = walk.tree.root()
    where = f"{where} seq {seq}"
    if parsed.get("origin") != walk.origin:
        report.add(
            "integrity",
            where,
            f"record belongs to {parsed.get('origin')!r}: spliced in from another instance or session",
        )
    if seq != walk.expected:
        if seq == walk.expected - 1:
            report.add("integrity", where, "duplicate sequence number")
        elif seq < walk.expected:
            report.add(
                "integrity", where, f"sequence goes backwards (expected {walk.expected}): records swapped or replayed"
            )
        else:
            report.add("integrity", where, f"records {walk.expected}..{seq - 1} are missing (deleted)")
    if parsed.get("prev") != walk.prev:
        report.add(
            "integrity", where, "hash chain broken: this record or the one before it was edited, removed or reordered"
        )
    walk.prev = hashlib.sha256(line + b"\n").hexdigest()
    walk.tree.append(merkle.leaf_hash(line + b"\n"))
    walk.expected = seq + 1
    result.size = walk.tree.size
    if walk.tree.size in wanted:
        result.roots[walk.tree.size] = walk.tree.root()
    kind = parsed.get("kind")
    if kind == "session_end":
        result.closed = True
    elif kind == "retention" and isinstance(parsed.get("retention"), dict):
        result.retained.append((f"{walk.origin} seq {seq}", parsed["retention"]))
    elif kind == "session_start":
        result.previous = parsed.get("previous")
        interval = (parsed.get("server") or {}).get("checkpoint_interval_ms")
        result.checkpoint_interval_ms = interval if isinstance(interval, int) else 0
    report.records += 1


def _start(
    parsed: dict[str, Any], where: str, report: Report, result: SessionResult
) -> tuple[merkle.CompactRange, str, int]:
    """Tree, chain and sequence state at the first record present in a session."""
    seq = parsed["seq"]
    if seq == 0:
        if parsed.get("kind") != "session_start":
            report.add("integrity", where, "a session must begin with a session_start record")
        return merkle.CompactRange(), "", 0
    state = parsed.get("tree") or {}
    if parsed.get("kind") != "segment_start" or state.get("size") != seq:
        report.add("integrity", where, f"log begins at seq {seq} without segment state: earlier records are missing")
        return merkle.CompactRange(), parsed.get("prev", ""), seq
    result.first_seq = seq  # what came before must be accounted for: see _check_removed_records
    try:
        hashes = [base64.b64decode(h) for h in state["hashes"]]
        return merkle.CompactRange(seq, hashes), parsed.get("prev", ""), seq
    except (ValueError, KeyError):
        report.add("integrity", where, "segment_start carries an unusable tree state")
        return merkle.CompactRange(), "", seq


def _parse(line: bytes | None, where: str, report: Report) -> dict[str, Any] | None:
    if line is None:
        report.add("integrity", where, f"record line is longer than {layout.MAX_RECORD_LINE} bytes: not a record")
        return None
    try:
        parsed = json.loads(line)
    except ValueError:
        report.add("integrity", where, "record is not valid JSON (corrupted or edited)")
        return None
    if not isinstance(parsed, dict):
        report.add("integrity", where, "record is not a JSON object")
        return None
    if not record.is_canonical(line + b"\n", parsed):
        report.add("integrity", where, "record is not in canonical form: it was re-serialized or edited")
    problem = record.schema_problem(parsed)
    if problem:
        report.add("integrity", where, f"record does not match the audit schema: {problem}")
    return parsed


def _match_checkpoints(
    result: SessionResult, checkpoints: dict[int, note.Checkpoint], report: Report, now_ms: int, archive_only: bool
) -> None:
    where = result.directory.name
    if not checkpoints:
        report.add("integrity", where, "no valid signed checkpoint")
        return
    result.last_checkpoint = checkpoints[max(checkpoints)]
    if archive_only and not result.closed:
        # An archive holds a session's older segments; the rest, and its ending, are in the live log.
        beyond = [size for size in checkpoints if size > result.size]
        if beyond:
            report.add(
                "info", where, f"records {result.size}..{max(beyond) - 1} are not in this archive (in the live log)"
            )
        _match_roots(result, {size: c for size, c in checkpoints.items() if size <= result.size}, report)
        return
    _match_roots(result, checkpoints, report)
    _check_ending(result, max(checkpoints), report, now_ms)


def _match_roots(result: SessionResult, checkpoints: dict[int, note.Checkpoint], report: Report) -> None:
    """Every signed checkpoint must match the records at its size."""
    where = result.directory.name
    for size, checkpoint in sorted(checkpoints.items()):
        if size > result.size:
            report.add(
                "integrity",
                where,
                f"a signed checkpoint covers {size} records but only {result.size} are "
                f"present: the tail was truncated (records {result.size}..{size - 1} removed)",
            )
        elif size < result.first_seq or (size == 0 and result.size == 0):
            continue  # covers only segments removed by retention
        elif result.roots.get(size) != checkpoint.root:
            report.add(
                "integrity",
                where,
                f"the records do not match the signed checkpoint at size {size}: records "
                "were altered, inserted or removed",
            )


def _check_ending(result: SessionResult, covered: int, report: Report, now_ms: int) -> None:
    """How the session ends: closed, live, or a crash (see :func:`_is_live`)."""
    where = result.directory.name
    assert result.last_checkpoint is not None
    live = _is_live(result, now_ms)
    for torn_where, message in result.torn:
        # The running writer may be in the middle of a line; after a crash it stays cut.
        report.add("info" if live else "crash", torn_where, message + (" (being written)" if live else ""))
    age = (now_ms - result.last_checkpoint.time_ms) / 1000
    if result.size > covered:
        missing = f"records {covered}..{result.size - 1} are not covered by any signed checkpoint"
        if result.closed:
            report.add("integrity", where, f"{missing}, yet the session was closed: checkpoints were removed")
        elif live:
            report.add("info", where, f"live: {missing} yet; the newest checkpoint is {age:.1f} s old")
        else:
            report.add("crash", where, f"{missing} (the session never closed: a crash, or a truncated checkpoint file)")
    elif not result.closed:
        if live:
            report.add("info", where, f"live: every record is covered; the newest checkpoint is {age:.1f} s old")
        else:
            report.add("crash", where, f"session never closed and its newest checkpoint is {age:.0f} s old (a crash)")


def _is_live(result: SessionResult, now_ms: int) -> bool:
    """A session still being written: the newest of its instance, not closed, and checkpointed
    recently — within twice the interval it recorded at its start, plus 2 s for the disk. (A
    session that stopped checkpointing without closing is a crash.)"""
    if not result.newest or result.closed or result.last_checkpoint is None or result.checkpoint_interval_ms <= 0:
        return False
    return now_ms - result.last_checkpoint.time_ms <= 2 * result.checkpoint_interval_ms + 2000
