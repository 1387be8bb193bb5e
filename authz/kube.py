"""Follow the published configuration through the Kubernetes API: ``--config kubernetes:NS/NAME``.

The operator publishes a ConfigMap (policy and provider documents) and a Secret (the files those
documents name: API key hashes, HMAC secrets) of one name, both annotated with the same
``tollgate.dev/revision``. :class:`ConfigSource` reads both, watches both, and installs a new
snapshot when they agree — within a fraction of a second of the operator's write, where a
mounted ConfigMap waits for the kubelet's sync (a minute or more).

- **Whole or nothing.** The pair is parsed and compiled by the loader (the same code as files),
  with the Secret's values held in memory only; an invalid pair, or one whose revisions differ
  (the operator writes the Secret first), never replaces what is in force. The swap is the
  runtime's atomic :meth:`~authz.server.Runtime.install`: a Check in flight finishes on the
  snapshot it started with.
- **Nothing published yet** (no ConfigMap) is an empty configuration: hosts no policy covers get
  ``--default-action`` (Deny by default).
- **The API away.** A dropped or failing watch is resumed from the last resourceVersion it saw,
  or re-read when that is too old (410); a watch silent for longer than the server was asked to
  keep it open is started afresh after a re-read (it may be a dead connection); retries back off
  from 0.5 s to 10 s. Meanwhile the last good configuration stays in force.

lightkube's async client is used (as by the operator): typed models, watches that resume by
resourceVersion, one dependency (httpx) and credentials from the service account or KUBECONFIG.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import ConfigMap, Secret

from authz import loader
from authz.errors import ConfigError, ConfigErrors

__all__ = ["REVISION_ANNOTATION", "ConfigSource", "describe"]

REVISION_ANNOTATION = "tollgate.dev/revision"
_BACKOFF_FIRST, _BACKOFF_MAX = 0.5, 10.0
# The API server ends each watch after _WATCH_SECONDS and the client resumes it. A watch silent
# for _SILENT_SECONDS may be quiet or may be a dead connection (a partition, a proxy that dropped
# it without a word) — nothing tells them apart, so it is started afresh after a re-read: a
# change is never missed for longer than that.
_WATCH_SECONDS = 30
_SILENT_SECONDS = _WATCH_SECONDS + 15

_log = logging.getLogger(__name__)


@dataclasses.dataclass(slots=True)
class _Held:
    """The newest version of one object the API showed (None: it does not exist)."""

    data: dict[str, str] | None = None
    revision: str = ""
    resource_version: str = ""


class ConfigSource:
    """The published ConfigMap and Secret ``namespace/name``, followed through the API."""

    def __init__(self, namespace: str, name: str, client: AsyncClient | None = None) -> None:
        self.namespace, self.name = namespace, name
        self._client = client
        self._held = {ConfigMap: _Held(), Secret: _Held()}
        self._changed = asyncio.Event()
        self.where = f"kubernetes:{namespace}/{name}"

    def _api(self) -> AsyncClient:
        if self._client is None:
            self._client = AsyncClient()
        return self._client

    async def first(self) -> loader.Snapshot:
        """The configuration now; retries until the API answers and the pair agrees
        (:class:`ConfigErrors` if what is published is invalid, as for a file)."""
        delay = _BACKOFF_FIRST
        while True:
            try:
                for kind in (ConfigMap, Secret):
                    await self._read(kind)
            except Exception as error:  # any failure to reach the API (lightkube raises several kinds)
                _log.warning("cannot read %s yet (%s); retrying in %.1fs", self.where, describe(error), delay)
            else:
                snapshot = self.snapshot()
                if snapshot is not None:
                    return snapshot
                _log.info("%s: the ConfigMap and Secret revisions differ (being written); reading again", self.where)
            await asyncio.sleep(delay)
            delay = min(delay * 2, _BACKOFF_MAX)

    async def follow(
        self,
        install: Callable[[loader.Snapshot], None],
        current: Callable[[], str],
        rejected: Callable[[], None] = lambda: None,
    ) -> None:
        """Watch both objects until cancelled; ``install`` each new valid snapshot whose revision
        differs from ``current()``; call ``rejected`` for each invalid one (kept out)."""
        watchers = [asyncio.create_task(self._watch(kind)) for kind in (ConfigMap, Secret)]
        try:
            while True:
                await self._changed.wait()
                self._changed.clear()
                try:
                    snapshot = self.snapshot()
                except ConfigError as error:
                    _log.error("configuration in %s rejected, keeping revision %s:\n%s", self.where, current(), error)
                    rejected()
                    continue
                if snapshot is None or snapshot.revision == current():
                    continue
                install(snapshot)
                _log.info(
                    "configuration revision %s in force: %d policies, %d identity providers",
                    snapshot.revision,
                    len(snapshot.policies),
                    len(snapshot.providers),
                )
        finally:
            for watcher in watchers:
                watcher.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()

    def snapshot(self) -> loader.Snapshot | None:
        """The configuration the two objects hold together; None while their revisions differ.
        Raises :class:`ConfigErrors` naming the ConfigMap key, document and field."""
        config, secret = self._held[ConfigMap], self._held[Secret]
        if config.data is None:
            return loader.build_snapshot([], "unpublished", files={})
        if secret.data is None or secret.revision != config.revision:
            return None
        documents, errors = [], []
        for key, text in sorted(config.data.items()):
            if key.endswith((".yaml", ".yml")) and not key.startswith("."):
                found, problems = loader.parse_documents(f"{self.where} {key}", text.encode())
                documents += found
                errors += problems
        if errors:
            raise ConfigErrors(errors)
        files = {}
        for key, value in secret.data.items():
            try:
                files[key] = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise ConfigErrors([ConfigError(f"Secret key {key!r} is not base64", file=self.where)]) from None
        return loader.build_snapshot(documents, config.revision or "unannotated", files=files)

    async def _read(self, kind: Any) -> None:
        try:
            found = await self._api().get(kind, self.name, namespace=self.namespace)
        except ApiError as error:
            if error.status.code != 404:
                raise
            self._held[kind] = _Held()
        else:
            self._hold(kind, found)
        self._changed.set()

    def _hold(self, kind: Any, found: Any) -> None:
        metadata = found.metadata
        self._held[kind] = _Held(
            data=dict(found.data or {}),
            revision=str((metadata.annotations or {}).get(REVISION_ANNOTATION, "")),
            resource_version=str(metadata.resourceVersion or ""),
        )

    async def _watch(self, kind: Any) -> None:
        """Follow one object: resume from the last resourceVersion; re-read on 410 or an error."""
        delay = _BACKOFF_FIRST
        while True:
            try:
                since = self._held[kind].resource_version or None
                stream = self._api().watch(
                    kind,
                    namespace=self.namespace,
                    fields={"metadata.name": self.name},
                    resource_version=since,
                    server_timeout=_WATCH_SECONDS,
                )
                events = aiter(stream)
                while True:
                    try:
                        event, found = await asyncio.wait_for(anext(events), _SILENT_SECONDS)
                    except StopAsyncIteration:
                        break
                    if found.metadata.name != self.name:
                        continue
                    if event == "DELETED":
                        self._held[kind] = _Held()
                    else:
                        self._hold(kind, found)
                    self._changed.set()
                    delay = _BACKOFF_FIRST
            except asyncio.CancelledError:
                raise
            except TimeoutError:
                _log.debug("watch of %s silent for %ds: starting afresh", self.where, _SILENT_SECONDS)
                await self._reread(kind)
            except ApiError as error:
                if error.status.code != 410:
                    _log.warning("watch of %s failed (%s); retrying in %.1fs", self.where, describe(error), delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, _BACKOFF_MAX)
                await self._reread(kind)
            except Exception as error:  # a dropped connection, a proxy's error page, ...
                _log.warning("watch of %s lost (%s); retrying in %.1fs", self.where, describe(error), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _BACKOFF_MAX)
                await self._reread(kind)

    async def _reread(self, kind: Any) -> None:
        try:
            await self._read(kind)
        except Exception as error:
            _log.warning("cannot read %s (%s)", self.where, describe(error))


def describe(error: BaseException) -> str:
    """One line for a failed API call: the API's own Status when there is one."""
    if isinstance(error, ApiError):
        return f"{error.status.code} {error.status.reason}: {error.status.message}"
    if isinstance(error, KeyError) and error.__context__ is not None:
        return describe(error.__context__)  # lightkube, on an error answer without a Content-Type
    return f"{type(error).__name__}: {error}"
