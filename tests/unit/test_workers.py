"""The supervisor's pure parts: how soon a worker that exited is started again, one exposition
made of several workers' metrics, and how a worker learns its place and announces its metrics port."""

from __future__ import annotations

import pathlib

import pytest
from prometheus_client import parser

from authz import workers


def test_a_crash_loop_backs_off_and_a_stable_worker_restarts_at_once() -> None:
    waits, delay = [], workers.RESTART_DELAY
    for _ in range(9):  # a worker that dies at start, again and again
        wait, delay = workers.restart_delays(delay, lived=0.3)
        waits.append(wait)
    assert waits[:4] == [0.5, 1.0, 2.0, 4.0] and waits[-1] == workers.MAX_RESTART_DELAY
    wait, delay = workers.restart_delays(delay, lived=workers.STABLE_SECONDS)  # then it ran for a while
    assert (wait, delay) == (workers.RESTART_DELAY, 2 * workers.RESTART_DELAY)


def test_expositions_merge_with_a_worker_label_and_add_up() -> None:
    text = (
        "# HELP tollgate_checks_total Checks answered\n# TYPE tollgate_checks_total counter\n"
        'tollgate_checks_total{{decision="allow"}} {}\n'
    )
    merged = workers.merge_expositions({"0": text.format(3), "1": text.format(4)}, restarts=2).decode()
    families = {family.name: family for family in parser.text_string_to_metric_families(merged)}
    samples = [s for s in families["tollgate_checks"].samples if s.name == "tollgate_checks_total"]
    assert {(s.labels["worker"], s.value) for s in samples} == {("0", 3.0), ("1", 4.0)}
    assert sum(s.value for s in samples) == 7
    [restarts] = [s for s in families["tollgate_worker_restarts"].samples if s.name.endswith("_total")]
    assert restarts.value == 2


def test_a_worker_reads_its_place_and_announces_the_metrics_port_it_was_given(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port_file = tmp_path / "worker-1.port"
    monkeypatch.setenv(workers.ENVIRONMENT, f"1;3;127.0.0.1:0;{port_file}")
    worker = workers.this_worker()
    assert worker == workers.Worker(1, "127.0.0.1:0", str(port_file), first_cpu=3)
    worker.announce_metrics_port(41234)
    assert port_file.read_text() == "41234\n" and not list(tmp_path.glob("*.partial"))
    monkeypatch.setenv(workers.ENVIRONMENT, "0;;")  # no metrics: nothing to announce; CPU unknown
    quiet = workers.this_worker()
    assert quiet == workers.Worker(0, "", "")
    quiet.announce_metrics_port(1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["worker-1.port"]
