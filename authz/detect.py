"""Real-time detection of suspicious access: in-process detectors over sliding windows.

Who calls it: :mod:`authz.service` hands every decision to :meth:`Detection.observe` in the same
``finally`` that records it (a few dict operations, no I/O, no await); :mod:`authz.server` runs
:meth:`Detection.run`, which once a second resolves alerts whose condition has ended.

The detectors (thresholds and windows: :class:`Rule`, defaults in :data:`DEFAULT_RULES`, a file
with ``--detectors``; docs/operations.md):

- ``auth_failures_by_source``: 401s from one source address (brute force);
- ``auth_failures_by_subject``: 401s for tokens claiming one subject (credential stuffing against
  an account; the claim is unverified, so the alert says "claimed");
- ``token_replay``: one bearer token (by its cache hash) used from many source addresses;
- ``denial_spike``: denials (403, and 400 refusals) on one host, or by one policy, far above that
  key's recent baseline (an exponentially weighted mean of its past windows; windows that alerted
  are left out of it). 401s are the two authentication detectors' business, not counted here;
- ``dry_run_denials``: a DryRun policy that would deny a large share of the traffic it sees.

An alert is raised once per detector and key, stays firing while new events keep the condition
true (each counted into it), and is resolved when the condition has ended. Firing and resolving
each go out five ways (:meth:`Detection._emit`): an ``alert`` record in the signed audit log, the
``tollgate.alerts`` metric, one structured warning log line, an OpenTelemetry log event, and
optionally Alertmanager (:mod:`authz.alertmanager`).

Keys that are personal data (source address, subject, token) leave this module only as the
audit log's pseudonyms (HMAC under its current key); without an audit trail, under a random key
made at start-up. Memory is bounded: each detector keeps at most ``max_keys`` keys; a new key past
that replaces the oldest key seen only once (a flood of one-off addresses cannot push out an
offender who has failed twice), else the least recently seen.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import math
import pathlib
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any

import jsonschema
import yaml

from authz import decision as decision_model
from authz import ids
from authz.audit import pseudonym, record
from authz.errors import ConfigError

__all__ = ["DEFAULT_RULES", "DETECTORS", "SCHEMA", "Alert", "Detection", "Rule", "Settings", "load_settings"]

_log = logging.getLogger(__name__)

DETECTORS = ("auth_failures_by_source", "auth_failures_by_subject", "token_replay", "denial_spike", "dry_run_denials")


@dataclasses.dataclass(frozen=True, slots=True)
class Rule:
    """One detector's settings. ``threshold``: failures (the two auth detectors), distinct source
    addresses (token_replay), or the least number of denials (denial_spike) or of checks
    (dry_run_denials) in a window that can alert at all."""

    enabled: bool = True
    threshold: int = 20
    window_seconds: int = 60
    factor: float = 5.0  # denial_spike: times the key's baseline
    share_percent: int = 20  # dry_run_denials: share of would-be denials


DEFAULT_RULES: Mapping[str, Rule] = {
    "auth_failures_by_source": Rule(threshold=20, window_seconds=60),
    "auth_failures_by_subject": Rule(threshold=10, window_seconds=300),
    "token_replay": Rule(threshold=5, window_seconds=300),
    "denial_spike": Rule(threshold=50, window_seconds=60, factor=5.0),
    "dry_run_denials": Rule(threshold=50, window_seconds=300, share_percent=20),
}
_BASELINE_WINDOWS = 10  # denial_spike's mean weighs about the last ten windows


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    rules: Mapping[str, Rule] = dataclasses.field(default_factory=lambda: dict(DEFAULT_RULES))
    max_keys: int = 10_000  # per detector
    sweep_seconds: float = 1.0  # how often ended alerts are resolved


# -- the --detectors file ---------------------------------------------------------------------
_FILE_NAMES = {
    "authFailuresBySource": ("auth_failures_by_source", {"threshold": "threshold"}),
    "authFailuresBySubject": ("auth_failures_by_subject", {"threshold": "threshold"}),
    "tokenReplay": ("token_replay", {"addresses": "threshold"}),
    "denialSpike": ("denial_spike", {"minimum": "threshold", "factor": "factor"}),
    "dryRunDenials": ("dry_run_denials", {"minimum": "threshold", "sharePercent": "share_percent"}),
}


def _rule_schema(fields: Mapping[str, str]) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "enabled": {"type": "boolean"},
        "windowSeconds": {"type": "integer", "minimum": 1, "maximum": 86_400},
    }
    for name in fields:
        if name == "factor":
            properties[name] = {"type": "number", "minimum": 1, "maximum": 1000}
        elif name == "sharePercent":
            properties[name] = {"type": "integer", "minimum": 1, "maximum": 100}
        else:
            properties[name] = {"type": "integer", "minimum": 1, "maximum": 1_000_000}
    return {"type": "object", "additionalProperties": False, "properties": properties}


SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "maxKeys": {"type": "integer", "minimum": 100, "maximum": 10_000_000},
        "detectors": {
            "type": "object",
            "additionalProperties": False,
            "properties": {name: _rule_schema(fields) for name, (_, fields) in _FILE_NAMES.items()},
        },
    },
}


def load_settings(path: pathlib.Path) -> Settings:
    """The ``--detectors`` file (YAML): what it sets over :data:`DEFAULT_RULES`. A file that cannot
    be used is a :class:`ConfigError` naming it and the field."""
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ConfigError(f"cannot read the detector settings: {error}", file=str(path)) from error
    document = {} if document is None else document
    problem = next(iter(sorted(jsonschema.Draft202012Validator(SCHEMA).iter_errors(document), key=str)), None)
    if problem is not None:
        where = ".".join(str(part) for part in problem.absolute_path) or "(top level)"
        raise ConfigError(f"{where}: {problem.message}", file=str(path), field=where)
    rules = dict(DEFAULT_RULES)
    for file_name, section in (document.get("detectors") or {}).items():
        name, fields = _FILE_NAMES[file_name]
        changes: dict[str, Any] = {fields[key]: value for key, value in section.items() if key in fields}
        if "enabled" in section:
            changes["enabled"] = section["enabled"]
        if "windowSeconds" in section:
            changes["window_seconds"] = section["windowSeconds"]
        rules[name] = dataclasses.replace(rules[name], **changes)
    return Settings(rules=rules, max_keys=document.get("maxKeys", 10_000))


# -- alerts -----------------------------------------------------------------------------------
@dataclasses.dataclass(slots=True)
class Alert:
    """One alert, from firing to resolution. ``key`` is the raw key; it leaves as :attr:`label`."""

    alert_id: str
    detector: str
    key_kind: str
    key: str
    count: int
    threshold: int
    window_seconds: int
    first_decision: str
    last_decision: str
    first_time_ms: int
    last_time_ms: int
    state: str = "firing"
    label: str = ""  # the key as shown outside: a pseudonym, or the host or policy name
    started_ms: int = 0


Event = tuple[float, str]  # (monotonic seconds, decision id)


@dataclasses.dataclass(frozen=True, slots=True)
class Hit:
    """A detector's condition holds for a key: what the alert will say."""

    count: int
    first: Event
    threshold: int
    window: int


