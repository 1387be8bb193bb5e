"""Write a signed audit log of synthetic decisions with the real log writer, fast: the benchmarks'
million records and the audit tests' varied ones (several hosts, policies, reasons, subjects with
e-mails, all three outcomes, and alerts).

``write_log(directory, count)`` returns the log directory; the verifier key and pseudonym key file
are written beside it (``verifier.key``, ``pseudonyms.yaml``).
"""

from __future__ import annotations

import dataclasses
import pathlib
import random
import time

from authz import decision, detect, ids
from authz.audit import log as audit_log
from authz.audit import note, pseudonym, record
from authz.identity import model
from authz.request import HttpRequest

__all__ = ["Written", "append_decisions", "synthetic_decision", "write_log"]

_REASONS = ("default_deny", "rule_deny", "token_expired", "missing_credentials")


@dataclasses.dataclass(frozen=True)
class Written:
    directory: pathlib.Path  # the log (give it to tollgate audit ...)
    verifier_key: pathlib.Path
    pseudonym_keys: pathlib.Path
    first_ms: int
    last_ms: int


def synthetic_decision(
    rng: random.Random, index: int, *, users: int = 1000, hosts: int = 50, host: str | None = None
) -> decision.Decision:
    """One decision as :func:`write_log` writes them: 80 % allowed, 1 % failed, the rest denied."""
    user = f"user-{rng.randrange(users)}"
    outcome = rng.random()
    allowed = outcome < 0.8
    error = outcome > 0.99
    host = host if host is not None else f"svc-{rng.randrange(hosts)}.example.test"
    return decision.Decision(
        decision_id=ids.new_id(),
        revision="synthetic",
        allowed=allowed,
        status=200 if allowed else 503 if error else rng.choice((401, 403)),
        reason="rule_allow" if allowed else "authz_error" if error else rng.choice(_REASONS),
        policy=f"apps/{host.partition('.')[0]}",
        rule="read" if allowed else "",
        request=HttpRequest(
            method=rng.choice(("GET", "GET", "POST")),
            host=host,
            path=f"/api/orders/{index % 977}",
            source_ip=f"10.0.{rng.randrange(256)}.7",
            request_id=f"r{index}",
        ),
        identity=model.Identity(
            authenticated=True,
            method="jwt",
            subject=user,
            email=f"{user}@example.test",
            groups=("staff",),
        ),
        trace_id=f"{index:032x}",
        span_id=f"{index:016x}",
    )


def append_decisions(
    log: audit_log.AuditLog,
    keys: pseudonym.Pseudonymizer,
    rng: random.Random,
    count: int,
    *,
    checkpoints: bool = True,
) -> None:
    """Append ``count`` synthetic decisions to an open log, stamped now, as a running server does:
    a checkpoint whenever one is due (unless ``checkpoints`` is off), a new segment when due, and
    the records flushed to the file at the end."""
    for _ in range(count):
        item = synthetic_decision(rng, log.size)
        log.append(record.decision_record(item, time.time_ns() // 1_000_000, keys))
        if checkpoints and log.checkpoint_due():
            log.checkpoint()
        log.rotate_if_due()
    log.flush(fsync=False)


def write_log(
    directory: pathlib.Path,
    count: int,
    *,
    spacing_ms: int = 1,
    end_ms: int | None = None,
    users: int = 1000,
    hosts: int = 50,
    alert_every: int = 0,
    odd_hosts: tuple[str, ...] = (),
    segment_bytes: int = 64 << 20,
    archive: pathlib.Path | None = None,
    seed: int = 1,
) -> Written:
    """``count`` decisions, one every ``spacing_ms``, the last at ``end_ms`` (default: now); 80 %
    allowed. ``alert_every``: also an alert record after every that many decisions (0: none).
    ``odd_hosts``: host names (say, markup a client sent) the first decisions carry, one each.
    ``archive``: keep the newest segment only, and let retention move older ones there."""
    skey, vkey = note.generate("tollgate.dev/audit/synthetic")
    (directory / "verifier.key").write_text(vkey)
    pseudonym.generate_key_file(directory / "pseudonyms.yaml", "synthetic")
    keys = pseudonym.load_keys(directory / "pseudonyms.yaml")
    settings = audit_log.LogSettings(
        checkpoint_every=10_000,
        checkpoint_seconds=3600,
        segment_max_bytes=segment_bytes,
        retain_segments=1 if archive is not None else 0,
        archive_dir=archive,
    )
    log = audit_log.AuditLog(directory / "audit", note.Signer.from_skey(skey), instance="synthetic", settings=settings)
    log.open()
    rng = random.Random(seed)  # noqa: S311 - reproducible test data, not secrets
    end_ms = time.time_ns() // 1_000_000 if end_ms is None else end_ms
    start_ms = end_ms - (count - 1) * spacing_ms
    for index in range(count):
        host = odd_hosts[index] if index < len(odd_hosts) else None
        item = synthetic_decision(rng, index, users=users, hosts=hosts, host=host)
        time_ms = start_ms + index * spacing_ms
        log.append(record.decision_record(item, time_ms, keys))
        if alert_every and index % alert_every == alert_every - 1:
            alert = detect.Alert(
                alert_id=ids.new_id(),
                detector="auth_failures_by_source",
                key_kind="source_ip",
                key="10.0.0.7",
                count=20,
                threshold=20,
                window_seconds=60,
                first_decision=item.decision_id,
                last_decision=item.decision_id,
                first_time_ms=time_ms,
                last_time_ms=time_ms,
                label=keys("10.0.0.7"),
            )
            entry = detect.alert_record(alert, keys.key_id)
            entry["time_ms"], entry["time"] = time_ms, record.format_time(time_ms)
            log.append(entry)
        if log.checkpoint_due():
            log.checkpoint()
        log.rotate_if_due()
    log.close()
    return Written(directory / "audit", directory / "verifier.key", directory / "pseudonyms.yaml", start_ms, end_ms)
