"""authz.kube.ConfigSource at start: it waits for the published pair to agree."""

from __future__ import annotations

import asyncio
import pathlib

import yaml
from lightkube import AsyncClient, Client, KubeConfig
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import ConfigMap, Secret

from authz import kube as kube_source
from authz.dev import apiserver

POLICY = yaml.safe_dump(
    {
        "apiVersion": "tollgate.dev/v1alpha1",
        "kind": "AccessPolicy",
        "metadata": {"name": "app", "namespace": "shop"},
        "spec": {"hosts": ["app.test"], "rules": [{"name": "r", "action": "Allow"}]},
    }
)


def _write(kube_client: Client, kind: type, revision: str, data: dict[str, str], *, create: bool) -> None:
    annotations = {kube_source.REVISION_ANNOTATION: revision}
    if create:
        metadata = ObjectMeta(name="cfg", namespace="ns", annotations=annotations)
        kube_client.create(kind(metadata=metadata, data=data))
    else:
        kube_client.patch(kind, "cfg", {"metadata": {"annotations": annotations}}, namespace="ns")


async def test_start_waits_until_the_configmap_and_secret_agree(
    apiserver_thread: apiserver.ApiServerThread, kubeconfig: pathlib.Path, kube: Client
) -> None:
    _write(kube, Secret, "r1", {}, create=True)
    _write(kube, ConfigMap, "r2", {"app.yaml": POLICY}, create=True)  # the operator is mid-write
    client = AsyncClient(config=KubeConfig.from_file(kubeconfig))
    reader = asyncio.ensure_future(kube_source.ConfigSource("ns", "cfg", client).first())
    await asyncio.sleep(1.0)
    assert not reader.done()  # never a ConfigMap whose Secret is not there yet
    await asyncio.to_thread(_write, kube, Secret, "r2", {}, create=False)
    snapshot = await asyncio.wait_for(reader, 15)
    assert snapshot.revision == "r2" and [str(p.ref) for p in snapshot.policies] == ["shop/app"]
    await client.close()
