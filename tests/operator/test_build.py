"""What the operator publishes and the statuses it writes, from custom resources: no API needed."""

from __future__ import annotations

import pathlib
from typing import Any

import yaml
from authz_operator import build

from authz import loader


def _policy(namespace: str, name: str, created: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "tollgate.dev/v1alpha1",
        "kind": "AccessPolicy",
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": created, "generation": 1},
        "spec": spec,
        "status": {"anything": "the operator wrote before"},
    }


def _provider(namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "tollgate.dev/v1alpha1",
        "kind": "IdentityProvider",
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": "2026-11-30T00:00:00Z"},
        "spec": spec,
    }


def _documents(published: build.Published) -> list[str]:
    return sorted(name for name in published.data if name.endswith(".yaml"))


def _conditions(published: build.Published, key: str) -> dict[str, tuple[str, str, str]]:
    return {c.type: (c.status, c.reason, c.message) for c in published.statuses[key].conditions}


ORDERS = _policy(
    "shop", "orders", "2026-11-30T00:00:01Z", hosts=["orders.example.com"], rules=[{"name": "r", "action": "Allow"}]
)
IDP = _provider(
    "shop", "corp", type="jwt", jwt={"issuer": "https://sso.example.com", "jwksUri": "https://sso.example.com/keys"}
)


def test_valid_objects_are_published_and_the_data_plane_loads_them(tmp_path: pathlib.Path) -> None:
    scoped = _policy(
        "shop", "scoped", "2026-11-30T00:00:02Z", hosts=["api.example.com"], identity={"providers": ["corp"]}
    )
    published = build.build_configuration([ORDERS, IDP, scoped])
    assert sorted(published.data) == [
        "accesspolicy.shop.orders.yaml",
        "accesspolicy.shop.scoped.yaml",
        "identityprovider.shop.corp.yaml",
        build.IN_FORCE_KEY,
    ]
    assert "status" not in published.data["accesspolicy.shop.orders.yaml"]  # what the API server added stays out
    for key in published.statuses:
        assert _conditions(published, key)["Ready"] == ("True", "Published", "in force")
        assert published.statuses[key].revision == published.revision and published.statuses[key].digest
    for name, text in published.data.items():
        (tmp_path / name).write_text(text)
    snapshot = loader.load(tmp_path)
    assert {str(p.ref) for p in snapshot.policies} == {"shop/orders", "shop/scoped"}
    # The same objects in another order: the same revision.
    assert build.build_configuration([scoped, IDP, ORDERS]).revision == published.revision


def test_an_invalid_object_is_rejected_and_never_breaks_the_others() -> None:
    broken = _policy(
        "shop", "broken", "2026-11-30T00:00:02Z", hosts=["a.test"], rules=[{"name": "r", "action": "Maybe"}]
    )
    published = build.build_configuration([ORDERS, broken])
    assert _documents(published) == ["accesspolicy.shop.orders.yaml"]
    accepted = _conditions(published, "AccessPolicy/shop/broken")["Accepted"]
    assert accepted[:2] == ("False", "InvalidSpec") and "spec.rules[0].action" in accepted[2]
    assert _conditions(published, "AccessPolicy/shop/broken")["Ready"][0] == "False"


def test_an_invalid_update_keeps_the_last_valid_version_in_force() -> None:
    first = build.build_configuration([ORDERS])
    edited = {**ORDERS, "spec": {"hosts": ["orders.example.com"], "rules": [{"name": "r", "action": "Maybe"}]}}
    second = build.build_configuration([edited], previous=first.in_force)
    assert second.data == first.data and second.revision == first.revision
    conditions = _conditions(second, "AccessPolicy/shop/orders")
    assert conditions["Accepted"][:2] == ("False", "InvalidSpec")
    assert conditions["Ready"] == ("True", "Published", "in force (its last valid version)")
    assert second.statuses["AccessPolicy/shop/orders"].digest == first.statuses["AccessPolicy/shop/orders"].digest
    # Deleting the object removes it, whatever was in force before.
    assert _documents(build.build_configuration([], previous=second.in_force)) == []
    # An operator that restarts reads what was in force from what it published.
    restored = build.restore(second.data, second.secret_data)
    third = build.build_configuration([edited], previous=restored)
    assert third.data == second.data and third.revision == first.revision


