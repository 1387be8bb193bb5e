"""Labelled Secrets (``tollgate.dev/credentials=true``): a rotated key or HMAC secret is republished.

Only Secrets carrying the label are indexed and followed; a provider may name only those, in its
own namespace (:mod:`authz_operator.build`). Any event — new, changed, deleted — rebuilds.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from authz_operator.handlers import common

__all__ = ["changed"]


async def changed(
    *, memo: kopf.Memo, indices: common.Indices, logger: logging.Logger | logging.LoggerAdapter[Any]
) -> None:
    await common.reconcile_all(memo, indices, logger)
