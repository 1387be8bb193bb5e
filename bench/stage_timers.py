"""Timers around each stage of a Check, installed into a real ``tollgate serve`` process.

Used by :mod:`bench.stages`, which starts the server as
``python -c "import bench.stage_timers as t; t.run()" serve ...``. ``install()`` wraps the stage
functions where the decision path looks them up (module attributes and class methods), so the
server's code is measured unchanged; each wrapper adds a call of its own (a fraction of a µs),
which the totals include. SIGUSR1 starts the measurement over (after a warm-up); at exit the
per-Check means are written as JSON to ``$TOLLGATE_STAGE_TIMES``.
"""

from __future__ import annotations

import atexit
import functools
import gc
import json
import os
import pathlib
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from authz import check_request, cli, ids, response, service
from authz.identity import resolve
from authz.policy import compile as compiled
from authz.policy import evaluate

_clock = time.perf_counter_ns
_totals: dict[str, int] = {}
_checks = [0]
_gc_started = [0]


def _timed(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    _totals[name] = 0

    @functools.wraps(function)
    def timed(*args: Any, **kwargs: Any) -> Any:
        started = _clock()
        try:
            return function(*args, **kwargs)
        finally:
            _totals[name] += _clock() - started

    return timed


def _timed_check(function: Callable[..., Any]) -> Callable[..., Any]:
    _totals["whole Check (handler)"] = 0

    @functools.wraps(function)
    async def timed(*args: Any, **kwargs: Any) -> Any:
        started = _clock()
        try:
            return await function(*args, **kwargs)
        finally:
            _totals["whole Check (handler)"] += _clock() - started
            _checks[0] += 1

    return timed


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _gc_started[0] = _clock()
    else:
        _totals["garbage collection"] = _totals.get("garbage collection", 0) + _clock() - _gc_started[0]


def install() -> None:
    """Wrap the stages; the decision path calls them through these names at call time."""
    ids.new_id = _timed("decision id", ids.new_id)
    check_request.from_check_request = _timed("canonical request", check_request.from_check_request)
    compiled.PolicyIndex.lookup = _timed("host lookup", compiled.PolicyIndex.lookup)  # type: ignore[method-assign]
    resolve.IdentityResolver.resolve_now = _timed(  # type: ignore[method-assign]
        "identity (no wait)", resolve.IdentityResolver.resolve_now
    )
    evaluate.evaluate = _timed("policy evaluation", evaluate.evaluate)
    response.encode = _timed("answer bytes", response.encode)
    service.AuthorizationService.check = _timed_check(service.AuthorizationService.check)  # type: ignore[method-assign]
    gc.callbacks.append(_on_gc)
    signal.signal(signal.SIGUSR1, _reset)
    atexit.register(_write)


def _reset(*_: object) -> None:
    for name in _totals:
        _totals[name] = 0
    _checks[0] = 0


def _write() -> None:
    target = os.environ.get("TOLLGATE_STAGE_TIMES")
    if target and _checks[0]:
        means = {name: total / _checks[0] / 1000 for name, total in _totals.items()}
        pathlib.Path(target).write_text(json.dumps({"checks": _checks[0], "mean_us": means}))


def run() -> None:
    install()
    sys.exit(cli.main(sys.argv[1:]))
