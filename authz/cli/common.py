"""What every ``tollgate`` command shares: the argument parser's manners and the error line."""

from __future__ import annotations

import argparse
import importlib.metadata
import signal
import sys
import threading
from typing import Any, NoReturn

from authz import configuration

__all__ = ["Parser", "fail", "listen_on", "number", "stop_event", "version"]


def version() -> str:
    try:
        return importlib.metadata.version("tollgate")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def fail(message: str, code: int = 2) -> int:
    """Print ``tollgate: message`` on standard error; return ``code`` (2: usage, 1: "no")."""
    print(f"tollgate: {message}", file=sys.stderr)
    return code


class _Help(argparse.HelpFormatter):
    """Every option's help ends with its default, where it has one worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        shown = default not in (None, False, [], argparse.SUPPRESS) and action.option_strings
        if shown and "(default" not in text:
            text += " (default: %(default)s)"
        return text


class Parser(argparse.ArgumentParser):
    """``argparse`` with one-line errors (exit 2) and defaults in the help."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Help)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def listen_on(flag: str, text: str) -> tuple[str, int]:
    """(host, port) of a ``HOST:PORT`` flag value; :class:`~authz.configuration.UsageError` naming the flag."""
    try:
        configuration.listen_address(text)
    except ValueError as error:
        raise configuration.UsageError(f"{flag} {text!r}: {error}") from None
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def number(flag: str, text: str, minimum: float, maximum: float) -> float:
    """A number from ``minimum`` to ``maximum``; :class:`~authz.configuration.UsageError` naming the flag."""
    try:
        value = float(text)
    except ValueError:
        raise configuration.UsageError(f"{flag} {text!r}: not a number") from None
    if not minimum <= value <= maximum:
        raise configuration.UsageError(f"{flag} {text!r}: must be from {minimum:g} to {maximum:g}")
    return value


def stop_event() -> threading.Event:
    """Set on SIGTERM; a foreground command waits on it (Ctrl-C ends the wait too)."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    return stop