class _Table:
    """At most ``limit`` keys, each ``[last seen, state]``; past the limit a new key replaces the
    oldest key seen only once, else the least recently seen."""

    __slots__ = ("entries", "limit", "once")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.entries: collections.OrderedDict[Any, list[Any]] = collections.OrderedDict()
        self.once: dict[Any, None] = {}  # keys seen once, oldest first

    def touch(self, key: Any, now: float, new: Callable[[], Any]) -> Any:
        entry = self.entries.get(key)
        if entry is None:
            if len(self.entries) >= self.limit:
                self._evict()
            self.entries[key] = [now, new()]
            self.once[key] = None
            return self.entries[key][1]
        entry[0] = now
        self.entries.move_to_end(key)
        if self.once:
            self.once.pop(key, None)
        return entry[1]

    def get(self, key: Any) -> Any:
        entry = self.entries.get(key)
        return None if entry is None else entry[1]

    def prune(self, before: float, keep: Callable[[Any], bool]) -> None:
        """Forget keys last seen before ``before`` (their windows have passed), but not ``keep``'s."""
        entries = self.entries
        while entries:
            key, entry = next(iter(entries.items()))
            if entry[0] >= before:
                break
            if keep(key):
                entries.move_to_end(key)
                entry[0] = before
                continue
            del entries[key]
            self.once.pop(key, None)

    def _evict(self) -> None:
        victim = next(iter(self.once)) if self.once else next(iter(self.entries))
        self.once.pop(victim, None)
        del self.entries[victim]


