"""Operator start and stop: kopf's settings, the webhook, and the one :class:`Reconciler`.

``tollgate operator`` passes its :class:`~authz.configuration.OperatorSettings` in the memo; under
``kopf run -m authz_operator.main`` they come from the ``TOLLGATE_*`` variables (a bad value stops
the start with one line naming it).
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

import kopf

from authz import configuration, kube
from authz.audit import keys
from authz_operator import api, reconcile, webhook

__all__ = ["FINALIZER", "cleanup", "configure"]

FINALIZER = "tollgate.dev/finalizer"


async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger | Any) -> None:
    ours: configuration.OperatorSettings = memo.get("settings") or _from_environment()
    memo["settings"] = ours
    # Our own state on the objects: the finalizer, and kopf's bookkeeping in annotations under
    # our prefix (status is ours alone: conditions, revision).
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="tollgate.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="tollgate.dev")
    # kopf's own Events only for problems; ours (Accepted, rejected, conflicts) are posted explicitly.
    settings.posting.level = logging.WARNING
    # Ask the API server to end each watch after 5 minutes, and give up on a silent one after 6:
    # a half-open connection is noticed, and kopf resumes from the last resourceVersion.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 360
    # A watch or request that cannot connect fails after 10 s and is retried after 1 s, growing.
    settings.watching.connect_timeout = 10
    settings.watching.reconnect_backoff = 1.0
    # Any other API request (status patches, publishing) gives up after 30 s; kopf retries the handler.
    settings.networking.request_timeout = 30
    # Events for one object arriving within 0.1 s are handled as one (kopf's batching window).
    settings.batching.batch_window = 0.1
    # A handler that fails is retried with kopf's backoff; never more often than every second.
    settings.execution.max_workers = 4
    settings.admission.server = webhook.server(ours)
    settings.admission.managed = ours.webhook_configuration or None
    # Peering (several replicas, one active) is set where kopf is started: by `tollgate operator`
    # from --peering and --priority, or by kopf run's own --peering/--standalone/--priority.
    cluster = api.ClusterApi()
    memo["reconciler"] = reconcile.Reconciler(ours, cluster)
    if ours.audit_keys_secret:
        await _audit_keys(cluster, ours, logger)
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # lightkube's client logs every request at INFO
    logger.info(
        "publishing to %s/%s, watching %s",
        *ours.publish,
        ", ".join(ours.watch_namespaces) or "all namespaces",
    )


async def _audit_keys(cluster: api.ClusterApi, ours: configuration.OperatorSettings, logger: Any) -> None:
    """The data plane's audit keys, made once (the chart names the Secret when the user did not):
    never replaced, since a new signing key would split the evidence from what auditors verify."""
    namespace = ours.publish[0]
    name = f"tollgate.dev/audit/{namespace}/{ours.audit_keys_secret}"
    try:
        created = await cluster.create_secret_once(namespace, ours.audit_keys_secret, keys.new_key_set(name))
    except Exception as error:  # the API away at start: kopf retries the startup handler
        raise kopf.TemporaryError(f"cannot create the audit keys Secret: {kube.describe(error)}", delay=2) from error
    if created:
        logger.info(
            "created the audit keys Secret %s/%s (auditors: its verifier.key)", namespace, ours.audit_keys_secret
        )


async def cleanup(memo: kopf.Memo) -> None:
    reconciler: reconcile.Reconciler | None = memo.get("reconciler")
    if reconciler is not None:
        await reconciler.close()


def _from_environment() -> configuration.OperatorSettings:
    try:
        settings = configuration.from_arguments(configuration.OperatorSettings, argparse.Namespace())
        settings.check()
    except configuration.UsageError as error:
        raise kopf.PermanentError(str(error)) from None
    return settings
