"""authz.detect: each detector fires once per key and window, counts into the firing alert,
resolves when its condition ends, stays quiet below its threshold, and keeps memory bounded."""

from __future__ import annotations

import dataclasses
import gc
import pathlib
from typing import Any

import pytest

from authz import decision, detect, ids
from authz import request as request_model
from authz.audit import pseudonym, record
from authz.errors import ConfigError
from authz.identity import model as identity_model
from authz.policy import verdict


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Records:
    """Stands where the audit recorder's record_event is: keeps the alert records."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def record_event(self, entry: dict[str, Any]) -> None:
        self.entries.append(entry)

    def alerts(self, state: str = "") -> list[dict[str, Any]]:
        return [e["alert"] for e in self.entries if not state or e["alert"]["state"] == state]


KEYS = pseudonym.Pseudonymizer([("k1", b"x" * 32)])


def make(
    rules: dict[str, detect.Rule] | None = None, max_keys: int = 10_000
) -> tuple[detect.Detection, Clock, Records]:
    clock, records = Clock(), Records()
    settings = detect.Settings(rules={**detect.DEFAULT_RULES, **(rules or {})}, max_keys=max_keys)
    return detect.Detection(settings, pseudonyms=KEYS, recorder=records, clock=clock), clock, records


def check(
    *,
    status: int = 200,
    source: str = "203.0.113.7",
    host: str = "api.example.com",
    policy: str = "",
    token: str = "",
    claimed: str = "",
    dry_run: verdict.DryRunVerdict | None = None,
) -> decision.Decision:
    identity = identity_model.ANONYMOUS
    if token:
        identity = identity_model.Identity(authenticated=True, method="jwt", subject="alice", token_hash=token)
    return decision.Decision(
        decision_id=ids.new_id(),
        revision="r1",
        allowed=status == 200,
        status=status,
        reason="rule_allow" if status == 200 else "token_invalid" if status == 401 else "rule_deny",
        policy=policy,
        request=request_model.HttpRequest("GET", host, "/", source_ip=source),
        identity=identity,
        dry_run=dry_run,
        claimed_subject=claimed,
    )


def test_fifty_bad_tokens_from_one_address_raise_one_alert_that_counts_them_all() -> None:
    detection, clock, records = make()
    checks = [check(status=401) for _ in range(50)]
    for item in checks:
        detection.observe(item)
        clock.now += 0.1
    (alert,) = records.alerts()
    assert alert["detector"] == "auth_failures_by_source" and alert["state"] == "firing"
    assert alert["key"] == KEYS("203.0.113.7") and alert["key_kind"] == "source_ip" and alert["pseudonym_key"] == "k1"
    assert (alert["count"], alert["threshold"], alert["window_seconds"]) == (20, 20, 60)
    assert (alert["first_decision"], alert["last_decision"]) == (checks[0].decision_id, checks[19].decision_id)
    assert "203.0.113.7" not in str(records.entries)
    assert detection.raised["auth_failures_by_source"] == 1
    firing = detection.active[("auth_failures_by_source", "203.0.113.7")]
    assert firing.count == 50 and firing.last_decision == checks[-1].decision_id


def test_the_alert_resolves_when_the_window_passes_and_a_new_burst_is_a_new_alert() -> None:
    detection, clock, records = make()
    for _ in range(25):
        detection.observe(check(status=401))
    detection.sweep()
    assert records.alerts("resolved") == []  # still within the window
    clock.now += 61
    detection.sweep()
    (resolved,) = records.alerts("resolved")
    (firing,) = records.alerts("firing")
    assert resolved["alert_id"] == firing["alert_id"] and resolved["count"] == 25
    assert detection.active == {}
    for _ in range(20):
        detection.observe(check(status=401))
    second = records.alerts("firing")[-1]
    assert len(records.alerts("firing")) == 2 and second["alert_id"] != firing["alert_id"]
    for entry in records.entries:
        assert record.schema_problem({**entry, "seq": 0, "origin": "o", "prev": ""}) == ""


def test_failures_below_the_threshold_or_spread_beyond_the_window_stay_quiet() -> None:
    detection, clock, records = make()
    for _ in range(19):
        detection.observe(check(status=401, source="198.51.100.1"))
    for _ in range(40):  # one every 4 s: 15 per minute, never 20
        detection.observe(check(status=401, source="198.51.100.2"))
        clock.now += 4
    for _ in range(100):  # allowed and 403 are not authentication failures
        detection.observe(check(status=200, source="198.51.100.3"))
    assert records.alerts() == []


def test_failures_for_one_claimed_subject_from_many_addresses() -> None:
    detection, _, records = make()
    for index in range(10):
        detection.observe(check(status=401, source=f"192.0.2.{index}", claimed="admin"))
    (alert,) = records.alerts()
    assert (alert["detector"], alert["key"], alert["key_kind"]) == (
        "auth_failures_by_subject",
        KEYS("admin"),
        "subject",
    )


def test_one_token_from_many_addresses_is_replay_and_from_one_address_is_not() -> None:
    detection, clock, records = make()
    for _ in range(200):
        detection.observe(check(token="t-home", source="192.0.2.1"))
    assert records.alerts() == []
    for index in range(5):
        detection.observe(check(token="t-stolen", source=f"198.51.100.{index}"))
        clock.now += 10
    (alert,) = records.alerts()
    assert (alert["detector"], alert["key"], alert["count"]) == ("token_replay", KEYS("t-stolen"), 5)
    clock.now += 301
    detection.sweep()
    assert records.alerts("resolved")[0]["alert_id"] == alert["alert_id"]


def test_denial_spike_against_the_baseline_of_the_same_host() -> None:
    detection, clock, records = make()
    clock.now = 60_000.0  # a window boundary
    for _ in range(5):  # a steady 20 denials a minute on both hosts
        for host in ("steady.example.com", "busy.example.com"):
            for _ in range(20):
                detection.observe(check(status=403, host=host))
        clock.now += 60
    for _ in range(90):  # 90 < 5 x 20: busy, but not a spike against this baseline
        detection.observe(check(status=403, host="busy.example.com"))
    assert records.alerts() == []
    clock.now += 60
    for _ in range(20):
        detection.observe(check(status=403, host="busy.example.com"))
    for _ in range(150):
        detection.observe(check(status=403, host="steady.example.com"))
    (alert,) = records.alerts()
    assert (alert["detector"], alert["key_kind"], alert["key"]) == ("denial_spike", "host", "steady.example.com")
    assert alert["count"] >= alert["threshold"] >= 50
    clock.now += 60  # the window that alerted has closed: still firing
    detection.sweep()
    assert records.alerts("resolved") == []
    clock.now += 60  # a quiet window closed
    detection.sweep()
    assert [a["key"] for a in records.alerts("resolved")] == ["steady.example.com"]


def test_denial_spike_by_policy_and_the_minimum_count() -> None:
    detection, _, records = make()
    for _ in range(49):
        detection.observe(check(status=403, host="", policy="shop/orders"))
    assert records.alerts() == []
    detection.observe(check(status=403, host="", policy="shop/orders"))
    (alert,) = records.alerts()
    assert (alert["key_kind"], alert["key"], alert["count"]) == ("policy", "shop/orders", 50)


def test_a_dry_run_policy_that_would_deny_a_large_share() -> None:
    detection, _, records = make()
    allow = verdict.DryRunVerdict(True, "rule_allow", "shop/next", "r")
    deny = verdict.DryRunVerdict(False, "default_deny", "shop/next", "")
    for index in range(100):
        detection.observe(check(dry_run=deny if index % 10 == 0 else allow))  # 10 %: fine
    assert records.alerts() == []
    for index in range(60):
        detection.observe(check(dry_run=deny if index % 2 else allow))  # now 40 of 160: 25 %
    (alert,) = records.alerts()
    assert (alert["detector"], alert["key_kind"], alert["key"]) == ("dry_run_denials", "dry_run_policy", "shop/next")
    assert alert["threshold"] == 20


def test_disabled_detectors_count_nothing() -> None:
    detection, _, records = make({"auth_failures_by_source": detect.Rule(enabled=False)})
    for _ in range(50):
        detection.observe(check(status=401))
    assert records.alerts() == [] and detection.keys_held() == 0


def rss_bytes() -> int:
    pages = int(pathlib.Path("/proc/self/statm").read_text().split()[1])
    import os  # noqa: PLC0415

    return pages * os.sysconf("SC_PAGE_SIZE")


def test_a_flood_of_unique_addresses_keeps_memory_bounded_and_the_offender_caught() -> None:
    detection, clock, records = make()  # 10,000 keys per detector
    offender = [check(status=401, source="203.0.113.66") for _ in range(50)]
    flood = [
        check(status=401, source=f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", claimed=f"user{i}")
        for i in range(100_000)
    ]
    gc.collect()
    before = rss_bytes()
    for index, item in enumerate(flood):
        detection.observe(item)
        if index % 2000 == 0:
            detection.observe(offender[index // 2000])
        clock.now += 0.0005  # the whole flood within 50 s, inside every window
    gc.collect()
    grown = rss_bytes() - before
    assert detection.keys_held() <= 2 * detection.settings.max_keys  # by source and by subject
    keys = {(a["detector"], a["key"]) for a in records.alerts()}
    assert ("auth_failures_by_source", KEYS("203.0.113.66")) in keys
    assert len(keys) == 1, keys  # and no one-off address alerted
    # 200,000 windows kept would take ~200 MB; the bounded tables hold 20,000 keys at most.
    assert grown < 40 * 1024 * 1024, f"resident memory grew by {grown / 1e6:.1f} MB"


def test_a_full_table_forgets_one_off_keys_before_a_repeat_offender() -> None:
    table = detect._Table(limit=100)
    table.touch("offender", 0.0, list)
    table.touch("offender", 0.0, list)  # seen twice
    for index in range(1000):  # the offender is now the least recently seen key, many times over
        table.touch(f"one-off {index}", 1.0, list)
    assert "offender" in table.entries and len(table.entries) == 100
    table.touch("offender", 2.0, list)
    for index in range(100):  # no one-off keys left to forget: the least recently seen goes
        table.touch(("twice", index), 3.0, list)
        table.touch(("twice", index), 3.0, list)
    assert "offender" not in table.entries and len(table.entries) == 100


def test_the_detectors_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "detectors.yaml"
    path.write_text("maxKeys: 500\ndetectors:\n  tokenReplay: {addresses: 3, windowSeconds: 30}\n"
                    "  denialSpike: {enabled: false}\n")  # fmt: skip
    settings = detect.load_settings(path)
    assert settings.max_keys == 500
    assert settings.rules["token_replay"] == dataclasses.replace(
        detect.DEFAULT_RULES["token_replay"], threshold=3, window_seconds=30
    )
    assert not settings.rules["denial_spike"].enabled
    assert settings.rules["auth_failures_by_source"] == detect.DEFAULT_RULES["auth_failures_by_source"]
    for text, field in (
        ("detectors:\n  tokenReplay: {addresses: 0}\n", "detectors.tokenReplay.addresses"),
        ("detectors:\n  tokenRepaly: {}\n", "detectors"),
        ("maxKeys: lots\n", "maxKeys"),
        ("detectors:\n  dryRunDenials: {sharePercent: 120}\n", "detectors.dryRunDenials.sharePercent"),
    ):
        path.write_text(text)
        with pytest.raises(ConfigError) as caught:
            detect.load_settings(path)
        assert caught.value.file == str(path) and caught.value.field == field, caught.value
    path.write_text("detectors: [")
    with pytest.raises(ConfigError, match="cannot read"):
        detect.load_settings(path)
