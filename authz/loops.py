"""The event loop ``tollgate serve`` runs on, for each way of running gRPC Checks.

- ``--grpc-engine auto`` (the default): :func:`engine` picks one of the two below.
- ``--grpc-engine aio``: grpc.aio on the event loop. uvloop where it is installed
  (less CPU per Check than asyncio's own loop: docs/performance.md), else asyncio's.
  ``--event-loop``: ``auto`` (uvloop if it can be imported, else asyncio, and the log says which),
  ``uvloop`` (refuse to start without it), ``asyncio``.
- ``--grpc-engine threads``: Checks decided on grpcio's own threads (:mod:`authz.threads`), which
  saves the hand-over of every call from gRPC's threads to the loop (docs/performance.md, "gRPC
  Checks on gRPC's threads"). Tollgate's code is written for one thread (the token cache, the
  audit queue, metrics and detectors have no locks of their own), and :class:`LockedLoop` keeps it
  that way: its thread holds :attr:`LockedLoop.lock` at all times except while it waits for I/O in
  ``select()``; a gRPC thread takes the lock to decide a Check. So Tollgate's code runs on one
  thread at a time, whichever thread that is. uvloop has no hook into its wait, so this loop is
  asyncio's ``SelectorEventLoop``.

Two things the locked loop does for a thread that holds its lock: a callback scheduled from there
(``call_soon``, ``call_at``: a future's result, an event set, a timer) wakes the loop, which may be
waiting in ``select()``; and ``is_running()`` says whether a Check may start at all (between
``run_until_complete`` calls and after ``close()``, nothing would ever finish it).
"""

from __future__ import annotations

import asyncio
import contextvars
import selectors
import threading
from collections.abc import Callable

import grpc

from authz import configuration, receive_first

__all__ = ["CHOICES", "LockedLoop", "engine", "factory", "new_event_loop"]

CHOICES = ("auto", "uvloop", "asyncio")


class _LockingSelector(selectors.DefaultSelector):
    """The system's selector, letting go of the loop's lock only while it waits."""

    def __init__(self, lock: threading.Lock) -> None:
        super().__init__()
        self._lock = lock

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        self._lock.release()
        try:
            return super().select(timeout)
        finally:
            self._lock.acquire()


class _Held:
    """The lock, taken by a thread that then acts as the loop's (:meth:`LockedLoop.held`)."""

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self.here = threading.local()  # .holding: this thread holds the lock through this object

    def __enter__(self) -> None:
        self._lock.acquire()
        self.here.holding = True

    def __exit__(self, *_: object) -> None:
        self.here.holding = False
        self._lock.release()


class LockedLoop(asyncio.SelectorEventLoop):
    """asyncio's loop whose thread holds :attr:`lock` except while waiting for I/O."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._owner: int | None = None  # the thread in run_forever()
        self._held = _Held(self.lock)
        super().__init__(_LockingSelector(self.lock))

    def held(self) -> _Held | threading.Lock:
        """``with loop.held():`` holds :attr:`lock` on a thread other than the loop's, which then acts
        as the loop's thread: asyncio's debug mode (``PYTHONASYNCIODEBUG``) lets it schedule
        callbacks and timers. Outside debug mode nothing checks, so this is the lock itself (entered
        once per Check: no Python-level ``__enter__``)."""
        return self._held if self._debug else self.lock  # type: ignore[attr-defined]  # asyncio's own

    def _check_thread(self) -> None:
        """asyncio's debug-mode check that only the loop's thread touches the loop; a thread in
        :meth:`held` is, for as long as it holds the lock."""
        if not getattr(self._held.here, "holding", False):
            super()._check_thread()  # type: ignore[misc]  # asyncio's own, not in the stubs

    def run_forever(self) -> None:
        with self.lock:
            self._owner = threading.get_ident()
            try:
                super().run_forever()
            finally:
                self._owner = None

    def call_soon[*Ts](
        self, callback: Callable[[*Ts], object], *args: *Ts, context: contextvars.Context | None = None
    ) -> asyncio.Handle:
        if self._owner is None or threading.get_ident() == self._owner:
            return super().call_soon(callback, *args, context=context)
        return self.call_soon_threadsafe(callback, *args, context=context)  # wakes select()

    def call_at[*Ts](
        self, when: float, callback: Callable[[*Ts], object], *args: *Ts, context: contextvars.Context | None = None
    ) -> asyncio.TimerHandle:
        handle = super().call_at(when, callback, *args, context=context)
        if self._owner is not None and threading.get_ident() != self._owner:
            self.call_soon_threadsafe(_nothing)  # select() may be waiting past this timer's time
        return handle


def _nothing() -> None:
    """Scheduled only to wake the loop."""


def new_event_loop() -> LockedLoop:
    """The loop factory for ``asyncio.Runner`` (and for the tests' loops)."""
    return LockedLoop()


def engine(choice: str, event_loop: str, *, http_listen: str = "", durable: bool = False) -> tuple[str, str]:
    """The gRPC engine to run (``aio`` or ``threads``) for ``--grpc-engine choice``, and what the
    log says of it. ``auto`` is ``threads`` (the least CPU per gRPC Check), except:

    - with ``--http-listen``: the HTTP ext_authz edge runs on the same loop, and costs less on
      uvloop, which the threads engine cannot use (docs/performance.md);
    - with durable audit (``--audit-mode sync``, ``durable``): every Check waits for its record,
      holding its gRPC thread meanwhile, and grpc.aio answered 1.6 times as many (unpinned);
    - with ``--event-loop uvloop``: asked for by name, and only ``aio`` runs on it;
    - on a grpcio whose synchronous server :mod:`authz.receive_first` was not written for: the
      threads engine would not run there, and ``aio`` needs nothing private of grpcio.
    """
    if choice != "auto":
        return choice, choice
    if http_listen:
        return "aio", "aio (auto: --http-listen is set, and the HTTP edge costs less on uvloop)"
    if durable:
        return "aio", "aio (auto: --audit-mode sync, where every Check waits for its record)"
    if event_loop == "uvloop":
        return "aio", "aio (auto: --event-loop uvloop)"
    problem = receive_first.problem()
    if problem:
        return "aio", f"aio (auto: the threads engine cannot run on grpcio {grpc.__version__}: {problem})"
    return "threads", "threads (auto)"


def factory(choice: str, engine: str = "aio") -> tuple[Callable[[], asyncio.AbstractEventLoop], str]:
    """The loop factory for ``asyncio.Runner``, and its name for the log. ``engine="threads"``
    needs :class:`LockedLoop` (``choice`` uvloop is refused by the settings' check before this);
    otherwise ``choice=uvloop`` without uvloop is a :class:`~authz.configuration.UsageError`."""
    if engine == "threads":
        return new_event_loop, "asyncio, locked for gRPC's threads"
    if choice == "asyncio":
        return asyncio.new_event_loop, "asyncio"
    try:
        import uvloop  # noqa: PLC0415 - optional: the server runs without it
    except ImportError as error:
        if choice == "uvloop":
            raise configuration.UsageError(f"--event-loop uvloop: uvloop cannot be imported ({error})") from None
        return asyncio.new_event_loop, f"asyncio (uvloop cannot be imported: {error})"
    return uvloop.new_event_loop, f"uvloop {getattr(uvloop, '__version__', '')}".rstrip()
