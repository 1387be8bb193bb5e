"""One owner for what the operator publishes: build, publish, then write statuses and Events.

Every handler (create, update, resume, delete of any watched object, a change to a labelled
Secret) ends in :meth:`Reconciler.reconcile`. It reads kopf's indices — every object in scope, as
the API last showed them — so whichever object changed, the whole configuration is rebuilt from
the same inputs (:func:`authz_operator.build.build_configuration`), never patched piecemeal.

- **One at a time, coalesced.** Reconciles run under one lock; a call that finds a newer run
  already covered it returns at once. A burst of 50 changes costs a few builds, not 50.
- **Publish, then report.** The ConfigMap and Secret are written first; only then do statuses
  say ``Ready``. A publish that fails raises :class:`kopf.TemporaryError`, so kopf retries the
  handler with backoff and no status claims what is not in force.
- **Objects being deleted** (``deletionTimestamp``) are left out at once: a deleted policy stops
  counting before kopf removes its finalizer.
- **Nothing written twice.** Statuses are compared first (:mod:`authz_operator.status`), the
  ConfigMap and Secret too (:mod:`authz_operator.api`): an operator that restarts writes nothing
  when nothing changed. The last valid version of each object is read back from what was
  published (:func:`authz_operator.build.restore`).
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

import kopf

from authz import configuration, kube
from authz_operator import api, build, status

__all__ = ["Inputs", "Reconciler"]

Inputs = tuple[list[Mapping[str, Any]], build.SecretData]  # the objects in scope, the labelled Secrets
_RETRY_SECONDS = 2.0  # kopf's delay before it retries a handler whose publish failed


class Reconciler:
    def __init__(self, settings: configuration.OperatorSettings, cluster: api.ClusterApi) -> None:
        self._namespace, self._name = settings.publish
        self._delegations = settings.host_delegations()
        self._api = cluster
        self._lock = asyncio.Lock()
        self._requested = 0  # reconciles asked for
        self._covered = 0  # the newest request a finished reconcile saw
        self._in_force: dict[str, build.InForce] | None = None  # None: not read back yet
        # The status last written per object, with the uid and generation it judged: newer than
        # the index may be yet.
        self._written: dict[str, tuple[str, int, dict[str, Any]]] = {}
        self.published: build.Published | None = None

    async def close(self) -> None:
        await self._api.close()

    async def reconcile(
        self, inputs: Callable[[], Inputs], logger: logging.Logger | logging.LoggerAdapter[Any]
    ) -> None:
        self._requested += 1
        ticket = self._requested
        async with self._lock:
            if self._covered >= ticket:
                return  # a run that started after this request already included it
            covering = self._requested
            objects, secrets = inputs()
            live = [body for body in objects if not (body.get("metadata") or {}).get("deletionTimestamp")]
            try:
                if self._in_force is None:
                    config, secret = await self._api.read_published(self._namespace, self._name)
                    self._in_force = build.restore(config, secret)
                published = build.build_configuration(
                    live, secrets=secrets, previous=self._in_force, delegations=self._delegations
                )
                if await self._api.publish(self._namespace, self._name, published):
                    logger.info("published revision %s (%d documents)", published.revision, len(published.in_force))
            except Exception as error:  # any failure to talk to the API: retried, nothing reported Ready
                raise kopf.TemporaryError(f"cannot publish: {kube.describe(error)}", delay=_RETRY_SECONDS) from error
            self._in_force = dict(published.in_force)
            self.published = published
            await self._report(live, published, logger)
            self._covered = covering

    async def _report(
        self,
        objects: Iterable[Mapping[str, Any]],
        published: build.Published,
        logger: logging.Logger | logging.LoggerAdapter[Any],
    ) -> None:
        at = status.now()
        for body in objects:
            key = build.object_key(body)
            computed = published.statuses[key]
            metadata = body.get("metadata") or {}
            generation = int(metadata.get("generation") or 0)
            uid = str(metadata.get("uid", ""))
            written = self._written.get(key)
            current = written[2] if written and written[:2] == (uid, generation) else body.get("status")
            wanted = status.status_for(current, computed, generation, at)
            if wanted is None:
                continue
            for condition in status.transitions(current, computed):
                if condition.type == "Accepted" or (condition.status == "True" and condition.type == "Conflicted"):
                    kind = "Normal" if condition.reason == "Accepted" else "Warning"
                    kopf.event(
                        kopf.Body(cast(kopf.RawBody, dict(body))),
                        type=kind,
                        reason=condition.reason,
                        message=condition.message,
                    )
            try:
                await self._api.write_status(body, wanted)
            except Exception as error:  # any failure to reach the API: kopf retries the handler
                if isinstance(error, api.ApiError) and error.status.code == 404:
                    continue  # deleted meanwhile
                raise kopf.TemporaryError(
                    f"cannot write status: {kube.describe(error)}", delay=_RETRY_SECONDS
                ) from error
            self._written[key] = (uid, generation, copy.deepcopy(wanted))
            if wanted["conditions"][0]["status"] == "False":
                logger.warning("%s rejected: %s", key, wanted["conditions"][0]["message"])
