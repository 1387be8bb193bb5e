"""The CRDs in charts/tollgate/crds: generated from the data plane's schemas (and up to date),
structural as Kubernetes requires, documented for kubectl explain, and accepting what the data
plane accepts."""

from __future__ import annotations

import pathlib
from typing import Any

import jsonschema
import pytest
import yaml
from authz_operator import build, status

from authz import crds, loader
from authz.errors import ConfigError, ConfigErrors

EXAMPLES = pathlib.Path(__file__).parents[2] / "examples" / "policies"


def test_the_files_are_what_the_schemas_generate() -> None:
    assert crds.main(["--check"]) == 0, "run python -m authz.crds"
    for name, definition in {**crds.definitions(), **crds.peering_definitions()}.items():
        assert yaml.safe_load((crds.TARGET / name).read_text()) == definition
    assert sorted(p.name for p in crds.TARGET.iterdir()) == sorted({**crds.definitions(), **crds.peering_definitions()})


def _walk(node: Any, path: str) -> list[tuple[str, dict[str, Any]]]:
    found = [(path, node)]
    for key, child in node.get("properties", {}).items():
        found += _walk(child, f"{path}.{key}")
    if "items" in node:
        found += _walk(node["items"], f"{path}[]")
    return found


@pytest.mark.parametrize("name", sorted(crds.definitions()))
def test_structural_and_documented(name: str) -> None:
    definition = crds.definitions()[name]
    [version] = definition["spec"]["versions"]
    root = version["schema"]["openAPIV3Schema"]
    for path, node in _walk(root, ""):
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), path
        assert not any(key.startswith("$") for key in node), path
        assert "additionalProperties" not in node or "properties" not in node, path  # Kubernetes forbids both
        if path.startswith(".spec") and path not in (".spec",):
            assert node.get("description") or path.endswith("[]"), f"{path} has no description for kubectl explain"
    names = definition["spec"]["names"]
    assert names["categories"] == ["tollgate"] and len(names["shortNames"]) == 1
    assert version["subresources"] == {"status": {}}
    assert [column["name"] for column in version["additionalPrinterColumns"]][-2:] == ["Ready", "Age"]


def _custom_resource_validator(kind: str) -> jsonschema.Draft7Validator:
    name = {
        "AccessPolicy": "accesspolicies.tollgate.dev.yaml",
        "IdentityProvider": "identityproviders.tollgate.dev.yaml",
    }
    [version] = crds.definitions()[name[kind]]["spec"]["versions"]
    return jsonschema.Draft7Validator(version["schema"]["openAPIV3Schema"])


def test_the_examples_are_valid_custom_resources() -> None:
    documents, _, errors = loader.read_documents(EXAMPLES)
    assert not errors and documents
    for document in documents:
        problems = list(_custom_resource_validator(document.body["kind"]).iter_errors(dict(document.body)))
        assert problems == [], (document.label, problems)


@pytest.mark.parametrize(
    ("kind", "spec"),
    [
        ("AccessPolicy", {"hosts": []}),
        ("AccessPolicy", {"hosts": ["a.test"], "mode": "Audit"}),
        ("AccessPolicy", {"hosts": ["a.test"], "rules": [{"name": "r"}]}),
        ("IdentityProvider", {"type": "saml"}),
        ("IdentityProvider", {"type": "jwt", "jwt": {"issuer": "idp.example"}}),
        ("IdentityProvider", {"type": "jwt", "jwt": {"issuer": "https://i", "algorithms": ["none"]}}),
        ("IdentityProvider", {"type": "apiKey", "apiKey": {"header": "x"}}),
        (
            "IdentityProvider",
            {"type": "apiKey", "apiKey": {"keysFile": "k", "keysSecretRef": {"name": "s", "key": "k"}}},
        ),
        (
            "IdentityProvider",
            {
                "type": "jwt",
                "jwt": {"issuer": "https://i", "hmacSecretFile": "f", "hmacSecretRef": {"name": "s", "key": "k"}},
            },
        ),
        ("IdentityProvider", {"type": "apiKey", "apiKey": {"keysSecretRef": {"name": "S", "key": "k"}}}),
    ],
)
def test_what_the_api_server_refuses_the_data_plane_refuses_too(
    tmp_path: pathlib.Path, kind: str, spec: dict[str, Any]
) -> None:
    body = {"apiVersion": "tollgate.dev/v1alpha1", "kind": kind, "metadata": {"name": "x"}, "spec": spec}
    assert list(_custom_resource_validator(kind).iter_errors(body)), "the CRD schema accepts it"
    (tmp_path / "x.yaml").write_text(yaml.safe_dump(body))
    with pytest.raises(ConfigError):
        loader.load(tmp_path / "x.yaml")


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"type": "apiKey", "apiKey": {"keysSecretRef": {"name": "keys", "key": "keys.yaml"}}}, "keysSecretRef"),
        (
            {"type": "jwt", "jwt": {"issuer": "https://i", "hmacSecretRef": {"name": "s", "key": "k"}}},
            "hmacSecretRef",
        ),
    ],
)
def test_secret_references_are_valid_custom_resources_but_not_files(
    tmp_path: pathlib.Path, spec: dict[str, Any], field: str
) -> None:
    """A Secret reference is the operator's to resolve: the API server accepts it, the file loader
    names it and refuses it (a data plane must never start without the secret it names)."""
    body = {"apiVersion": "tollgate.dev/v1alpha1", "kind": "IdentityProvider", "metadata": {"name": "x"}, "spec": spec}
    assert list(_custom_resource_validator("IdentityProvider").iter_errors(body)) == []
    (tmp_path / "x.yaml").write_text(yaml.safe_dump(body))
    with pytest.raises(ConfigErrors) as caught:
        loader.load(tmp_path / "x.yaml")
    [error] = caught.value.errors
    assert error.field is not None and error.field.endswith(field) and "only the operator" in str(error)


def test_every_status_field_the_operator_writes_is_declared() -> None:
    """A real API server prunes status fields its schema does not declare; then the operator
    would see its status differ on every reconcile and write it again, forever."""
    condition = build.Condition("Accepted", "False", "InvalidSpec", "spec.hosts: required")
    written = status.status_for(None, build.ObjectStatus((condition,), "abc123", "def456"), 3, "2026-11-30T00:00:00Z")
    assert written is not None
    for name in crds.definitions():
        [version] = crds.definitions()[name]["spec"]["versions"]
        declared = version["schema"]["openAPIV3Schema"]["properties"]["status"]
        assert set(written) <= set(declared["properties"]), name
        assert set(written["conditions"][0]) <= set(declared["properties"]["conditions"]["items"]["properties"])
        problems = list(jsonschema.Draft7Validator(declared).iter_errors(written))
        assert problems == [], problems
