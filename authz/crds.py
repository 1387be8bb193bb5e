"""The CustomResourceDefinitions of ``AccessPolicy`` and ``IdentityProvider`` (``tollgate.dev/v1alpha1``),
generated from the JSON schemas the data plane validates with — one source of truth.

    python -m authz.crds            write charts/tollgate/crds/*.yaml (where the Helm chart takes them)
    python -m authz.crds --check    exit 1 if the files there differ from what would be written

The JSON schemas keep to the subset of JSON Schema that OpenAPI v3 and Kubernetes' structural
schemas share; here ``additionalProperties: false`` is dropped (the API server prunes unknown
fields, and the admission webhook rejects them with the data plane's own message) and the
``$``-keys go. Each CRD has printer columns, the status subresource, short names and the
``tollgate`` category.
"""

from __future__ import annotations

import json
import pathlib
import sys
from importlib import resources
from typing import Any

import yaml

__all__ = ["GROUP", "VERSION", "definitions", "main", "peering_definitions", "render"]

GROUP = "tollgate.dev"
VERSION = "v1alpha1"
TARGET = pathlib.Path(__file__).resolve().parents[1] / "charts" / "tollgate" / "crds"
_READY = '.status.conditions[?(@.type=="Ready")].status'

_STATUS: dict[str, Any] = {
    "type": "object",
    "description": "What the operator made of this object (kubectl get shows Ready).",
    "x-kubernetes-preserve-unknown-fields": True,
    "properties": {
        "conditions": {
            "type": "array",
            "description": "Accepted: valid, its hosts its namespace's, its providers there. Ready: in force in the "
            "published configuration. Conflicted: policies on one of its hosts disagree (Deny applies).",
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
            "items": {
                "type": "object",
                "required": ["type", "status"],
                "properties": {
                    "type": {"type": "string", "description": "Accepted, Ready or Conflicted."},
                    "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
                    "reason": {"type": "string", "description": "A CamelCase reason, e.g. InvalidSpec, HostClaimed."},
                    "message": {"type": "string", "description": "What is wrong, with the field's path."},
                    "lastTransitionTime": {"type": "string", "format": "date-time"},
                    "observedGeneration": {"type": "integer", "format": "int64"},
                },
            },
        },
        "observedGeneration": {
            "type": "integer",
            "format": "int64",
            "description": "The metadata.generation these conditions judged.",
        },
        "revision": {
            "type": "string",
            "description": "The published configuration revision that first carried this version of the object.",
        },
        "digest": {
            "type": "string",
            "description": "This object's part of the published configuration; changes when its content does.",
        },
    },
}


def _openapi(schema: Any) -> Any:
    """A JSON schema node as a Kubernetes structural schema node."""
    if isinstance(schema, dict):
        out = {}
        for key, value in schema.items():
            if key.startswith("$") or (key == "additionalProperties" and value is False):
                continue
            out[key] = _openapi(value)
        return out
    if isinstance(schema, list):
        return [_openapi(item) for item in schema]
    return schema


def _schema(package: str, name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(resources.files(package).joinpath(name).read_text())
    return loaded


def _definition(
    kind: str, plural: str, short: str, spec: dict[str, Any], columns: list[dict[str, str]]
) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "tollgate", "app.kubernetes.io/part-of": "tollgate"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short],
                "categories": ["tollgate"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        *columns,
                        {"name": "Ready", "type": "string", "jsonPath": _READY},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": _openapi(spec)["description"],
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": _openapi(spec),
                                "status": _STATUS,
                            },
                        }
                    },
                }
            ],
        },
    }


def definitions() -> dict[str, dict[str, Any]]:
    """File name → CRD, for both kinds."""
    return {
        f"accesspolicies.{GROUP}.yaml": _definition(
            "AccessPolicy",
            "accesspolicies",
            "ap",
            _schema("authz.policy", "accesspolicy.schema.json"),
            [
                {"name": "Mode", "type": "string", "jsonPath": ".spec.mode"},
                {"name": "Hosts", "type": "string", "jsonPath": ".spec.hosts"},
            ],
        ),
        f"identityproviders.{GROUP}.yaml": _definition(
            "IdentityProvider",
            "identityproviders",
            "idp",
            _schema("authz.identity", "identityprovider.schema.json"),
            [
                {"name": "Kind", "type": "string", "jsonPath": ".spec.type"},
                {"name": "Issuer", "type": "string", "jsonPath": ".spec.jwt.issuer"},
            ],
        ),
    }


def peering_definitions() -> dict[str, dict[str, Any]]:
    """kopf's peering resources (KopfPeering, ClusterKopfPeering): several operator replicas
    agree through them which one is active. As kopf documents them."""
    found = {}
    for kind, plural, scope in (
        ("ClusterKopfPeering", "clusterkopfpeerings", "Cluster"),
        ("KopfPeering", "kopfpeerings", "Namespaced"),
    ):
        found[f"{plural}.kopf.dev.yaml"] = {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.kopf.dev"},
            "spec": {
                "scope": scope,
                "group": "kopf.dev",
                "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
                "versions": [
                    {
                        "name": "v1",
                        "served": True,
                        "storage": True,
                        "schema": {
                            "openAPIV3Schema": {
                                "type": "object",
                                "properties": {
                                    "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                                },
                            }
                        },
                    }
                ],
            },
        }
    return found


def render(definition: dict[str, Any]) -> str:
    header = "# Generated by `python -m authz.crds` from the data plane's JSON schemas: do not edit.\n"
    return header + yaml.safe_dump(definition, sort_keys=False, width=120)


def main(argv: list[str]) -> int:
    check = argv == ["--check"]
    stale = []
    for name, definition in {**definitions(), **peering_definitions()}.items():
        path, text = TARGET / name, render(definition)
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            TARGET.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print(f"authz.crds: out of date (run python -m authz.crds): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
