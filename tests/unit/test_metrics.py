"""authz.metrics: what a Check counts comes out of the OpenTelemetry SDK's Prometheus reader
exactly — counts by decision, reason and policy; histogram buckets, sum and count — and the
series stay bounded."""

from __future__ import annotations

import os
import pathlib
import resource
import time

from prometheus_client.parser import text_string_to_metric_families

from authz import decision, ids, loader, metrics, server

EXAMPLES = pathlib.Path(__file__).parents[2] / "examples" / "policies"


def runtime() -> server.Runtime:
    made = server.Runtime(loader.load(EXAMPLES), default_allow=False)
    made.check_metrics = metrics.CheckMetrics()
    return made


def made(allowed: bool, status: int, reason: str, policy: str, micros: int) -> decision.Decision:
    return decision.Decision(
        decision_id=ids.new_id(),
        revision="r",
        allowed=allowed,
        status=status,
        reason=reason,
        policy=policy,
        duration_ns=micros * 1000,
    )


def samples(export: metrics.Export) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text, content_type = export.exposition()
    assert content_type.startswith("text/plain; version=")  # Prometheus' text format
    found = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_checks_and_their_latency_as_prometheus_reads_them() -> None:
    state = runtime()
    export = metrics.Export(state)
    tally = state.check_metrics
    assert tally is not None
    for micros in (40, 40, 120, 900, 3000):  # buckets ≤ 50 µs, ≤ 250 µs, ≤ 1 ms, ≤ 5 ms
        tally.observe(made(True, 200, "rule_allow", "shop/orders-api", micros))
    tally.observe(made(False, 403, "default_deny", "shop/orders-api", 60))
    tally.observe(made(False, 503, "identity_unavailable", "", 2_000_000))
    tally.in_flight = 3
    found = samples(export)
    checks = {labels: value for (name, labels), value in found.items() if name == "tollgate_checks_total"}
    assert checks == {
        (("decision", "allow"), ("policy", "shop/orders-api"), ("reason", "rule_allow")): 5,
        (("decision", "deny"), ("policy", "shop/orders-api"), ("reason", "default_deny")): 1,
        (("decision", "error"), ("policy", ""), ("reason", "identity_unavailable")): 1,
    }
    allow = {le: found[("tollgate_check_duration_seconds_bucket", (("decision", "allow"), ("le", le)))]
             for le in ("5e-05", "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "+Inf")}  # fmt: skip
    assert allow == {"5e-05": 2, "0.0001": 2, "0.00025": 3, "0.0005": 3, "0.001": 4, "0.0025": 4, "0.005": 5, "+Inf": 5}
    assert found[("tollgate_check_duration_seconds_count", (("decision", "allow"),))] == 5
    assert abs(found[("tollgate_check_duration_seconds_sum", (("decision", "allow"),))] - 0.0041) < 1e-9
    assert found[("tollgate_check_duration_seconds_bucket", (("decision", "error"), ("le", "2.5")))] == 1
    assert found[("tollgate_check_duration_seconds_bucket", (("decision", "error"), ("le", "1.0")))] == 0
    assert found[("tollgate_checks_in_flight", ())] == 3
    assert found[("tollgate_config_info", (("revision", state.snapshot.revision),))] == 1
    assert found[("tollgate_config_reloads_total", (("result", "applied"),))] == 0
    export.shutdown()


def test_past_the_series_limit_new_policies_are_counted_together() -> None:
    tally = metrics.CheckMetrics()
    for index in range(metrics.MAX_SERIES + 50):
        tally.observe(made(True, 200, "rule_allow", f"ns/p{index}", 10))
    tally.observe(made(True, 200, "rule_allow", "ns/p0", 10))  # an old series still counts on its own
    assert len(tally.checks) == metrics.MAX_SERIES + 1
    assert tally.checks[("allow", "rule_allow", "(other)")] == 50
    assert tally.checks[("allow", "rule_allow", "ns/p0")] == 2


def test_the_process_series_prometheus_expects_are_this_process() -> None:
    export = metrics.Export(runtime())
    before = time.process_time()
    sum(range(3_000_000))  # some CPU of our own to see counted
    found = samples(export)
    after = time.process_time()
    descriptors = len(os.listdir("/proc/self/fd"))
    assert abs(found[("process_open_fds", ())] - descriptors) <= 2  # the listing's own, the registry's read
    assert found[("process_max_fds", ())] == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    # /proc counts in clock ticks (1/100 s): the scrape saw the CPU spent before it.
    assert before - 0.02 <= found[("process_cpu_seconds_total", ())] <= after + 0.02
    assert found[("process_resident_memory_bytes", ())] > 10 * 2**20
    export.shutdown()