def test_another_namespace_cannot_claim_a_host_or_reach_it_with_a_wildcard() -> None:
    sneaky = _policy(
        "other", "sneaky", "2026-11-30T00:00:05Z", hosts=["*.example.com"], rules=[{"name": "open", "action": "Allow"}]
    )
    published = build.build_configuration([sneaky, ORDERS])
    assert _documents(published) == ["accesspolicy.shop.orders.yaml"]
    accepted = _conditions(published, "AccessPolicy/other/sneaky")["Accepted"]
    assert accepted[:2] == ("False", "HostClaimed") and "claimed first by namespace 'shop'" in accepted[2]
    delegated = build.build_configuration([sneaky, ORDERS], delegations={"other": ["*.example.com"]})
    assert "accesspolicy.other.sneaky.yaml" in delegated.data
    assert _conditions(delegated, "AccessPolicy/shop/orders")["Accepted"][1] == "HostClaimed"


def test_unknown_providers_and_conflicts_are_reported_on_the_objects_involved() -> None:
    scoped = _policy(
        "shop", "scoped", "2026-11-30T00:00:02Z", hosts=["api.example.com"], identity={"providers": ["nobody"]}
    )
    published = build.build_configuration([scoped])
    assert _conditions(published, "AccessPolicy/shop/scoped")["Accepted"][1] == "UnknownProvider"
    allow = _policy("shop", "allow", "2026-11-30T00:00:02Z", hosts=["orders.example.com"], defaultAction="Allow")
    deny = _policy("shop", "deny", "2026-11-30T00:00:03Z", hosts=["orders.example.com"], defaultAction="Deny")
    published = build.build_configuration([allow, deny])
    for key in ("AccessPolicy/shop/allow", "AccessPolicy/shop/deny"):
        conflicted = _conditions(published, key)["Conflicted"]
        assert conflicted[:2] == ("True", "PoliciesDisagree") and "Deny applies" in conflicted[2]
        assert _conditions(published, key)["Ready"][0] == "True"  # in force: Deny wins, as in files


def _scope(published: build.Published, policy: str) -> list[str]:
    document = yaml.safe_load(published.data[f"accesspolicy.{policy}.yaml"])
    return list(document["spec"]["identity"]["providers"])


def test_a_provider_vouches_only_where_its_namespace_or_a_policy_says_so() -> None:
    """A tenant's provider of the same name never stands in for another's: providers are
    published as ``namespace.name``, a bare name is the policy's own namespace's, and a policy
    without a list accepts its own namespace's providers only."""
    own = _provider("shop", "corp", type="mtls")
    squatter = _provider("other", "corp", type="mtls")
    named = _policy("shop", "named", "2026-11-30T00:00:02Z", hosts=["a.shop.test"], identity={"providers": ["corp"]})
    unlisted = _policy("shop", "unlisted", "2026-11-30T00:00:03Z", hosts=["b.shop.test"])
    shared = _policy(
        "other", "shared", "2026-11-30T00:00:04Z", hosts=["c.other.test"], identity={"providers": ["shop/corp"]}
    )
    lonely = _policy("empty", "lonely", "2026-11-30T00:00:05Z", hosts=["d.empty.test"])
    published = build.build_configuration([squatter, own, named, unlisted, shared, lonely])
    assert _scope(published, "shop.named") == ["shop.corp"]
    assert _scope(published, "shop.unlisted") == ["shop.corp"]
    assert _scope(published, "other.shared") == ["shop.corp"]
    assert _scope(published, "empty.lonely") == []  # no provider of its own: anonymous callers only
    names = {
        yaml.safe_load(published.data[f"identityprovider.{ns}.corp.yaml"])["metadata"]["name"]
        for ns in ("shop", "other")
    }
    assert names == {"shop.corp", "other.corp"}
    missing = _policy("shop", "x", "2026-11-30T00:00:06Z", hosts=["e.shop.test"], identity={"providers": ["nope/corp"]})
    accepted = _conditions(build.build_configuration([own, missing]), "AccessPolicy/shop/x")["Accepted"]
    assert accepted[:2] == ("False", "UnknownProvider") and "nope/corp" in accepted[2]


KEYS_FILE = "keys:\n- {id: ci, sha256: " + "ab" * 32 + ", subject: ci-bot}\n"


def _keys_provider(namespace: str = "shop") -> dict[str, Any]:
    return _provider(namespace, "keys", type="apiKey", apiKey={"keysSecretRef": {"name": "ci-keys", "key": "keys"}})


