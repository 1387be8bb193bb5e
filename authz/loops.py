"""The event loop ``tollgate serve`` runs on: uvloop where it is installed, else asyncio's own.

uvloop (libuv under asyncio's interface) costs less CPU per Check than asyncio's default loop:
docs/performance.md has the same-run measurement. Everything on the loop (grpc.aio, aiohttp, the
Kubernetes client, the audit writer) uses only asyncio's public interface, which uvloop implements.
``--event-loop``: ``auto`` (uvloop if it can be imported, else asyncio, and the log says which),
``uvloop`` (refuse to start without it), ``asyncio``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from authz import configuration

__all__ = ["CHOICES", "factory"]

CHOICES = ("auto", "uvloop", "asyncio")


def factory(choice: str) -> tuple[Callable[[], asyncio.AbstractEventLoop], str]:
    """The loop factory for ``asyncio.Runner``, and its name for the log. ``choice=uvloop`` without
    uvloop is a :class:`~authz.configuration.UsageError`."""
    if choice == "asyncio":
        return asyncio.new_event_loop, "asyncio"
    try:
        import uvloop  # noqa: PLC0415 - optional: the server runs without it
    except ImportError as error:
        if choice == "uvloop":
            raise configuration.UsageError(f"--event-loop uvloop: uvloop cannot be imported ({error})") from None
        return asyncio.new_event_loop, f"asyncio (uvloop cannot be imported: {error})"
    return uvloop.new_event_loop, f"uvloop {getattr(uvloop, '__version__', '')}".rstrip()
