"""``authz.affinity.choose``: which CPU a worker's Python threads take, and when none."""

from __future__ import annotations

import os

import pytest

from authz import affinity


@pytest.mark.parametrize(
    ("choice", "engine", "allowed", "first", "index", "cpu", "why"),
    [
        ("auto", "threads", [0, 1, 2, 3], 2, 0, 2, "Python threads on CPU 2 of 0-3; gRPC's I/O threads unpinned"),
        ("auto", "threads", [0, 1, 2, 3], 2, 1, 3, "Python threads on CPU 3 of 0-3; gRPC's I/O threads unpinned"),
        ("auto", "threads", [0, 1, 2, 3], 2, 2, 0, "Python threads on CPU 0 of 0-3; gRPC's I/O threads unpinned"),
        ("auto", "threads", [0, 1, 2, 3], 2, 5, 3, "Python threads on CPU 3 of 0-3; gRPC's I/O threads unpinned"),
        # A cpuset that is not 0..n-1; a first CPU outside it (or unknown) starts at its first.
        ("auto", "threads", [4, 5, 9], 5, 1, 9, "Python threads on CPU 9 of 4-5,9; gRPC's I/O threads unpinned"),
        ("auto", "threads", [4, 5, 9], 0, 0, 4, "Python threads on CPU 4 of 4-5,9; gRPC's I/O threads unpinned"),
        ("auto", "threads", [4, 5, 9], None, 1, 5, "Python threads on CPU 5 of 4-5,9; gRPC's I/O threads unpinned"),
        ("off", "threads", [0, 1], 0, 0, None, "off"),
        ("auto", "aio", [0, 1], 0, 0, None, "none pinned (aio engine: a Check stays on the loop's thread)"),
        ("auto", "threads", [3], 3, 0, None, "none pinned (this process may use 1 CPU)"),
        ("auto", "threads", [], None, 0, None, "none pinned (the CPUs this process may use are unknown)"),
    ],
)
def test_which_cpu_and_why(
    choice: str, engine: str, allowed: list[int], first: int | None, index: int, cpu: int | None, why: str
) -> None:
    assert affinity.choose(choice, engine, allowed, first=first, index=index) == affinity.Placement(cpu, why)


def test_this_process_is_on_a_cpu_it_may_use() -> None:
    assert affinity.allowed_cpus() == sorted(os.sched_getaffinity(0))
    assert affinity.current_cpu() in affinity.allowed_cpus()
