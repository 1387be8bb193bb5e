"""What every handler shares: the index entries kopf keeps, and the inputs of a reconcile.

kopf keeps three indices (:mod:`authz_operator.main`): every ``AccessPolicy`` and
``IdentityProvider`` in scope, and every Secret labelled ``tollgate.dev/credentials=true``. A
reconcile reads all three when it runs, so it always builds from the newest state the API showed.
"""

from __future__ import annotations

import base64
import binascii
import copy
import dataclasses
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import kopf

from authz_operator import build, reconcile

__all__ = ["Indices", "index_object", "index_secret", "reconcile_all"]

ObjectIndex = kopf.Index[str, dict[str, Any]]
SecretIndex = kopf.Index[tuple[str, str], dict[str, bytes]]


@dataclasses.dataclass(frozen=True, slots=True)
class Indices:
    """kopf's three indices, live: read when a reconcile runs, not when it was asked for."""

    policies: ObjectIndex
    providers: ObjectIndex
    secrets: SecretIndex

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> Indices:
        """From the keyword arguments kopf passes every handler (one per index, by its id)."""
        return cls(kwargs["policies"], kwargs["providers"], kwargs["secrets"])

    def inputs(self) -> reconcile.Inputs:
        objects: list[Mapping[str, Any]] = [
            body for index in (self.policies, self.providers) for body in _values(index)
        ]
        secrets: dict[tuple[str, str], Mapping[str, bytes]] = {
            key: next(iter(store)) for key, store in self.secrets.items() if store
        }
        return objects, secrets


def index_object(body: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """One custom resource, as a plain copy (the body kopf passes is a live view)."""
    plain = {key: copy.deepcopy(body.get(key)) for key in ("apiVersion", "kind", "metadata", "spec", "status")}
    return {build.object_key(plain): plain}


def index_secret(body: Mapping[str, Any]) -> dict[tuple[str, str], dict[str, bytes]]:
    """A labelled Secret's decoded data (a value that is not base64 is left out, as the API never sends one)."""
    metadata = body.get("metadata") or {}
    data = {}
    for key, value in (body.get("data") or {}).items():
        try:
            data[str(key)] = base64.b64decode(str(value), validate=True)
        except (binascii.Error, ValueError):
            continue
    return {(str(metadata.get("namespace")), str(metadata.get("name"))): data}


async def reconcile_all(memo: kopf.Memo, indices: Indices, logger: logging.Logger | logging.LoggerAdapter[Any]) -> None:
    reconciler: reconcile.Reconciler = memo["reconciler"]
    await reconciler.reconcile(indices.inputs, logger)


def _values(index: ObjectIndex) -> Iterable[dict[str, Any]]:
    for store in index.values():
        yield from store
