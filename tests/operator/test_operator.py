"""The operator end to end against a real HTTP Kubernetes API: what it publishes, the status and
Events users read with kubectl, and what it does with bad input, deletions and restarts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import yaml
from lightkube import Client
from lightkube.generic_resource import create_namespaced_resource

from authz.dev import apiserver, harness

AccessPolicy = create_namespaced_resource("tollgate.dev", "v1alpha1", "AccessPolicy", "accesspolicies")
IdentityProvider = create_namespaced_resource("tollgate.dev", "v1alpha1", "IdentityProvider", "identityproviders")
NAMESPACE, NAME = "tollgate-system", "tollgate-config"

Eventually = Callable[..., None]


def _policy(namespace: str, name: str, **spec: Any) -> Any:
    return AccessPolicy(metadata={"name": name, "namespace": namespace}, spec=spec)


def _published(api: apiserver.ApiServerThread) -> dict[str, Any]:
    """The published documents by ConfigMap key (without the operator's own bookkeeping)."""
    found = api.get("v1/configmaps", NAMESPACE, NAME) or {}
    data = found.get("data") or {}
    return {key: yaml.safe_load(text) for key, text in data.items() if key.endswith(".yaml")}


def _status(
    api: apiserver.ApiServerThread, namespace: str, name: str, plural: str = "accesspolicies"
) -> dict[str, Any]:
    found = api.get(f"tollgate.dev/v1alpha1/{plural}", namespace, name) or {}
    return dict(found.get("status") or {})


def _conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status.get("conditions") or []}


def _events(api: apiserver.ApiServerThread, namespace: str) -> list[tuple[str, str, str]]:
    found = api.call(
        lambda server: [o for (r, ns, _), o in server.store.items() if r.plural == "events" and ns == namespace]
    )
    return [(e["involvedObject"]["name"], e["type"], e["reason"]) for e in found]


ALLOW = [{"name": "read", "action": "Allow", "to": {"methods": ["GET"]}}]


def test_create_update_delete_are_published_with_status_and_events(
    apiserver_thread: apiserver.ApiServerThread,
    kube: Client,
    start_operator: Callable[..., harness.OperatorProcess],
    eventually: Eventually,
) -> None:
    api = apiserver_thread
    start_operator()
    kube.create(_policy("shop", "orders", hosts=["orders.example.com"], rules=ALLOW))
    eventually(lambda: "accesspolicy.shop.orders.yaml" in _published(api))
    eventually(lambda: _conditions(_status(api, "shop", "orders")).get("Ready", {}).get("status") == "True")
    status = _status(api, "shop", "orders")
    conditions = _conditions(status)
    assert conditions["Accepted"]["reason"] == "Accepted" and status["observedGeneration"] == 1
    configmap = api.get("v1/configmaps", NAMESPACE, NAME)
    assert configmap is not None and status["revision"] == configmap["metadata"]["annotations"]["tollgate.dev/revision"]
    for condition in conditions.values():
        assert condition["lastTransitionTime"] and condition["observedGeneration"] == 1
    eventually(lambda: ("orders", "Normal", "Accepted") in _events(api, "shop"))

    # An update is published, and the status says which generation it judged.
    kube.patch(
        AccessPolicy, "orders", {"spec": {"rules": [*ALLOW, {"name": "w", "action": "Allow"}]}}, namespace="shop"
    )
    eventually(
        lambda: len(_published(api).get("accesspolicy.shop.orders.yaml", {}).get("spec", {}).get("rules", [])) == 2
    )
    eventually(lambda: _status(api, "shop", "orders").get("observedGeneration") == 2)
    assert _status(api, "shop", "orders")["revision"] != status["revision"]

    # Deleting removes it from what is published, then the object goes (the finalizer is released).
    kube.delete(AccessPolicy, "orders", namespace="shop")
    eventually(lambda: "accesspolicy.shop.orders.yaml" not in _published(api))
    eventually(lambda: api.get("tollgate.dev/v1alpha1/accesspolicies", "shop", "orders") is None)


def test_an_invalid_change_is_rejected_in_status_and_the_last_good_version_stays(
    apiserver_thread: apiserver.ApiServerThread,
    kube: Client,
    start_operator: Callable[..., harness.OperatorProcess],
    eventually: Eventually,
) -> None:
    api = apiserver_thread
    start_operator("--webhook-configuration", "")  # the API server here calls no webhook
    kube.create(_policy("shop", "orders", hosts=["orders.example.com"], rules=ALLOW))
    kube.create(_policy("shop", "other", hosts=["other.example.com"], rules=ALLOW))
    eventually(lambda: len(_published(api)) == 2)
    before = _published(api)
    kube.patch(AccessPolicy, "orders", {"spec": {"rules": [{"name": "bad", "action": "Maybe"}]}}, namespace="shop")
    eventually(lambda: _conditions(_status(api, "shop", "orders")).get("Accepted", {}).get("status") == "False")
    conditions = _conditions(_status(api, "shop", "orders"))
    assert (
        conditions["Accepted"]["reason"] == "InvalidSpec"
        and "spec.rules[0].action" in conditions["Accepted"]["message"]
    )
    assert conditions["Ready"]["status"] == "True" and "last valid version" in conditions["Ready"]["message"]
    assert _published(api) == before  # neither opened nor closed anything, and the other is untouched
    eventually(lambda: ("orders", "Warning", "InvalidSpec") in _events(api, "shop"))
    # Fixing it puts the new version in force.
    kube.patch(AccessPolicy, "orders", {"spec": {"rules": [{"name": "fixed", "action": "Allow"}]}}, namespace="shop")
    eventually(lambda: _published(api)["accesspolicy.shop.orders.yaml"]["spec"]["rules"][0]["name"] == "fixed")
    eventually(lambda: _conditions(_status(api, "shop", "orders"))["Accepted"]["status"] == "True")
