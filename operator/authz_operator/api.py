"""The operator's writes to the Kubernetes API: the published ConfigMap and Secret, and statuses.

The transport edge of the operator (kopf does the watching; this module the writing), on
lightkube's async client — typed models for the built-in kinds, generic ones for ours, and the
same client the data plane's Kubernetes source uses (:mod:`authz.kube`).

Every write is a JSON merge patch carrying the ``resourceVersion`` it was computed from, so a
concurrent writer makes it fail with 409 instead of being overwritten; the reconciler retries.
Nothing is written when the object already holds what would be written.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from lightkube import AsyncClient, generic_resource
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import ConfigMap, Secret
from lightkube.types import PatchType

from authz import kube
from authz_operator import build

__all__ = ["REVISION_ANNOTATION", "ApiError", "ClusterApi"]

REVISION_ANNOTATION = kube.REVISION_ANNOTATION  # on the ConfigMap and the Secret: the pair belongs together
MANAGED_BY = {"app.kubernetes.io/managed-by": "tollgate-operator", "app.kubernetes.io/part-of": "tollgate"}
FIELD_MANAGER = "tollgate-operator"

AccessPolicy = generic_resource.create_namespaced_resource("tollgate.dev", "v1alpha1", "AccessPolicy", "accesspolicies")
IdentityProvider = generic_resource.create_namespaced_resource(
    "tollgate.dev", "v1alpha1", "IdentityProvider", "identityproviders"
)
_KINDS = {"AccessPolicy": AccessPolicy, "IdentityProvider": IdentityProvider}


class ClusterApi:
    """The writes; one instance per operator, sharing one HTTP connection pool."""

    def __init__(self, client: AsyncClient | None = None) -> None:
        self._client = client or AsyncClient(field_manager=FIELD_MANAGER)

    async def close(self) -> None:
        await self._client.close()

    async def publish(self, namespace: str, name: str, published: build.Published) -> bool:
        """Make the Secret, then the ConfigMap, hold ``published`` (Secret first: a document is
        never visible before the values it names). True if anything was written."""
        secret = {key: base64.b64encode(value).decode() for key, value in published.secret_data.items()}
        wrote_secret = await self._converge(Secret, namespace, name, secret, published.revision)
        wrote_map = await self._converge(ConfigMap, namespace, name, published.data, published.revision)
        return wrote_secret or wrote_map

    async def read_published(self, namespace: str, name: str) -> tuple[dict[str, str], dict[str, bytes]]:
        """What the ConfigMap and the Secret hold now (empty if they do not exist)."""
        found: list[dict[str, Any]] = []
        for kind in (ConfigMap, Secret):
            try:
                current = await self._client.get(kind, name, namespace=namespace)
            except ApiError as error:
                if error.status.code != 404:
                    raise
                found.append({})
            else:
                found.append(dict(getattr(current, "data", None) or {}))
        config, secret = found
        return config, {key: base64.b64decode(value) for key, value in secret.items()}

    async def create_secret_once(self, namespace: str, name: str, data: Mapping[str, str]) -> bool:
        """Create the Secret with ``data`` (text) unless it exists; never change an existing one.
        True if it was created."""
        encoded = {key: base64.b64encode(value.encode()).decode() for key, value in data.items()}
        metadata = ObjectMeta(name=name, namespace=namespace, labels=MANAGED_BY)
        try:
            await self._client.create(Secret(metadata=metadata, data=encoded))
        except ApiError as error:
            if error.status.code == 409:
                return False
            raise
        return True

    async def write_status(self, body: Mapping[str, Any], status: Mapping[str, Any]) -> None:
        """Patch the status subresource of a custom resource (only the keys given)."""
        metadata = body["metadata"]
        resource = _KINDS[str(body["kind"])]
        await self._client.patch(
            resource.Status,
            metadata["name"],
            {"status": dict(status)},
            namespace=metadata["namespace"],
            patch_type=PatchType.MERGE,
        )

    async def _converge(self, kind: Any, namespace: str, name: str, wanted: Mapping[str, str], revision: str) -> bool:
        annotations = {REVISION_ANNOTATION: revision}
        try:
            current = await self._client.get(kind, name, namespace=namespace)
        except ApiError as error:
            if error.status.code != 404:
                raise
            metadata = ObjectMeta(name=name, namespace=namespace, labels=MANAGED_BY, annotations=annotations)
            await self._client.create(kind(metadata=metadata, data=dict(wanted)))
            return True
        have = dict(getattr(current, "data", None) or {})
        held = (current.metadata.annotations or {}).get(REVISION_ANNOTATION)
        if have == dict(wanted) and held == revision:
            return False
        patch = {
            "metadata": {
                "annotations": annotations,
                "labels": MANAGED_BY,
                "resourceVersion": current.metadata.resourceVersion,
            },
            "data": {**{key: None for key in have if key not in wanted}, **wanted},
        }
        await self._client.patch(kind, name, patch, namespace=namespace, patch_type=PatchType.MERGE)
        return True
