"""What the operator publishes, from the custom resources it sees: a pure function, no API.

:func:`build_configuration` takes every ``AccessPolicy`` and ``IdentityProvider`` in scope (as the
API returns them) and gives back the ConfigMap data the data plane loads, its revision, and a
status per object in Kubernetes' conventions. It validates with the data plane's own parsers and
compiler — there is no second parser — and decides:

- an invalid object is rejected in its status (``InvalidSpec``, the compiler's message with the
  field's path); if an earlier version of it was valid, that version stays in force, so a typo
  neither opens nor closes anything;
- a policy whose hosts another namespace owns is rejected (``HostClaimed``,
  :mod:`authz_operator.ownership`);
- a policy naming an identity provider that is not (validly) there is rejected (``UnknownProvider``);
- policies that disagree on one host (``defaultAction``, provider lists) are all marked
  ``Conflicted``, with the data plane's message; they stay in force (Deny wins, as in the files);
- everything accepted is published, one document per object, and only then marked ``Ready``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from authz.errors import ConfigError, ConfigErrors
from authz.identity import providers
from authz.policy import compile as compiled
from authz.policy import model
from authz_operator import ownership

__all__ = ["Condition", "ObjectStatus", "Published", "build_configuration", "object_key"]

API_VERSION = "tollgate.dev/v1alpha1"
_MAX_MESSAGE = 1024


@dataclasses.dataclass(frozen=True, slots=True)
class Condition:
    type: str  # Accepted | Ready | Conflicted
    status: str  # "True" | "False"
    reason: str  # CamelCase
    message: str


@dataclasses.dataclass(frozen=True, slots=True)
class ObjectStatus:
    conditions: tuple[Condition, ...]
    revision: str  # the published revision this status describes


@dataclasses.dataclass(frozen=True, slots=True)
class Published:
    data: dict[str, str]  # ConfigMap data: one YAML document per object in force
    revision: str
    statuses: dict[str, ObjectStatus]  # by object_key()
    in_force: dict[str, Mapping[str, Any]]  # the document in force per object: next call's ``previous``


def object_key(body: Mapping[str, Any]) -> str:
    """``Kind/namespace/name``: how objects are named here and in the ConfigMap."""
    metadata = body.get("metadata") or {}
    return f"{body.get('kind')}/{metadata.get('namespace', 'default')}/{metadata.get('name')}"


def build_configuration(
    objects: Sequence[Mapping[str, Any]],
    *,
    previous: Mapping[str, Mapping[str, Any]] | None = None,
    delegations: Mapping[str, Sequence[str]] | None = None,
) -> Published:
    """The configuration and statuses for ``objects``. ``previous``: :attr:`Published.in_force`
    of the last call (the last valid version of each object); ``delegations``: namespace → host
    patterns handed to it (see :mod:`authz_operator.ownership`)."""
    previous = previous or {}
    rejected: dict[str, Condition] = {}
    documents: dict[str, Mapping[str, Any]] = {}
    for body in sorted(objects, key=object_key):
        key, document = object_key(body), _document(body)
        problem = _invalid(document)
        if problem:
            rejected[key] = Condition("Accepted", "False", "InvalidSpec", problem)
            if key in previous:
                documents[key] = previous[key]  # the last valid version stays in force
            continue
        documents[key] = document
    provider_names = {
        str(doc["metadata"]["name"]) for doc in documents.values() if doc.get("kind") == "IdentityProvider"
    }
    policies = {key: doc for key, doc in documents.items() if doc.get("kind") == "AccessPolicy"}
    claims = [_claim(key, doc, objects) for key, doc in policies.items()]
    for verdict in ownership.assign(claims, delegations):
        key = f"AccessPolicy/{verdict.claim.namespace}/{verdict.claim.name}"
        if not verdict.accepted:
            rejected.setdefault(key, Condition("Accepted", "False", verdict.reason, verdict.message))
            documents.pop(key, None)
    for key, doc in policies.items():
        named = ((doc.get("spec") or {}).get("identity") or {}).get("providers") or []
        missing = sorted(set(named) - provider_names)
        if missing and key in documents:
            message = f"spec.identity.providers names {', '.join(missing)}: no valid IdentityProvider of that name"
            rejected.setdefault(key, Condition("Accepted", "False", "UnknownProvider", message))
            documents.pop(key)
    conflicts = _conflicts(documents)
    data = {_data_key(key): yaml.safe_dump(dict(doc), sort_keys=True) for key, doc in sorted(documents.items())}
    revision = hashlib.sha256("\0".join(f"{k}\0{v}" for k, v in sorted(data.items())).encode()).hexdigest()[:12]
    statuses = {}
    for body in objects:
        key = object_key(body)
        conditions = [rejected.get(key) or Condition("Accepted", "True", "Accepted", "valid")]
        if key in documents:
            kept = " (its last valid version)" if key in rejected else ""
            conditions.append(Condition("Ready", "True", "Published", f"in force in revision {revision}{kept}"))
        else:
            conditions.append(Condition("Ready", "False", conditions[0].reason, "not in force"))
        if key in conflicts:
            conditions.append(Condition("Conflicted", "True", "PoliciesDisagree", _short("; ".join(conflicts[key]))))
        statuses[key] = ObjectStatus(tuple(conditions), revision)
    return Published(data, revision, statuses, documents)


def _document(body: Mapping[str, Any]) -> dict[str, Any]:
    """The object as the data plane reads it: no status, no server-set metadata."""
    metadata = body.get("metadata") or {}
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {"name": metadata.get("name"), "namespace": metadata.get("namespace", "default")},
        "spec": body.get("spec"),
    }


def _invalid(document: Mapping[str, Any]) -> str:
    """The data plane's own verdict on one document ("" if valid)."""
    try:
        if document.get("apiVersion") != API_VERSION:
            raise ConfigError(f"apiVersion must be {API_VERSION!r}", field="apiVersion")
        if document.get("kind") == "AccessPolicy":
            model.parse_access_policy(document)
        elif document.get("kind") == "IdentityProvider":
            providers.parse_provider(document)
        else:
            raise ConfigError("kind must be AccessPolicy or IdentityProvider", field="kind")
    except ConfigErrors as errors:
        return _short("; ".join(str(error) for error in errors.errors))
    except ConfigError as error:
        return _short(str(error))
    return ""


