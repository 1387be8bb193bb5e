"""The data plane following the cluster: ``tollgate serve --config kubernetes:NS/NAME`` behind a real
Envoy, fed by the operator through the emulated Kubernetes API.

Every assertion is on what the echo upstream received (or did not), not only on status codes.
"""

from __future__ import annotations

import concurrent.futures
import pathlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from lightkube import Client
from lightkube.generic_resource import create_namespaced_resource
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import ConfigMap, Secret

from authz.dev import apiserver, harness, upstream

pytestmark = pytest.mark.envoy

AccessPolicy = create_namespaced_resource("tollgate.dev", "v1alpha1", "AccessPolicy", "accesspolicies")
NAMESPACE, NAME = "tollgate-system", "tollgate-config"
SOURCE = f"kubernetes:{NAMESPACE}/{NAME}"
Eventually = Callable[..., None]


def _policy_document(paths: list[str], name: str = "app") -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "tollgate.dev/v1alpha1",
            "kind": "AccessPolicy",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"hosts": ["app.test"], "rules": [{"name": "read", "action": "Allow", "to": {"paths": paths}}]},
        }
    )


def _publish(kube: Client, revision: str, data: dict[str, str], *, secret_revision: str | None = None) -> None:
    """Write the pair as the operator does (Secret first), by hand."""
    for kind, payload in ((Secret, {}), (ConfigMap, data)):
        annotation = {"tollgate.dev/revision": secret_revision or revision if kind is Secret else revision}
        body = {"metadata": {"annotations": annotation}, "data": payload}
        try:
            kube.patch(kind, NAME, body, namespace=NAMESPACE)
        except Exception:
            kube.create(kind(metadata=ObjectMeta(name=NAME, namespace=NAMESPACE, annotations=annotation), data=payload))


@pytest.fixture
def stack(
    tmp_path: pathlib.Path, kubeconfig: pathlib.Path, echo_upstream: upstream.EchoUpstream
) -> Iterator[Callable[[], tuple[harness.TollgateProcess, harness.Envoy]]]:
    """``tollgate serve`` on the kubernetes: source, and an Envoy in front of the echo upstream."""
    started: list[Any] = []

    def start() -> tuple[harness.TollgateProcess, harness.Envoy]:
        authz = harness.TollgateProcess(
            SOURCE,
            env={"KUBECONFIG": str(kubeconfig)},
            log_to=tmp_path / "tollgate.log",
        ).start()
        started.append(authz)
        proxy = harness.Envoy(authz_port=authz.port, upstream_port=echo_upstream.port, log_to=tmp_path / "envoy.log")
        proxy.start()
        started.append(proxy)
        return authz, proxy

    try:
        yield start
    finally:
        for thing in reversed(started):
            thing.stop()


def _reached(http: Callable[..., Any], proxy: harness.Envoy, path: str) -> bool:
    """Whether the upstream received ``GET path`` (and Envoy said 200 because of it)."""
    reply = http(proxy.port, "GET", path, host="app.test")
    if reply.status == 200:
        assert reply.json()["path"] == path
        return True
    assert reply.status in (401, 403), reply.status  # refused by Tollgate (anonymous callers get 401)
    return False


def test_the_data_plane_follows_the_published_pair_and_keeps_the_last_good_one(
    tmp_path: pathlib.Path,
    kube: Client,
    apiserver_thread: apiserver.ApiServerThread,
    stack: Callable[[], tuple[harness.TollgateProcess, harness.Envoy]],
    http: Callable[..., Any],
    eventually: Eventually,
) -> None:
    _publish(kube, "r1", {"app.yaml": _policy_document(["/v1"])})
    _, proxy = stack()
    assert _reached(http, proxy, "/v1") and not _reached(http, proxy, "/v2")
    # A new revision is in force within moments, and the old one is gone, not merged.
    _publish(kube, "r2", {"app.yaml": _policy_document(["/v2"])})
    eventually(lambda: _reached(http, proxy, "/v2"), timeout=5)
    assert not _reached(http, proxy, "/v1")
    # The ConfigMap ahead of its Secret: not taken until the pair agrees.
    _publish(kube, "r3", {"app.yaml": _policy_document(["/v3"])}, secret_revision="r2")
    assert not _reached(http, proxy, "/v3") and _reached(http, proxy, "/v2")
    _publish(kube, "r3", {"app.yaml": _policy_document(["/v3"])})
    eventually(lambda: _reached(http, proxy, "/v3"), timeout=5)
    # An invalid pair never replaces what is in force.
    _publish(kube, "r4", {"app.yaml": _policy_document(["/v4*x"])})
    eventually(lambda: "rejected, keeping revision r3" in (tmp_path / "tollgate.log").read_text(), timeout=5)
    assert _reached(http, proxy, "/v3") and not _reached(http, proxy, "/v4")
    # Nothing published at all is an empty configuration: the default action (Deny).
    kube.delete(ConfigMap, NAME, namespace=NAMESPACE)
    eventually(lambda: not _reached(http, proxy, "/v3"), timeout=5)