class _Burst:
    """``threshold`` events for one key within ``window`` seconds: the last ``threshold`` events
    are kept, and the condition holds while the oldest of them is within the window."""

    def __init__(self, rule: Rule, limit: int) -> None:
        self.threshold, self.window = rule.threshold, rule.window_seconds
        self.table = _Table(limit)

    def add(self, key: Any, event: Event) -> Hit | None:
        now = event[0]
        events = self.table.touch(key, now, lambda: collections.deque(maxlen=self.threshold))
        events.append(event)
        if len(events) == self.threshold and now - events[0][0] <= self.window:
            return Hit(self.threshold, events[0], self.threshold, self.window)
        return None

    def holds(self, key: Any, now: float) -> bool:
        events = self.table.get(key)
        return events is not None and len(events) == self.threshold and now - events[0][0] <= self.window


class _Spread:
    """One key (a token) seen from ``threshold`` distinct sources within ``window`` seconds."""

    def __init__(self, rule: Rule, limit: int) -> None:
        self.threshold, self.window = rule.threshold, rule.window_seconds
        self.table = _Table(limit)

    def add(self, key: Any, source: str, event: Event) -> Hit | None:
        now = event[0]
        sources = self.table.touch(key, now, dict)
        if source in sources:
            del sources[source]  # re-inserted last: the dict stays ordered by last use
        sources[source] = event
        if len(sources) > self.threshold:
            del sources[next(iter(sources))]
        if len(sources) == self.threshold:
            oldest = next(iter(sources.values()))
            if now - oldest[0] <= self.window:
                return Hit(self.threshold, oldest, self.threshold, self.window)
        return None

    def holds(self, key: Any, now: float) -> bool:
        sources = self.table.get(key)
        if sources is None or len(sources) < self.threshold:
            return False
        return bool(now - next(iter(sources.values()))[0] <= self.window)


@dataclasses.dataclass(slots=True)
class _Tally:
    """One key's windows: the current one, the last closed one, and the baseline of earlier ones."""

    index: int  # the current window: monotonic seconds // window
    events: int = 0
    counted: int = 0  # denial_spike: every event; dry_run_denials: the would-be denials
    closed_events: int = 0  # the last closed window's (0 if it had none)
    closed_counted: int = 0
    baseline: float | None = None  # None: no quiet window seen yet
    first: Event | None = None  # the first counted event of the current window