def test_secret_values_go_into_the_secret_and_the_data_plane_reads_both_as_one_directory(
    tmp_path: pathlib.Path,
) -> None:
    secrets = {("shop", "ci-keys"): {"keys": KEYS_FILE.encode()}}
    published = build.build_configuration([_keys_provider()], secrets=secrets)
    assert published.secret_data == {"apikeys.shop.keys": KEYS_FILE.encode()}
    assert "ab" * 32 not in "".join(published.data.values())  # hashes never in the ConfigMap
    for name, text in published.data.items():
        (tmp_path / name).write_text(text)
    for name, value in published.secret_data.items():
        (tmp_path / name).write_bytes(value)
    [provider] = loader.load(tmp_path).providers
    assert provider.api_key is not None and [k.subject for k in provider.api_key.keys] == ["ci-bot"]
    # Rotating the Secret changes the revision; a Secret in another namespace is never read.
    rotated = build.build_configuration(
        [_keys_provider()], secrets={("shop", "ci-keys"): {"keys": KEYS_FILE.replace("ci-bot", "ci").encode()}}
    )
    assert rotated.revision != published.revision
    elsewhere = build.build_configuration([_keys_provider("other")], secrets=secrets)
    assert _conditions(elsewhere, "IdentityProvider/other/keys")["Accepted"][1] == "SecretNotFound"


def test_a_missing_or_invalid_secret_rejects_the_provider_and_keeps_its_last_good_version() -> None:
    good = build.build_configuration([_keys_provider()], secrets={("shop", "ci-keys"): {"keys": KEYS_FILE.encode()}})
    cases = {
        "SecretNotFound": {},
        "InvalidSecret": {("shop", "ci-keys"): {"keys": b"keys: [{id: ci, sha256: plain-text-key}]"}},
    }
    restored = build.restore(good.data, good.secret_data)  # as an operator that restarted knows it
    for (reason, secrets), previous in zip(cases.items(), (good.in_force, restored), strict=True):
        later = build.build_configuration([_keys_provider()], secrets=secrets, previous=previous)
        conditions = _conditions(later, "IdentityProvider/shop/keys")
        assert conditions["Accepted"][:2] == ("False", reason), conditions
        assert conditions["Ready"][0] == "True" and "last valid version" in conditions["Ready"][2]
        assert later.secret_data == good.secret_data and later.revision == good.revision
    wrong_key = build.build_configuration([_keys_provider()], secrets={("shop", "ci-keys"): {"other": b"x"}})
    accepted = _conditions(wrong_key, "IdentityProvider/shop/keys")["Accepted"]
    assert accepted[:2] == ("False", "SecretNotFound") and "no key 'keys'" in accepted[2]


def test_a_policy_in_force_keeps_its_host_against_an_older_or_same_second_claim() -> None:
    first = build.build_configuration([ORDERS])
    older = _policy(
        "aaa", "older", "2026-11-30T00:00:00Z", hosts=["*.example.com"], rules=[{"name": "o", "action": "Allow"}]
    )
    later = build.build_configuration([ORDERS, older], previous=first.in_force)
    assert _documents(later) == ["accesspolicy.shop.orders.yaml"]
    assert _conditions(later, "AccessPolicy/aaa/older")["Accepted"][1] == "HostClaimed"
    # Adding a host is a new claim: it cannot take one that is already served elsewhere.
    grown = {**ORDERS, "spec": {**ORDERS["spec"], "hosts": ["orders.example.com", "x.other.test"]}}
    served = _policy(
        "zzz", "x", "2026-11-30T00:00:09Z", hosts=["x.other.test"], rules=[{"name": "r", "action": "Allow"}]
    )
    before = build.build_configuration([ORDERS, served])
    after = build.build_configuration([grown, served], previous=before.in_force)
    assert _conditions(after, "AccessPolicy/shop/orders")["Accepted"][1] == "HostClaimed"
    assert "accesspolicy.zzz.x.yaml" in after.data


def test_a_provider_resource_may_not_name_a_file_on_the_data_planes_disk() -> None:
    """keysFile or hmacSecretFile in a resource would be read from the data plane pod's disk (its
    service account token, the audit signing key): only Secret references are accepted."""
    for spec, field in (
        ({"type": "apiKey", "apiKey": {"keysFile": "/var/run/secrets/kubernetes.io/serviceaccount/token"}}, "keysFile"),
        (
            {
                "type": "jwt",
                "jwt": {
                    "issuer": "https://i",
                    "algorithms": ["HS256"],
                    "hmacSecretFile": "/etc/tollgate/audit-keys/signing.key",
                },
            },
            "hmacSecretFile",
        ),
    ):
        published = build.build_configuration([_provider("shop", "sneaky", **spec)])
        accepted = _conditions(published, "IdentityProvider/shop/sneaky")["Accepted"]
        assert accepted[:2] == ("False", "InvalidSpec") and field in accepted[2] and "Secret" in accepted[2]
        assert _documents(published) == []
