"""The operator end to end against a real HTTP Kubernetes API: what it publishes, the status and
Events users read with kubectl, and what it does with bad input, deletions and restarts."""

from __future__ import annotations

import base64
import json
import pathlib
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import kmock
import yaml
from lightkube import Client
from lightkube.generic_resource import create_global_resource, create_namespaced_resource
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Secret

from authz.audit import note
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


def test_hosts_belong_to_the_first_namespace_unless_delegated_and_conflicts_are_on_every_policy(
    tmp_path: pathlib.Path,
    apiserver_thread: apiserver.ApiServerThread,
    kube: Client,
    start_operator: Callable[..., harness.OperatorProcess],
    eventually: Eventually,
) -> None:
    api = apiserver_thread
    delegations = tmp_path / "delegations.yaml"
    delegations.write_text("payments: ['pay.example.org']\n")
    start_operator("--delegations", str(delegations), "--webhook-configuration", "")
    kube.create(_policy("shop", "orders", hosts=["orders.example.com"], rules=ALLOW))
    eventually(lambda: "accesspolicy.shop.orders.yaml" in _published(api))
    # Another namespace cannot reach a host shop claimed first, not even with a wildcard...
    kube.create(_policy("other", "sneaky", hosts=["*.example.com"], rules=[{"name": "all", "action": "Allow"}]))
    eventually(lambda: _conditions(_status(api, "other", "sneaky")).get("Accepted", {}).get("reason") == "HostClaimed")
    assert "claimed first by namespace 'shop'" in _conditions(_status(api, "other", "sneaky"))["Accepted"]["message"]
    assert "accesspolicy.other.sneaky.yaml" not in _published(api)
    eventually(lambda: ("sneaky", "Warning", "HostClaimed") in _events(api, "other"))
    # ...and a host delegated to a namespace is its own, whoever comes first.
    kube.create(_policy("shop", "pay-too", hosts=["pay.example.org"], rules=ALLOW))
    eventually(lambda: _conditions(_status(api, "shop", "pay-too")).get("Accepted", {}).get("reason") == "HostClaimed")
    assert "delegated to namespace 'payments'" in _conditions(_status(api, "shop", "pay-too"))["Accepted"]["message"]
    kube.create(_policy("payments", "pay", hosts=["pay.example.org"], rules=ALLOW))
    eventually(lambda: "accesspolicy.payments.pay.yaml" in _published(api))
    # Two policies of one namespace that disagree on a host: both say so, and both stay in force.
    kube.create(_policy("payments", "strict", hosts=["pay.example.org"], defaultAction="Deny"))
    kube.create(_policy("payments", "lax", hosts=["pay.example.org"], defaultAction="Allow"))
    for name in ("strict", "lax"):
        eventually(
            lambda name=name: _conditions(_status(api, "payments", name)).get("Conflicted", {}).get("status") == "True"
        )
        assert "Deny applies" in _conditions(_status(api, "payments", name))["Conflicted"]["message"]
    assert {"accesspolicy.payments.strict.yaml", "accesspolicy.payments.lax.yaml"} <= set(_published(api))


KEYS = "keys:\n- {id: ci, sha256: " + "ab" * 32 + ", subject: ci-bot}\n"


