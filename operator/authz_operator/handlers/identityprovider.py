"""IdentityProvider handlers: any change rebuilds and republishes the whole configuration.

A provider is never published on its own: the policies that name it, and the labelled Secret it
reads its keys from, decide with it what is in force (:mod:`authz_operator.build`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kopf

from authz_operator import webhook
from authz_operator.handlers import common

__all__ = ["changed", "deleted", "validate"]


async def changed(
    *, memo: kopf.Memo, indices: common.Indices, logger: logging.Logger | logging.LoggerAdapter[Any]
) -> None:
    """Created, updated, or seen again when the operator starts (resume)."""
    await common.reconcile_all(memo, indices, logger)


async def deleted(
    *, memo: kopf.Memo, indices: common.Indices, logger: logging.Logger | logging.LoggerAdapter[Any]
) -> None:
    """Marked for deletion: left out of the configuration before kopf releases its finalizer."""
    await common.reconcile_all(memo, indices, logger)


def validate(*, body: Mapping[str, Any]) -> None:
    """Admission: the data plane's parser and compiler on the new version."""
    webhook.validate(body)
