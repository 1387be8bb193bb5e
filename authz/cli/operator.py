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
    """Run kopf until it stops. kopf handles SIGTERM and SIGINT itself (it stops its watchers, runs
    the cleanup handlers, then exits); a task of ours waiting beside it would only be one kopf
    waits 5 seconds for before it cancels it."""
    liveness = f"http://{settings.liveness_listen}/healthz" if settings.liveness_listen else None
    await kopf.operator(
        clusterwide=not settings.watch_namespaces,
        namespaces=settings.watch_namespaces,
        liveness_endpoint=liveness,
        peering_name=settings.peering or None,
        priority=settings.peering_priority,
        standalone=not settings.peering,
        memo=kopf.Memo(settings=settings),
    )