def test_the_api_going_away_keeps_the_configuration_and_it_resumes(
    tmp_path: pathlib.Path,
    kube: Client,
    apiserver_thread: apiserver.ApiServerThread,
    stack: Callable[[], tuple[harness.TollgateProcess, harness.Envoy]],
    http: Callable[..., Any],
    eventually: Eventually,
) -> None:
    _publish(kube, "r1", {"app.yaml": _policy_document(["/v1"])})
    _, proxy = stack()
    assert _reached(http, proxy, "/v1")
    port = apiserver_thread.port
    apiserver_thread.stop()  # the API server goes away: the last good configuration stays
    for _ in range(5):
        assert _reached(http, proxy, "/v1") and not _reached(http, proxy, "/v2")
    eventually(lambda: "watch of kubernetes:" in (tmp_path / "tollgate.log").read_text(), timeout=10)
    again = apiserver.ApiServerThread(port=port).start()  # back, with a newer revision
    kube_again = Client(config=kube.config, field_manager="tests")
    try:
        _publish(kube_again, "r2", {"app.yaml": _policy_document(["/v2"])})
        eventually(lambda: _reached(http, proxy, "/v2"), timeout=15)
    finally:
        kube_again.close()
        again.stop()


def test_a_swap_under_load_fails_no_request(
    kube: Client,
    apiserver_thread: apiserver.ApiServerThread,
    stack: Callable[[], tuple[harness.TollgateProcess, harness.Envoy]],
    http: Callable[..., Any],
    eventually: Eventually,
) -> None:
    _publish(kube, "r0", {"app.yaml": _policy_document(["/always"])})
    _, proxy = stack()
    stop = threading.Event()
    failures: list[int] = []
    answered = [0]

    def hammer() -> None:
        while not stop.is_set():
            reply = http(proxy.port, "GET", "/always", host="app.test")
            answered[0] += 1
            if reply.status != 200:
                failures.append(reply.status)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        workers = [pool.submit(hammer) for _ in range(2)]
        for index in range(1, 11):
            _publish(kube, f"r{index}", {"app.yaml": _policy_document(["/always", f"/v{index}"])})
            eventually(lambda i=index: _reached(http, proxy, f"/v{i}"), timeout=5)  # type: ignore[misc]
        stop.set()
        for worker in workers:
            worker.result()
    assert answered[0] > 10 and failures == []


def test_apply_change_delete_through_the_operator_change_what_envoy_lets_through(
    kube: Client,
    apiserver_thread: apiserver.ApiServerThread,
    start_operator: Callable[..., harness.OperatorProcess],
    stack: Callable[[], tuple[harness.TollgateProcess, harness.Envoy]],
    http: Callable[..., Any],
    eventually: Eventually,
) -> None:
    start_operator("--webhook-configuration", "")
    _, proxy = stack()  # nothing published yet: Deny
    assert not _reached(http, proxy, "/v1")
    rules = [{"name": "read", "action": "Allow", "to": {"paths": ["/v1"]}}]
    kube.create(
        AccessPolicy(metadata={"name": "app", "namespace": "shop"}, spec={"hosts": ["app.test"], "rules": rules})
    )
    eventually(lambda: _reached(http, proxy, "/v1"), timeout=10)
    kube.patch(AccessPolicy, "app", {"spec": {"rules": [{**rules[0], "to": {"paths": ["/v2"]}}]}}, namespace="shop")
    eventually(lambda: _reached(http, proxy, "/v2"), timeout=10)
    assert not _reached(http, proxy, "/v1")
    # A tenant in another namespace cannot open the host, not even with a wildcard.
    sneaky = {"hosts": ["*.test"], "rules": [{"name": "all", "action": "Allow"}]}
    kube.create(AccessPolicy(metadata={"name": "sneaky", "namespace": "other"}, spec=sneaky))
    eventually(lambda: _status_reason(apiserver_thread, "other", "sneaky") == "HostClaimed", timeout=10)
    assert not _reached(http, proxy, "/v1")
    kube.delete(AccessPolicy, "sneaky", namespace="other")
    kube.delete(AccessPolicy, "app", namespace="shop")
    eventually(lambda: not _reached(http, proxy, "/v2"), timeout=10)


def _status_reason(api: apiserver.ApiServerThread, namespace: str, name: str) -> str:
    found = api.get("tollgate.dev/v1alpha1/accesspolicies", namespace, name) or {}
    conditions = {c["type"]: c for c in (found.get("status") or {}).get("conditions") or []}
    return str(conditions.get("Accepted", {}).get("reason", ""))
