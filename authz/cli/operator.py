"""``tollgate operator``: run the kopf operator (docs/operations.md) with its flags checked first.

The same operator as ``kopf run -m authz_operator.main``; here every setting is a flag (or its
``TOLLGATE_*`` variable), a bad one is one line and exit status 2, and kopf's own run options —
namespaces, liveness endpoint, peering — are set from them. Kubernetes credentials come from the
pod's service account, or ``KUBECONFIG`` outside a cluster. SIGTERM stops it cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from typing import Any

from authz import configuration

__all__ = ["add_parser"]


def add_parser(commands: Any) -> None:
    command = commands.add_parser(
        "operator",
        help="run the Kubernetes operator (AccessPolicy, IdentityProvider → published configuration)",
        description="Reconcile AccessPolicy and IdentityProvider resources into the ConfigMap and "
        "Secret the data plane follows. Each flag can also be set by the environment variable shown.",
    )
    configuration.add_arguments(command, configuration.OperatorSettings)
    command.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    settings = configuration.from_arguments(configuration.OperatorSettings, args)
    settings.check()
    import authz_operator.main  # noqa: F401, PLC0415
    import kopf  # noqa: PLC0415 - only this command needs kopf (and its handlers, registered on import)

    kopf.configure(log_format=kopf.LogFormat.FULL, verbose=settings.log_level == "DEBUG")
    logging.getLogger().setLevel(settings.log_level)
    asyncio.run(_operate(kopf, settings))
    return 0


async def _operate(kopf: Any, settings: configuration.OperatorSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    liveness = f"http://{settings.liveness_listen}/healthz" if settings.liveness_listen else None
    stop_flag: asyncio.Future[None] = loop.create_future()
    operator = asyncio.create_task(
        kopf.operator(
            clusterwide=not settings.watch_namespaces,
            namespaces=settings.watch_namespaces,
            liveness_endpoint=liveness,
            peering_name=settings.peering or None,
            priority=settings.peering_priority,
            standalone=not settings.peering,
            memo=kopf.Memo(settings=settings),
            stop_flag=stop_flag,
        )
    )
    waiter = asyncio.create_task(stop.wait())
    await asyncio.wait([operator, waiter], return_when=asyncio.FIRST_COMPLETED)
    if not stop_flag.done():
        stop_flag.set_result(None)
    waiter.cancel()
    await operator
