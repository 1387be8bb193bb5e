"""AccessPolicy handlers: any change rebuilds and republishes the whole configuration.

A policy is never published on its own: which namespace owns a host, which providers it may name
and whether policies on one host disagree depend on all of them (:mod:`authz_operator.build`).
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