def _claim(key: str, document: Mapping[str, Any], objects: Sequence[Mapping[str, Any]]) -> ownership.Claim:
    created = next(
        (str((o.get("metadata") or {}).get("creationTimestamp", "")) for o in objects if object_key(o) == key), ""
    )
    metadata = document["metadata"]
    hosts = tuple(str(host) for host in (document.get("spec") or {}).get("hosts", []))
    return ownership.Claim(str(metadata["namespace"]), str(metadata["name"]), created, hosts)


def _conflicts(documents: Mapping[str, Mapping[str, Any]]) -> dict[str, list[str]]:
    """Every policy on a host whose policies disagree, with the data plane's message."""
    policies = {
        key: model.parse_access_policy(doc) for key, doc in documents.items() if doc.get("kind") == "AccessPolicy"
    }
    _, conflicts = compiled.compile_policies(list(policies.values()))
    found: dict[str, list[str]] = {}
    for conflict in conflicts:
        for key, policy in policies.items():
            named = f"({policy.ref}=" in conflict.message or f", {policy.ref}=" in conflict.message
            if named:
                found.setdefault(key, []).append(f"{conflict.host}: {conflict.message}")
    return found


def _data_key(key: str) -> str:
    kind, namespace, name = key.split("/")
    return f"{kind.lower()}.{namespace}.{name}.yaml"


def _short(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 1] + "…"
