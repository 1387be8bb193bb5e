"""A Kubernetes API server on loopback, for the operator's tests, the end-to-end tests and the bench.

:class:`ApiServer` is ``kmock``'s ``KubernetesEmulator`` (a real HTTP API that kopf and lightkube
talk to unchanged) with the parts of a real API server the operator relies on:

- every write assigns an increasing ``metadata.resourceVersion``; creation assigns ``uid``,
  ``creationTimestamp`` and ``generation``, and a change outside ``metadata``/``status`` bumps
  ``generation``;
- a watch started at a resourceVersion streams only what came after it (no replay of every object
  as ADDED), and answers 410 Gone when that version is older than the history kept, so clients
  relist as they do against a real cluster;
- the ``status`` subresource: a patch to ``…/status`` changes only ``status``, a patch to the
  object never does;
- JSON merge patches (RFC 7386) and JSON patches (RFC 6902); a patch naming a stale
  ``metadata.resourceVersion`` gets 409 Conflict; a create of an existing name 409 AlreadyExists;
  an object without a name 422 Invalid;
- deletion with finalizers marks ``deletionTimestamp``; the object goes when the last finalizer is
  removed;
- ``generateName``; the core group's discovery says ``v1`` (kmock says ``/v1``);
- label and field selectors (equality) on lists and watches.

A state change happens in the fallback handlers, so a fault injected with kmock's DSL
(``server['patch'][:1] << 503``) really fails the request: nothing is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import functools
import gzip
import importlib.resources
import itertools
import json
import pathlib
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, cast

import aiohttp.web
import kmock
import yaml

__all__ = ["ApiServer", "ApiServerThread", "kubeconfig", "running"]

_HISTORY = 2000  # watch events kept for resuming; older versions answer 410 Gone
_CRDS = {
    "tollgate.dev/v1alpha1/accesspolicies": ("AccessPolicy", "accesspolicy", {"ap"}),
    "tollgate.dev/v1alpha1/identityproviders": ("IdentityProvider", "identityprovider", {"idp"}),
}

Key = tuple[kmock.resource, str | None, str]


class ApiServer(kmock.KubernetesEmulator):
    """See the module docstring. Use as ``async with ApiServer() as server: server.url``."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        # kmock's bundled built-ins (v1 namespaces, configmaps, secrets, events, …), read as its
        # load_bundled() does but without the importlib.resources call Python deprecates.
        bundled = importlib.resources.files("kmock._internal").joinpath("resources.json.gz").read_bytes()
        self.resources.load_data(gzip.decompress(bundled))
        for name, (kind, singular, short) in _CRDS.items():
            info = self.resources[name]
            info.kind, info.singular, info.namespaced, info.shortnames = kind, singular, True, short
            info.categories = {"tollgate"}
            info.verbs = {"create", "delete", "get", "list", "patch", "update", "watch"}
            info.subresources = {"status"}
        for name in ("kopf.dev/v1/kopfpeerings", "kopf.dev/v1/clusterkopfpeerings"):
            info = self.resources[name]
            info.kind = "KopfPeering" if "cluster" not in name else "ClusterKopfPeering"
            info.namespaced = "cluster" not in name
            info.verbs = {"create", "delete", "get", "list", "patch", "update", "watch"}
        self.store: dict[Key, dict[str, Any]] = {}
        self._builtin = len(self._payloads)  # the reactions above; more means a test added its own
        self._direct: dict[Any, Callable[[kmock.Request], Any]] = {
            kmock.action.LIST: self._serve_list,
            kmock.action.WATCH: self._serve_watch,
            kmock.action.FETCH: self._serve_fetch,
            kmock.action.CREATE: self._serve_create,
            kmock.action.UPDATE: self._serve_update,
            kmock.action.DELETE: self._serve_delete,
        }
        self._version = itertools.count(1)
        self._current = 0
        self._history: list[tuple[int, kmock.resource, dict[str, Any]]] = []
        self._changed: asyncio.Condition | None = None
        self._epoch = 0  # drop_watches() ends every watch open before it
        self._closing = False  # stopping: every watch ends at once, new ones included

    def declare(self, name: str, kind: str, *, namespaced: bool = True) -> None:
        """Serve one more resource (``group/version/plural``), as a cluster whose CRDs include it
        (e.g. the Prometheus Operator's ``monitoring.coreos.com/v1/servicemonitors``)."""
        info = self.resources[name]
        info.kind, info.singular, info.namespaced = kind, kind.lower(), namespaced
        info.verbs = {"create", "delete", "get", "list", "patch", "update", "watch"}

    # -- the API ------------------------------------------------------------------------------

    async def _handle(self, request: kmock.Request) -> Any:
        # Skip KubernetesEmulator's own bookkeeping (it writes before user reactions run, and
        # keeps no versions): state changes here happen in the fallbacks below. kmock matches a
        # request against its reactions by filtering every request served so far, so the cost of
        # each request grows with the run; while a test has added no reaction of its own, the
        # Kubernetes actions go straight to the fallbacks (a long run stays as fast as a short one).
        direct = self._direct.get(request.action) if len(self._payloads) == self._builtin else None
        if direct is None or request.resource is None or not request.resource.plural:  # discovery: the DSL's
            return await kmock.RawHandler._handle(self, request)
        answer = direct(request)
        if request.action == kmock.action.WATCH:
            return await self._stream(request, answer)
        payload = await answer
        status = 201 if request.action == kmock.action.CREATE else 200
        return aiohttp.web.Response(
            body=json.dumps(payload).encode(), status=status, headers={"Content-Type": "application/json"}
        )

    async def _stream(self, request: kmock.Request, events: AsyncIterator[Any]) -> aiohttp.web.StreamResponse:
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        assert request._raw_request is not None  # a request that came over HTTP
        await response.prepare(request._raw_request)
        async for event in events:
            if event != b"":
                await response.write(json.dumps(event).encode() + b"\n")
        await response.write_eof()
        return response

    async def _serve_server_version(self, request: kmock.Request) -> kmock.Payload:
        # A supported Kubernetes release (kmock answers 1.26, which Helm charts may refuse).
        return {"major": "1", "minor": "31", "gitVersion": "v1.31.0", "platform": "linux/amd64"}

    async def _serve_version(self, request: kmock.Request) -> kmock.Payload:
        # kmock names the core group's version "/v1"; a real API server (and client-go, which
        # Helm uses to map kinds to resources) says "v1".
        listing = cast(dict[str, Any], await super()._serve_version(request))
        listing["groupVersion"] = str(listing["groupVersion"]).lstrip("/")
        return listing

    async def _serve_list(self, request: kmock.Request) -> kmock.Payload:
        self._known(request)
        items = [
            copy.deepcopy(obj) for key, obj in sorted(self.store.items(), key=_order) if _selected(request, key, obj)
        ]
        kind = self.resources[request.resource].kind if request.resource else None
        return {"kind": f"{kind}List", "metadata": {"resourceVersion": str(self._current)}, "items": items}

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[kmock.Payload]:
        self._known(request)
        yield b""
        since = request.params.get("resourceVersion", "")
        timeout = float(request.params.get("timeoutSeconds") or 0) or None
        if since in ("", "0"):
            position = self._current
            for key, obj in sorted(self.store.items(), key=_order):
                if _selected(request, key, obj):
                    yield {"type": "ADDED", "object": copy.deepcopy(obj)}
        else:
            position = int(since)
            if self._history and position < self._history[0][0] - 1:
                yield {"type": "ERROR", "object": _status(410, "Expired", f"too old resource version: {since}")}
                return
        changed = self._condition()
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        epoch = self._epoch
        while True:
            if self._epoch != epoch or self._closing:
                return  # dropped (drop_watches), or the server is stopping: the client must resume
            for version, resource, event in list(self._history):
                if version <= position:
                    continue
                position = version  # seen, whatever its resource: the wait below needs a newer one
                if resource == request.resource:
                    obj = event["object"]
                    metadata = obj.get("metadata", {})
                    if _selected(request, (resource, metadata.get("namespace"), metadata.get("name")), obj):
                        yield copy.deepcopy(event)
            remaining = None if deadline is None else deadline - asyncio.get_running_loop().time()
            if remaining is not None and remaining <= 0:
                return
            async with changed:
                try:
                    await asyncio.wait_for(changed.wait_for(functools.partial(self._wake, position, epoch)), remaining)
                except TimeoutError:
                    return

    async def _serve_fetch(self, request: kmock.Request) -> kmock.Payload:
        key = self._key(request)
        if key not in self.store:
            raise _error(404, "NotFound", f"{request.resource} {request.name!r} not found")
        return copy.deepcopy(self.store[key])

    async def _serve_create(self, request: kmock.Request) -> kmock.Payload:
        self._known(request)
        assert request.resource is not None
        body: dict[str, Any] = copy.deepcopy(dict(request.data)) if isinstance(request.data, Mapping) else {}
        metadata = body.get("metadata") or {}
        if metadata.get("generateName") and not metadata.get("name"):
            metadata["name"] = f"{metadata['generateName']}{uuid.uuid4().hex[:5]}"
        if not body or not metadata.get("name"):
            raise _error(422, "Invalid", "metadata.name: Required value")
        namespace = request.namespace or metadata.get("namespace")
        key: Key = (request.resource, namespace if self._namespaced(request) else None, str(metadata["name"]))
        if key in self.store:
            raise _error(409, "AlreadyExists", f"{request.resource.plural} {metadata['name']!r} already exists")
        metadata.update(
            uid=str(uuid.uuid4()),
            creationTimestamp=_now(),
            generation=1,
        )
        if key[1] is not None:
            metadata["namespace"] = key[1]
        body["metadata"] = metadata
        if self._has_status(request):
            body.pop("status", None)
        await self._write(key, body, "ADDED")
        return copy.deepcopy(body)

    async def _serve_update(self, request: kmock.Request) -> kmock.Payload:
        key = self._key(request)
        if key not in self.store:
            raise _error(404, "NotFound", f"{request.resource} {request.name!r} not found")
        old = self.store[key]
        content = request.headers.get("Content-Type", "").split(";")[0].strip()
        try:
            if content == "application/json-patch+json":
                new = _json_patch(old, request.data)
            else:  # merge-patch+json; a strategic merge patch of maps is the same
                if not isinstance(request.data, Mapping):
                    raise _error(400, "BadRequest", "the patch must be a JSON object")
                wanted = (request.data.get("metadata") or {}).get("resourceVersion")
                if wanted is not None and wanted != old["metadata"].get("resourceVersion"):
                    raise _error(409, "Conflict", "the object has been modified; apply your changes to the latest")
                new = _merge(old, request.data)
        except (KeyError, IndexError, TypeError, ValueError) as error:
            raise _error(422, "Invalid", f"cannot apply the patch: {error}") from error
        if request.subresource == "status":
            new = {**old, "status": new.get("status")}
        elif self._has_status(request):
            new["status"] = old.get("status")
        new = {k: v for k, v in new.items() if v is not None}
        for field in ("uid", "creationTimestamp", "name", "namespace", "deletionTimestamp"):
            if field in old["metadata"]:
                new["metadata"][field] = old["metadata"][field]
        changed_spec = {k: v for k, v in new.items() if k not in ("metadata", "status")} != {
            k: v for k, v in old.items() if k not in ("metadata", "status")
        }
        new["metadata"]["generation"] = old["metadata"].get("generation", 1) + int(changed_spec)
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            await self._write(key, new, "DELETED")
        else:
            await self._write(key, new, "MODIFIED")
        return copy.deepcopy(new)

    async def _serve_delete(self, request: kmock.Request) -> kmock.Payload:
        key = self._key(request)
        if key not in self.store:
            raise _error(404, "NotFound", f"{request.resource} {request.name!r} not found")
        obj = copy.deepcopy(self.store[key])
        if obj["metadata"].get("finalizers"):
            if not obj["metadata"].get("deletionTimestamp"):
                obj["metadata"]["deletionTimestamp"] = _now()
                await self._write(key, obj, "MODIFIED")
        else:
            await self._write(key, obj, "DELETED")
        return obj

    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        # A real API server answers errors as a v1 Status with exactly this content type (clients
        # such as lightkube compare it verbatim before they parse the Status).
        if isinstance(exc, kmock.KubernetesError):
            status = _status(exc.status, exc.reason or "InternalError", exc.message or "")
        else:
            status = _status(500, "InternalError", repr(exc))
        return aiohttp.web.Response(
            body=json.dumps(status).encode(), status=status["code"], headers={"Content-Type": "application/json"}
        )

    # -- for tests ----------------------------------------------------------------------------

    async def drop_watches(self, *, closing: bool = False) -> None:
        """End every open watch stream, as an API server restart or a load balancer would
        (``closing``: and every one opened from now on)."""
        self._epoch += 1
        self._closing = self._closing or closing
        changed = self._condition()
        async with changed:
            changed.notify_all()

    def get(self, resource: str, namespace: str | None, name: str) -> dict[str, Any] | None:  # type: ignore[override]
        """The stored object (``resource`` like ``"v1/configmaps"``), or None."""
        return self.store.get((kmock.resource(resource), namespace, name))

    # -- internals ----------------------------------------------------------------------------

    async def _write(self, key: Key, obj: dict[str, Any], kind: str) -> None:
        self._current = next(self._version)
        obj["metadata"]["resourceVersion"] = str(self._current)
        if kind == "DELETED":
            self.store.pop(key, None)
        else:
            self.store[key] = obj
        self._history.append((self._current, key[0], {"type": kind, "object": copy.deepcopy(obj)}))
        del self._history[:-_HISTORY]
        changed = self._condition()
        async with changed:
            changed.notify_all()

    def _wake(self, version: int, epoch: int) -> bool:
        return self._current > version or self._epoch != epoch or self._closing

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    def _known(self, request: kmock.Request) -> None:
        if request.resource is None or request.resource not in list(self.resources):
            raise _error(404, "NotFound", f"the server could not find the requested resource {request.resource}")

    def _namespaced(self, request: kmock.Request) -> bool:
        return bool(self.resources[request.resource].namespaced) if request.resource else False

    def _has_status(self, request: kmock.Request) -> bool:
        return request.resource is not None and "status" in self.resources[request.resource].subresources

    def _key(self, request: kmock.Request) -> Key:
        self._known(request)
        assert request.resource is not None and request.name is not None
        return (request.resource, request.namespace if self._namespaced(request) else None, request.name)