class _Windows:
    """Fixed windows per key (``window`` seconds, aligned for all keys): the current window's
    tally, the last closed one's, and (denial_spike) a baseline of the past ones."""

    def __init__(self, rule: Rule, limit: int, *, share: bool) -> None:
        self.rule = rule
        self.share = share  # dry_run_denials: the share of counted events decides, not a baseline
        self.window = rule.window_seconds
        self.table = _Table(limit)
        self._alpha = 2 / (_BASELINE_WINDOWS + 1)

    def add(self, key: Any, event: Event, *, counted: bool) -> Hit | None:
        """One event in the key's current window: a denial (denial_spike), or a check that the
        DryRun policy would deny (``counted``) or allow (dry_run_denials)."""
        now = event[0]
        index = int(now // self.window)
        tally: _Tally = self.table.touch(key, now, lambda: _Tally(index))
        if tally.index != index:
            self._roll(tally, index)
        tally.events += 1
        if counted:
            tally.counted += 1
            if tally.first is None:
                tally.first = event
        if tally.first is None or not self.reached(tally.events, tally.counted, tally.baseline):
            return None
        rule = self.rule
        if self.share:
            return Hit(tally.counted, tally.first, rule.share_percent, self.window)
        threshold = max(rule.threshold, math.ceil(rule.factor * (tally.baseline or 0.0)))
        return Hit(tally.events, tally.first, threshold, self.window)

    def _roll(self, tally: _Tally, index: int) -> None:
        gap = index - tally.index
        baseline = tally.baseline
        if not self.reached(tally.events, tally.counted, baseline):  # alerting windows stay out of it
            baseline = tally.events if baseline is None else baseline + self._alpha * (tally.events - baseline)
        if baseline is not None:
            baseline *= (1 - self._alpha) ** (gap - 1)  # the empty windows in between
        tally.baseline = baseline
        tally.closed_events, tally.closed_counted = (tally.events, tally.counted) if gap == 1 else (0, 0)
        tally.index, tally.events, tally.counted, tally.first = index, 0, 0, None

    def reached(self, events: int, counted: int, baseline: float | None) -> bool:
        rule = self.rule
        if events < rule.threshold:
            return False
        if self.share:
            return counted * 100 >= rule.share_percent * events
        return events >= rule.factor * (baseline or 0.0)

    def holds(self, key: Any, now: float) -> bool:
        """The current window has reached the threshold, or the last closed one had."""
        tally: _Tally | None = self.table.get(key)
        if tally is None:
            return False
        index = int(now // self.window)
        if tally.index == index:
            return self.reached(tally.events, tally.counted, tally.baseline) or self.reached(
                tally.closed_events, tally.closed_counted, tally.baseline
            )
        if tally.index == index - 1:
            return self.reached(tally.events, tally.counted, tally.baseline)
        return False


class Detection:
    """The detectors of one server, their active alerts, and where alerts go."""

    def __init__(
        self,
        settings: Settings,
        *,
        pseudonyms: pseudonym.Pseudonymizer | None = None,
        recorder: Any = None,
        events: Any = None,
        notifier: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``clock``: monotonic seconds (tests pass their own, to move time without waiting)."""
        rules, limit = settings.rules, settings.max_keys
        self._clock = clock
        self.settings = settings
        self.pseudonyms = pseudonyms or pseudonym.Pseudonymizer([("ephemeral", secrets.token_bytes(32))])
        self.recorder = recorder  # the audit recorder (record_event), or None
        self.events = events  # OpenTelemetry log events (authz.audit.otel_export.LogExport), or None
        self.notifier = notifier  # authz.alertmanager.Notifier, or None
        self.raised: dict[str, int] = dict.fromkeys(DETECTORS, 0)  # alerts raised: a metric
        self.active: dict[tuple[str, Any], Alert] = {}

        def enabled(name: str) -> Rule | None:
            rule = rules[name]
            return rule if rule.enabled else None

        source, subject, replay = (enabled(n) for n in DETECTORS[:3])
        self._by_source = _Burst(source, limit) if source else None
        self._by_subject = _Burst(subject, limit) if subject else None
        self._replay = _Spread(replay, limit) if replay else None
        spike, dry = enabled("denial_spike"), enabled("dry_run_denials")
        self._spike = _Windows(spike, limit, share=False) if spike else None
        self._dry = _Windows(dry, limit, share=True) if dry else None
        # The enabled detectors by name: what sweep() asks whether an alert still holds, and prunes.
        enabled_detectors = zip(
            DETECTORS, (self._by_source, self._by_subject, self._replay, self._spike, self._dry), strict=True
        )
        self._detectors: dict[str, _Burst | _Spread | _Windows] = {
            name: detector for name, detector in enabled_detectors if detector is not None
        }
        self._clock_offset = time.time() - clock()  # monotonic → wall clock, for records
        self._task: asyncio.Task[None] | None = None

    # -- the request path: no I/O, no await -------------------------------------------------
    def observe(self, decision: decision_model.Decision) -> None:
        token = decision.identity.token_hash
        denied = not decision.allowed and decision.status < 500
        if not (token or denied or decision.dry_run):
            return  # the usual allowed Check without a token: nothing to count
        request = decision.request
        source = request.source_ip if request is not None else ""
        event = (self._clock(), decision.decision_id)
        if decision.status == 401:
            if source and self._by_source is not None:
                hit = self._by_source.add(source, event)
                self._update(("auth_failures_by_source", source), "source_ip", source, hit, event)
            claimed = decision.claimed_subject
            if claimed and self._by_subject is not None:
                hit = self._by_subject.add(claimed, event)
                self._update(("auth_failures_by_subject", claimed), "subject", claimed, hit, event)
        if token and source and self._replay is not None:
            hit = self._replay.add(token, source, event)
            self._update(("token_replay", token), "token", token, hit, event)
        if denied and decision.status != 401 and self._spike is not None:
            for kind, value in (("host", request.host if request is not None else ""), ("policy", decision.policy)):
                if value:
                    hit = self._spike.add((kind, value), event, counted=True)
                    self._update(("denial_spike", (kind, value)), kind, value, hit, event)
        dry = decision.dry_run
        if dry is not None and self._dry is not None:
            policy = dry.policy or (f"host {request.host}" if request is not None else "")
            if policy:
                hit = self._dry.add(policy, event, counted=not dry.allowed)
                self._update(("dry_run_denials", policy), "dry_run_policy", policy, hit, event)

    def _update(self, key: tuple[str, Any], kind: str, value: str, hit: Hit | None, event: Event) -> None:
        """Count an event into the key's firing alert, or raise one if ``hit`` (the condition holds)."""
        now, decision_id = event
        alert = self.active.get(key)
        if alert is not None:
            alert.count += 1
            alert.last_decision, alert.last_time_ms = decision_id, self._wall_ms(now)
            return
        if hit is None:
            return
        first_time, first_id = hit.first
        alert = Alert(
            alert_id=ids.new_id(),
            detector=key[0],
            key_kind=kind,
            key=value,
            count=hit.count,
            threshold=hit.threshold,
            window_seconds=hit.window,
            first_decision=first_id,
            last_decision=decision_id,
            first_time_ms=self._wall_ms(first_time),
            last_time_ms=self._wall_ms(now),
        )
        alert.label = self.pseudonyms(value) if kind in ("source_ip", "subject", "token") else value
        alert.started_ms = time.time_ns() // 1_000_000
        self.active[key] = alert
        self.raised[alert.detector] += 1
        self._emit(alert)

    def _wall_ms(self, monotonic: float) -> int:
        return int((monotonic + self._clock_offset) * 1000)

    # -- resolution -------------------------------------------------------------------------
    def sweep(self, now: float | None = None) -> None:
        """Resolve every alert whose condition no longer holds; forget keys whose windows passed."""
        now = self._clock() if now is None else now
        for key, alert in list(self.active.items()):
            if not self._holds(key, now):
                del self.active[key]
                alert.state = "resolved"
                self._emit(alert)
        for detector, table, horizon in self._tables():
            firing = {key for name, key in self.active if name == detector}
            table.prune(now - horizon, firing.__contains__)

    def _holds(self, key: tuple[str, Any], now: float) -> bool:
        name, value = key
        detector = self._detectors.get(name)
        return detector is not None and detector.holds(value, now)

    def _tables(self) -> list[tuple[str, _Table, float]]:
        """Each enabled detector's table, and how long its keys stay after their last event."""
        return [(name, d.table, 2 * d.window + 1) for name, d in self._detectors.items()]

    def active_by_detector(self) -> dict[str, int]:
        counts = dict.fromkeys(DETECTORS, 0)
        for detector, _ in self.active:
            counts[detector] += 1
        return counts

    def keys_held(self) -> int:
        """Keys in memory, over all detectors (bounded by ``max_keys`` each)."""
        return sum(len(table.entries) for _, table, _ in self._tables())

    async def run(self) -> None:
        """Sweep every ``sweep_seconds`` until cancelled; re-send firing alerts to Alertmanager."""
        while True:
            await asyncio.sleep(self.settings.sweep_seconds)
            try:
                self.sweep()
                if self.notifier is not None:
                    self.notifier.refresh(list(self.active.values()))
            except Exception:  # a fault here must not end detection for the life of the process
                _log.exception("alert sweep failed")

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run(), name="alert-sweep")
        if self.notifier is not None:
            self.notifier.start()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.notifier is not None:
            await self.notifier.close()
        if self.events is not None:
            self.events.shutdown()

    # -- where an alert goes ----------------------------------------------------------------
    def _emit(self, alert: Alert) -> None:
        entry = alert_record(alert, self.pseudonyms.key_id)
        _log.warning(
            "alert %s detector=%s key_kind=%s key=%s count=%d threshold=%d window_seconds=%d "
            "first_decision=%s last_decision=%s alert_id=%s",
            alert.state,
            alert.detector,
            alert.key_kind,
            alert.label,
            alert.count,
            alert.threshold,
            alert.window_seconds,
            alert.first_decision,
            alert.last_decision,
            alert.alert_id,
        )
        if self.recorder is not None:
            self.recorder.record_event(entry)
        if self.events is not None:
            self.events.emit(entry, record.encode(entry))
        if self.notifier is not None:
            self.notifier.notify(alert)


def alert_record(alert: Alert, pseudonym_key: str) -> dict[str, Any]:
    """The ``alert`` audit record (all but the log's own fields)."""
    now = time.time_ns() // 1_000_000
    return {
        "v": record.SCHEMA_VERSION,
        "kind": "alert",
        "id": alert.alert_id if alert.state == "firing" else ids.new_id(),
        "time": record.format_time(now),
        "time_ms": now,
        "alert": {
            "alert_id": alert.alert_id,
            "state": alert.state,
            "detector": alert.detector,
            "key_kind": alert.key_kind,
            "key": alert.label,
            "count": alert.count,
            "threshold": alert.threshold,
            "window_seconds": alert.window_seconds,
            "first_decision": alert.first_decision,
            "last_decision": alert.last_decision,
            "first_time_ms": alert.first_time_ms,
            "last_time_ms": alert.last_time_ms,
            "pseudonym_key": pseudonym_key if alert.key_kind in ("source_ip", "subject", "token") else "",
        },
    }