def test_credentials_come_from_labelled_secrets_into_the_published_secret_and_rotate(
    apiserver_thread: apiserver.ApiServerThread,
    kube: Client,
    start_operator: Callable[..., harness.OperatorProcess],
    eventually: Eventually,
) -> None:
    api = apiserver_thread
    start_operator("--webhook-configuration", "")
    keys_ref = {"keysSecretRef": {"name": "ci-keys", "key": "keys.yaml"}}
    kube.create(
        IdentityProvider(metadata={"name": "keys", "namespace": "ci"}, spec={"type": "apiKey", "apiKey": keys_ref})
    )
    # No such labelled Secret yet: rejected, nothing published.
    eventually(
        lambda: (
            _conditions(_status(api, "ci", "keys", "identityproviders")).get("Accepted", {}).get("reason")
            == "SecretNotFound"
        )
    )
    unlabelled = Secret(metadata=ObjectMeta(name="ci-keys", namespace="ci"), data={"keys.yaml": _b64(KEYS)})
    kube.create(unlabelled)  # without the label the operator never reads it
    labelled = {"metadata": {"labels": {"tollgate.dev/credentials": "true"}}}
    kube.patch(Secret, "ci-keys", labelled, namespace="ci")
    eventually(lambda: "apikeys.ci.keys" in ((api.get("v1/secrets", NAMESPACE, NAME) or {}).get("data") or {}))
    published = api.get("v1/secrets", NAMESPACE, NAME) or {}
    assert _unb64(published["data"]["apikeys.ci.keys"]) == KEYS
    assert "ab" * 32 not in json.dumps(api.get("v1/configmaps", NAMESPACE, NAME))  # hashes never in the ConfigMap
    assert _published(api)["identityprovider.ci.keys.yaml"]["spec"]["apiKey"]["keysFile"] == "apikeys.ci.keys"
    revision = published["metadata"]["annotations"]["tollgate.dev/revision"]
    # Rotation: the new keys are published under a new revision, in both objects.
    rotated = KEYS.replace("ci-bot", "ci-robot")
    kube.patch(Secret, "ci-keys", {"data": {"keys.yaml": _b64(rotated)}}, namespace="ci")
    eventually(lambda: _unb64((api.get("v1/secrets", NAMESPACE, NAME) or {})["data"]["apikeys.ci.keys"]) == rotated)

    def revisions() -> tuple[str, str]:
        configmap = api.get("v1/configmaps", NAMESPACE, NAME) or {}
        secret = api.get("v1/secrets", NAMESPACE, NAME) or {}
        return tuple(o["metadata"]["annotations"]["tollgate.dev/revision"] for o in (configmap, secret))  # type: ignore[return-value]

    eventually(lambda: revisions()[0] == revisions()[1] != revision)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _unb64(text: str) -> str:
    return base64.b64decode(text).decode()


def _writes(api: apiserver.ApiServerThread, since: int) -> list[str]:
    return [
        f"{r.method} {r.url.path}"
        for r in api.requests()[since:]
        if str(r.method).upper().endswith(("POST", "PATCH", "PUT", "DELETE")) and "/events" not in r.url.path
    ]


def test_a_restarted_operator_resumes_without_writing_anything_new(
    apiserver_thread: apiserver.ApiServerThread,
    kube: Client,
    start_operator: Callable[..., harness.OperatorProcess],
    eventually: Eventually,
) -> None:
    api = apiserver_thread
    first = start_operator("--webhook-configuration", "")
    kube.create(_policy("shop", "orders", hosts=["orders.example.com"], rules=ALLOW))
    kube.create(_policy("shop", "broken", hosts=["b.example.com"], rules=[{"name": "x", "action": "Maybe"}]))
    eventually(lambda: _conditions(_status(api, "shop", "orders")).get("Ready", {}).get("status") == "True")
    eventually(lambda: _conditions(_status(api, "shop", "broken")).get("Accepted", {}).get("status") == "False")
    before = _published(api)
    first.stop()
    since = len(api.requests())
    start_operator("--webhook-configuration", "", log="operator-2.log")
    eventually(
        lambda: any(
            "resume" in line
            for line in (pathlib.Path(first.log_to or "").parent / "operator-2.log").read_text().splitlines()
        ),
        timeout=15,
    )
    time.sleep(1.0)  # time for any (wrong) write to arrive
    writes = [w for w in _writes(api, since) if "/status" in w or "configmaps" in w or "secrets" in w]
    assert writes == [], writes
    assert _published(api) == before