@contextlib.asynccontextmanager
async def running() -> AsyncIterator[ApiServer]:
    """An :class:`ApiServer` listening on a free loopback port (``server.url``)."""
    async with ApiServer() as server, kmock.Server(server, host="127.0.0.1"):
        yield server


class ApiServerThread:
    """An :class:`ApiServer` on its own event loop in a thread, for synchronous tests and scripts
    (the operator and the data plane run as subprocesses and talk to it over HTTP)."""

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self.server: ApiServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ApiServerThread:
        ready = threading.Event()
        failure: list[BaseException] = []

        async def main() -> None:
            self._stop = asyncio.Event()
            try:
                async with ApiServer() as server, kmock.Server(server, host="127.0.0.1", port=self.port or None):
                    self.server, self.port = server, int(server.url.port or 0)
                    ready.set()
                    await self._stop.wait()
            except BaseException as error:
                failure.append(error)
                ready.set()

        def run() -> None:
            self._loop = loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            loop.run_until_complete(main())
            pending = asyncio.all_tasks(loop)  # connection handlers the server left running
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, name="apiserver", daemon=True)
        self._thread.start()
        ready.wait(15)
        if failure:
            raise failure[0]
        return self

    def call(self, fn: Callable[[ApiServer], Any]) -> Any:
        """Run ``fn(server)`` on the server's loop (the DSL and the store are not thread-safe)."""
        assert self._loop is not None and self.server is not None
        server = self.server

        async def apply() -> Any:
            return fn(server)

        return asyncio.run_coroutine_threadsafe(apply(), self._loop).result(10)

    def get(self, resource: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        found = self.call(lambda server: copy.deepcopy(server.get(resource, namespace, name)))
        return cast(dict[str, Any] | None, found)

    def drop_watches(self) -> None:
        assert self._loop is not None and self.server is not None
        asyncio.run_coroutine_threadsafe(self.server.drop_watches(), self._loop).result(10)

    def requests(self) -> list[kmock.Request]:
        return list(self.call(list))

    def stop(self) -> None:
        """Stop serving: open watches end first (as an API server's restart ends them)."""
        if self._loop is not None and self._stop is not None and self._thread is not None:
            if self._thread.is_alive():
                assert self.server is not None
                asyncio.run_coroutine_threadsafe(self.server.drop_watches(closing=True), self._loop).result(10)
                self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(15)

    def write_kubeconfig(self, path: pathlib.Path, namespace: str = "default") -> pathlib.Path:
        path.write_text(yaml.safe_dump(kubeconfig(self.url, namespace)))
        return path


def kubeconfig(url: str, namespace: str = "default") -> dict[str, Any]:
    """A kubeconfig document for a plain-HTTP server at ``url`` (kopf and lightkube read it)."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emulator", "cluster": {"server": url}}],
        "users": [{"name": "tester", "user": {"token": "emulator"}}],
        "contexts": [
            {"name": "emulator", "context": {"cluster": "emulator", "user": "tester", "namespace": namespace}}
        ],
        "current-context": "emulator",
    }


def _order(item: tuple[Key, dict[str, Any]]) -> tuple[str, str]:
    (_, namespace, name), _ = item
    return (namespace or "", name)


def _selected(request: kmock.Request, key: Key, obj: Mapping[str, Any]) -> bool:
    resource, namespace, name = key
    if resource != request.resource or (request.namespace is not None and namespace != request.namespace):
        return False
    if request.name is not None and name != request.name:
        return False
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in filter(None, request.params.get("labelSelector", "").split(",")):
        wanted, _, value = term.partition("=")
        if labels.get(wanted.rstrip("=!")) != value.lstrip("=") if value else wanted not in labels:
            return False
    for term in filter(None, request.params.get("fieldSelector", "").split(",")):
        field, _, value = term.partition("=")
        actual = {"metadata.name": name, "metadata.namespace": namespace}.get(field)
        if actual != value.lstrip("="):
            return False
    return True


def _merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for name, value in patch.items():
        if value is None:
            result.pop(name, None)
        else:
            result[name] = _merge(result.get(name), value)
    return result


def _json_patch(target: dict[str, Any], operations: Any) -> dict[str, Any]:
    """RFC 6902 JSON patch: add, remove, replace and test (what clients send)."""
    document = copy.deepcopy(target)
    for operation in operations:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in operation["path"].split("/")[1:]]
        parent = document
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent[part]
        last, op = parts[-1], operation["op"]
        if op == "test":
            current = parent[int(last)] if isinstance(parent, list) else parent[last]
            if current != operation["value"]:
                raise ValueError(f"test failed at {operation['path']}")
        elif op == "remove":
            del parent[int(last) if isinstance(parent, list) else last]
        elif op in ("add", "replace"):
            if isinstance(parent, list):
                index = len(parent) if last == "-" else int(last)
                if op == "add":
                    parent.insert(index, operation["value"])
                else:
                    parent[index] = operation["value"]
            else:
                parent[last] = operation["value"]
        else:
            raise ValueError(f"unsupported op {op!r}")
    return document


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
    }


def _error(code: int, reason: str, message: str) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=code, reason=reason, message=message, details={})


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
