"""Where a worker's Python threads run: on one CPU (``--cpu-affinity auto``), or wherever the
kernel puts them (``off``).

Python runs one thread at a time (its lock), so a worker's Python threads together never use more
than one CPU. With the threads engine a Check passes between several of them: gRPC's server thread
receives it, a decision thread decides it, the loop's thread writes its audit record. When those
threads run on different CPUs, every pass moves Python's lock, the loop's lock and the data they
touch from one CPU's caches to another's. Unpinned on a 2-CPU machine shared with Envoy, that cost
a gRPC Check ~16 µs of server CPU without the audit trail and ~70 µs with it (docs/performance.md,
"A worker's Python threads on one CPU").

So ``auto`` places this worker's Python threads — the loop's, gRPC's server thread, the decision
threads, and every thread they start later (each inherits its starter's CPU) — on one CPU among
those the process may use. gRPC's own I/O threads (C++, no Python lock) keep the kernel's
placement. Workers take different CPUs: worker *i* the *i*-th after the supervisor's, cycling.
A single server takes the CPU the kernel ran it on when it started.

Nothing is pinned with the ``aio`` engine (a Check stays on the loop's thread), or when the process
may use one CPU only. A CPU that cannot be set (the cpuset changed meanwhile) is a warning, never
a reason not to serve.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading

__all__ = ["CHOICES", "Placement", "allowed_cpus", "choose", "current_cpu", "pin_python_threads", "pin_this_thread"]

CHOICES = ("auto", "off")

_log = logging.getLogger(__name__)
_cpu: int | None = None  # the CPU this worker's Python threads run on (None: not pinned)


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where this worker's Python threads go (``cpu`` None: where the kernel puts them) and why, for the log."""

    cpu: int | None
    why: str


def allowed_cpus() -> list[int]:
    """The CPUs this process may run on, in order ([] where the platform cannot say)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return []


def current_cpu() -> int | None:
    """The CPU the calling thread last ran on (``processor`` in ``/proc/thread-self/stat``), None if unknown."""
    try:
        with open("/proc/thread-self/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        return int(fields[36])  # field 39; fields[0] is field 3 (the state)
    except (OSError, IndexError, ValueError):
        return None


def choose(choice: str, engine: str, allowed: list[int], *, first: int | None, index: int = 0) -> Placement:
    """Where worker ``index`` puts its Python threads: the ``index``-th CPU of ``allowed`` after
    ``first`` (the supervisor's, or this server's, CPU at start; cycling), or nowhere in particular."""
    if choice == "off":
        return Placement(None, "off")
    if engine != "threads":
        return Placement(None, f"none pinned ({engine} engine: a Check stays on the loop's thread)")
    if not allowed:
        return Placement(None, "none pinned (the CPUs this process may use are unknown)")
    if len(allowed) == 1:
        return Placement(None, "none pinned (this process may use 1 CPU)")
    start = allowed.index(first) if first in allowed else 0
    cpu = allowed[(start + index) % len(allowed)]
    return Placement(cpu, f"Python threads on CPU {cpu} of {_ranges(allowed)}; gRPC's I/O threads unpinned")


def pin_python_threads(cpu: int) -> None:
    """Put every Python thread of this process on ``cpu``; threads they start later inherit it,
    and :func:`pin_this_thread` pins a pool thread started before this ran."""
    global _cpu  # noqa: PLW0603 (this process's one placement)
    _cpu = cpu  # first: a pool thread started from here on pins itself (pin_this_thread)
    for thread in threading.enumerate():
        if thread.native_id is None:
            continue
        try:
            os.sched_setaffinity(thread.native_id, {cpu})
        except ProcessLookupError:  # it ended meanwhile
            continue
        except OSError as error:
            _log.warning("CPU affinity: cannot put Python threads on CPU %d (%s); the kernel places them", cpu, error)
            _cpu = None
            return


def pin_this_thread() -> None:
    """A thread pool's ``initializer``: the new thread goes where this worker's Python threads are."""
    cpu = _cpu
    if cpu is not None:
        with contextlib.suppress(OSError):  # pin_python_threads warned, or the cpuset changed
            os.sched_setaffinity(0, {cpu})


def _ranges(cpus: list[int]) -> str:
    """[0, 1, 2, 5] → "0-2,5" (the kernel's cpu list format)."""
    spans: list[list[int]] = []
    for cpu in cpus:
        if spans and cpu == spans[-1][1] + 1:
            spans[-1][1] = cpu
        else:
            spans.append([cpu, cpu])
    return ",".join(f"{a}-{b}" if a != b else f"{a}" for a, b in spans)