def test_api_errors_and_dropped_watches_are_retried(
    apiserver_thread: apiserver.ApiServerThread,
    kube: Client,
    start_operator: Callable[..., harness.OperatorProcess],
    eventually: Eventually,
) -> None:
    """The first publish meets a 503, the first status write a 409, and the watches are cut:
    the operator retries each (kopf's backoff) and ends where it would have."""
    api = apiserver_thread

    def inject(server: apiserver.ApiServer) -> None:
        server["post", kmock.resource("v1/configmaps")][:1] << 503
        server["patch", kmock.subresource("status")][:1] << 409

    api.call(inject)
    start_operator("--webhook-configuration", "")
    kube.create(_policy("shop", "orders", hosts=["orders.example.com"], rules=ALLOW))
    eventually(lambda: "accesspolicy.shop.orders.yaml" in _published(api), timeout=20)
    eventually(lambda: _conditions(_status(api, "shop", "orders")).get("Ready", {}).get("status") == "True", timeout=20)
    statuses = [r for r in api.requests() if r.subresource == "status"]
    assert len(statuses) >= 2  # the refused one, then the one that landed
    api.drop_watches()
    kube.create(_policy("shop", "later", hosts=["later.example.com"], rules=ALLOW))
    eventually(lambda: "accesspolicy.shop.later.yaml" in _published(api), timeout=20)


def test_the_admission_webhook_answers_real_admission_reviews_over_https(
    apiserver_thread: apiserver.ApiServerThread,
    start_operator: Callable[..., harness.OperatorProcess],
    eventually: Eventually,
    tmp_path: pathlib.Path,
) -> None:
    """The operator keeps a ValidatingWebhookConfiguration with its URL and CA bundle; an
    AdmissionReview sent there, as the API server would, verifying that CA, gets the data
    plane's verdict with the field's path."""
    api = apiserver_thread
    start_operator()
    key = ("admissionregistration.k8s.io/v1/validatingwebhookconfigurations", None, "tollgate.dev")
    eventually(lambda: bool((api.get(*key) or {}).get("webhooks")))
    webhooks = {w["name"]: w for w in (api.get(*key) or {})["webhooks"]}
    hook = webhooks["accesspolicy-validate.tollgate.dev"]
    assert hook["failurePolicy"] == "Ignore" and hook["rules"][0]["resources"] == ["accesspolicies"]
    ca = tmp_path / "ca.pem"
    ca.write_bytes(base64.b64decode(hook["clientConfig"]["caBundle"]))
    context = ssl.create_default_context(cafile=str(ca))

    def review(spec: dict[str, Any]) -> dict[str, Any]:
        obj = {
            "apiVersion": "tollgate.dev/v1alpha1",
            "kind": "AccessPolicy",
            "metadata": {"name": "p", "namespace": "shop"},
            "spec": spec,
        }
        body = {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "0a1b",
                "kind": {"group": "tollgate.dev", "version": "v1alpha1", "kind": "AccessPolicy"},
                "resource": {"group": "tollgate.dev", "version": "v1alpha1", "resource": "accesspolicies"},
                "operation": "CREATE",
                "namespace": "shop",
                "name": "p",
                "object": obj,
                "userInfo": {"username": "alice"},
                "dryRun": False,
            },
        }
        request = urllib.request.Request(
            hook["clientConfig"]["url"], data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, context=context, timeout=10) as reply:
            return dict(json.load(reply)["response"])

    allowed = review({"hosts": ["a.example.com"], "rules": ALLOW})
    assert allowed["allowed"] is True and allowed["uid"] == "0a1b"
    refused = review({"hosts": ["a.example.com"], "rules": [{"name": "x", "action": "Maybe"}]})
    assert refused["allowed"] is False and refused["status"]["code"] == 422
    assert "spec.rules[0].action" in refused["status"]["message"]


def test_one_of_two_peered_operators_is_active(
    apiserver_thread: apiserver.ApiServerThread,
    kube: Client,
    start_operator: Callable[..., harness.OperatorProcess],
    eventually: Eventually,
    tmp_path: pathlib.Path,
) -> None:
    api = apiserver_thread
    peering = create_global_resource("kopf.dev", "v1", "ClusterKopfPeering", "clusterkopfpeerings")
    kube.create(peering(metadata={"name": "tollgate"}))  # as the chart installs it
    active = start_operator("--peering", "tollgate", "--priority", "200", "--webhook-configuration", "", log="a.log")
    start_operator("--peering", "tollgate", "--priority", "100", "--webhook-configuration", "", log="b.log")
    kube.create(_policy("shop", "orders", hosts=["orders.example.com"], rules=ALLOW))
    eventually(lambda: "accesspolicy.shop.orders.yaml" in _published(api), timeout=20)

    def handled(name: str) -> int:
        return (tmp_path / name).read_text().count("Handler 'accesspolicy_create' succeeded")

    eventually(lambda: handled("a.log") == 1)
    time.sleep(0.5)
    assert handled("b.log") == 0  # the higher priority works, the other waits
    # The active one leaves (it removes itself from the peering): the standby takes over.
    active.stop()
    eventually(lambda: "Resuming operations" in (tmp_path / "b.log").read_text(), timeout=20)
    kube.create(_policy("shop", "later", hosts=["later.example.com"], rules=ALLOW))
    eventually(lambda: "accesspolicy.shop.later.yaml" in _published(api), timeout=20)
    eventually(lambda: handled("b.log") == 1)


def test_kopf_run_dash_m_is_the_same_operator_configured_by_variables(
    tmp_path: pathlib.Path,
    kubeconfig: pathlib.Path,
    apiserver_thread: apiserver.ApiServerThread,
    kube: Client,
    eventually: Eventually,
) -> None:
    api = apiserver_thread
    process = harness.OperatorProcess(kubeconfig, log_to=tmp_path / "kopf.log")
    kopf = pathlib.Path(sys.executable).with_name("kopf")
    process.args = [str(kopf), "run", "-m", "authz_operator.main", "--standalone", "--all-namespaces"]
    process.args.append(f"--liveness=http://127.0.0.1:{process.liveness_port}/healthz")
    process.env.update(
        TOLLGATE_PUBLISH="elsewhere/published",
        TOLLGATE_WEBHOOK_LISTEN=f"127.0.0.1:{process.webhook_port}",
        TOLLGATE_WEBHOOK_CONFIGURATION="",
    )
    with harness.running(process):
        kube.create(_policy("shop", "orders", hosts=["orders.example.com"], rules=ALLOW))
        eventually(lambda: api.get("v1/configmaps", "elsewhere", "published") is not None)
    # A bad variable stops it with one line naming the variable.
    process.env["TOLLGATE_PUBLISH"] = "nowhere"
    failed = subprocess.run(process.args, env=process.env, capture_output=True, text=True, timeout=60, check=False)
    assert failed.returncode != 0 and "TOLLGATE_PUBLISH 'nowhere'" in failed.stdout + failed.stderr


def test_the_audit_keys_secret_is_made_once_and_never_replaced(
    apiserver_thread: apiserver.ApiServerThread,
    start_operator: Callable[..., harness.OperatorProcess],
    eventually: Eventually,
) -> None:
    api = apiserver_thread
    first = start_operator("--audit-keys-secret", "audit-keys", "--webhook-configuration", "")
    eventually(lambda: api.get("v1/secrets", NAMESPACE, "audit-keys") is not None)
    data = {k: _unb64(v) for k, v in (api.get("v1/secrets", NAMESPACE, "audit-keys") or {})["data"].items()}
    assert set(data) == {"signing.key", "verifier.key", "pseudonyms.yaml"}
    signer = note.Signer.from_skey(data["signing.key"])  # a working key pair
    assert note.Verifier(data["verifier.key"]).open(signer.sign("tollgate\n")) == "tollgate\n"
    first.stop()
    start_operator("--audit-keys-secret", "audit-keys", "--webhook-configuration", "", log="operator-2.log")
    time.sleep(1.0)
    again = {k: _unb64(v) for k, v in (api.get("v1/secrets", NAMESPACE, "audit-keys") or {})["data"].items()}
    assert again == data  # a new signing key would split the evidence from what auditors verify
