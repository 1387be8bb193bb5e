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
- a provider naming a file (``keysFile``, ``hmacSecretFile``) is refused: in a cluster that path
  would be read on the data plane's own disk; a provider whose ``keysSecretRef``/``hmacSecretRef``
  names a Secret that is not there (in the
  provider's own namespace, labelled ``tollgate.dev/credentials=true``) is rejected
  (``SecretNotFound``), one whose value the data plane would refuse too (``InvalidSecret``); a
  resolved value goes into the published Secret, never the ConfigMap, and the published document
  names it as a file (the data plane reads the ConfigMap and the Secret as one directory);
- providers are published as ``namespace.name``, and every policy's ``identity.providers`` names
  them so: ``name`` is the provider of that name in the policy's own namespace, ``ns/name`` one in
  another, and a policy without the list accepts only its own namespace's providers — a provider
  some other tenant creates can never vouch for callers on your hosts; a policy naming a provider
  that is not (validly) there is rejected (``UnknownProvider``);
- policies that disagree on one host (``defaultAction``, provider lists) are all marked
  ``Conflicted``, with the data plane's message; they stay in force (Deny wins, as in the files);
- everything accepted is published, one document per object, and only then marked ``Ready``;
  beside them ``in-force.json`` keeps each object's last valid version as its author wrote it, so
  an operator that restarts (:func:`restore`) still knows what to keep in force for an object
  that turned invalid (the data plane reads only ``*.yaml``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from authz.errors import ConfigError, ConfigErrors
from authz.identity import apikey, providers
from authz.policy import compile as compiled
from authz.policy import model
from authz_operator import ownership

__all__ = [
    "IN_FORCE_KEY",
    "Condition",
    "InForce",
    "ObjectStatus",
    "Published",
    "SecretData",
    "build_configuration",
    "invalid",
    "object_key",
    "restore",
]

API_VERSION = "tollgate.dev/v1alpha1"
IN_FORCE_KEY = "in-force.json"
CREDENTIALS_LABEL = "tollgate.dev/credentials"  # on the Secrets providers may name
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
    digest: str = ""  # of the object's published document and Secret values; "" if not in force


@dataclasses.dataclass(frozen=True, slots=True)
class InForce:
    """One object as published: its document and the Secret values it names (file name → bytes)."""

    document: Mapping[str, Any]
    files: Mapping[str, bytes] = dataclasses.field(default_factory=dict, repr=False)


@dataclasses.dataclass(frozen=True, slots=True)
class Published:
    data: dict[str, str]  # ConfigMap data: one YAML document per object in force
    secret_data: dict[str, bytes]  # Secret data: the values the documents name as files
    revision: str  # of both together
    statuses: dict[str, ObjectStatus]  # by object_key()
    in_force: dict[str, InForce]  # per object: the next call's ``previous``


SecretData = Mapping[tuple[str, str], Mapping[str, bytes]]  # (namespace, name) → decoded data


def object_key(body: Mapping[str, Any]) -> str:
    """``Kind/namespace/name``: how objects are named here and in the ConfigMap."""
    metadata = body.get("metadata") or {}
    return f"{body.get('kind')}/{metadata.get('namespace', 'default')}/{metadata.get('name')}"


def build_configuration(
    objects: Sequence[Mapping[str, Any]],
    *,
    secrets: SecretData | None = None,
    previous: Mapping[str, InForce] | None = None,
    delegations: Mapping[str, Sequence[str]] | None = None,
) -> Published:
    """The configuration and statuses for ``objects``. ``secrets``: the labelled Secrets in
    scope; ``previous``: :attr:`Published.in_force` of the last call (the last valid version of
    each object); ``delegations``: namespace → host patterns handed to it (see
    :mod:`authz_operator.ownership`)."""
    previous = previous or {}
    rejected: dict[str, Condition] = {}
    resolved: dict[str, InForce] = {}
    for body in sorted(objects, key=object_key):
        key, document = object_key(body), _document(body)
        problem = invalid(document)
        try:
            entry = InForce(document) if problem else _resolve_secrets(document, secrets or {})
        except _SecretProblem as secret:
            problem, reason = str(secret), secret.reason
        else:
            reason = "InvalidSpec"
        if problem:
            rejected[key] = Condition("Accepted", "False", reason, _short(problem))
            if key in previous:
                resolved[key] = previous[key]  # the last valid version stays in force
            continue
        resolved[key] = entry
    valid = dict(resolved)  # as the user wrote them: the next call's "last valid version"
    _admit(resolved, rejected, objects, delegations or {}, previous)
    documents = {key: entry.document for key, entry in resolved.items()}
    conflicts = _conflicts(documents)
    data = {_data_key(key): yaml.safe_dump(dict(doc), sort_keys=True) for key, doc in sorted(documents.items())}
    secret_data = {name: value for entry in resolved.values() for name, value in entry.files.items()}
    in_force = {key: valid[key] for key in resolved}
    data[IN_FORCE_KEY] = json.dumps({key: entry.document for key, entry in in_force.items()}, sort_keys=True)
    digest = hashlib.sha256()
    for name, text in sorted(data.items()):
        digest.update(f"{name}\0{text}\0".encode())
    for name, value in sorted(secret_data.items()):
        digest.update(f"{name}\0".encode() + hashlib.sha256(value).digest())
    revision = digest.hexdigest()[:12]
    statuses = {}
    for body in objects:
        key = object_key(body)
        conditions = [rejected.get(key) or Condition("Accepted", "True", "Accepted", "valid")]
        part = ""
        if key in documents:
            kept = " (its last valid version)" if key in rejected else ""
            conditions.append(Condition("Ready", "True", "Published", f"in force{kept}"))
            part = _digest(documents[key], resolved[key].files)
        else:
            conditions.append(Condition("Ready", "False", conditions[0].reason, "not in force"))
        if key in conflicts:
            conditions.append(Condition("Conflicted", "True", "PoliciesDisagree", _short("; ".join(conflicts[key]))))
        statuses[key] = ObjectStatus(tuple(conditions), revision, part)
    return Published(data, secret_data, revision, statuses, in_force)


def restore(config: Mapping[str, str], secret: Mapping[str, bytes]) -> dict[str, InForce]:
    """What was in force, from the ConfigMap and Secret an earlier run published ({} if unreadable)."""
    try:
        documents = json.loads(config.get(IN_FORCE_KEY) or "{}")
    except ValueError:
        return {}
    restored = {}
    for key, document in documents.items() if isinstance(documents, dict) else ():
        spec = document.get("spec") or {} if isinstance(document, dict) else {}
        named = [(spec.get("apiKey") or {}).get("keysFile"), (spec.get("jwt") or {}).get("hmacSecretFile")]
        files = {name: secret[name] for name in named if isinstance(name, str) and name in secret}
        restored[str(key)] = InForce(document, files)
    return restored


def _admit(
    resolved: dict[str, InForce],
    rejected: dict[str, Condition],
    objects: Sequence[Mapping[str, Any]],
    delegations: Mapping[str, Sequence[str]],
    previous: Mapping[str, InForce],
) -> None:
    """Host ownership and provider references, on the valid documents (in place): a rejected
    policy leaves ``resolved``; a kept one names its providers by their published names."""
    providers_by_namespace: dict[str, list[str]] = {}
    for key, entry in sorted(resolved.items()):
        if entry.document.get("kind") == "IdentityProvider":
            _, namespace, name = key.split("/")
            providers_by_namespace.setdefault(namespace, []).append(name)
            resolved[key] = dataclasses.replace(entry, document=_renamed(entry.document, f"{namespace}.{name}"))
    policies = {key: entry.document for key, entry in resolved.items() if entry.document.get("kind") == "AccessPolicy"}
    created = {object_key(o): str((o.get("metadata") or {}).get("creationTimestamp", "")) for o in objects}
    claims = [_claim(key, doc, created.get(key, ""), previous.get(key)) for key, doc in policies.items()]
    for verdict in ownership.assign(claims, delegations):
        key = f"AccessPolicy/{verdict.claim.namespace}/{verdict.claim.name}"
        if not verdict.accepted:
            rejected.setdefault(key, Condition("Accepted", "False", verdict.reason, verdict.message))
            resolved.pop(key, None)
    for key, doc in policies.items():
        if key not in resolved:
            continue
        namespace = key.split("/")[1]
        named = ((doc.get("spec") or {}).get("identity") or {}).get("providers")
        if named is None:  # in a cluster: the providers of the policy's own namespace, never others'
            qualified = [f"{namespace}.{name}" for name in providers_by_namespace.get(namespace, [])]
        else:
            qualified = [_qualified(namespace, reference) for reference in named]
        known = {f"{ns}.{name}" for ns, names in providers_by_namespace.items() for name in names}
        missing = [ref for ref, q in zip(named or [], qualified, strict=False) if q not in known]
        if missing:
            message = f"spec.identity.providers names {', '.join(missing)}: no valid IdentityProvider of that name"
            rejected.setdefault(key, Condition("Accepted", "False", "UnknownProvider", message))
            resolved.pop(key)
            continue
        spec = dict(doc.get("spec") or {})
        spec["identity"] = {**(spec.get("identity") or {}), "providers": qualified}
        resolved[key] = dataclasses.replace(resolved[key], document={**doc, "spec": spec})


def _qualified(namespace: str, reference: str) -> str:
    """A provider reference as published: ``name`` is in ``namespace``; ``other/name`` is not."""
    owner, _, name = reference.rpartition("/")
    return f"{owner or namespace}.{name}"


def _renamed(document: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A provider as published: named ``namespace.name``, unique across namespaces (a namespace
    has no dots), so a provider of one namespace can never stand in for another's."""
    return {**document, "metadata": {**document["metadata"], "name": name}}


def _digest(document: Mapping[str, Any], files: Mapping[str, bytes]) -> str:
    """What one object contributes to the configuration, as 12 hex digits."""
    digest = hashlib.sha256(yaml.safe_dump(dict(document), sort_keys=True).encode())
    for name, value in sorted(files.items()):
        digest.update(name.encode() + b"\0" + hashlib.sha256(value).digest())
    return digest.hexdigest()[:12]


def _document(body: Mapping[str, Any]) -> dict[str, Any]:
    """The object as the data plane reads it: no status, no server-set metadata."""
    metadata = body.get("metadata") or {}
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {"name": metadata.get("name"), "namespace": metadata.get("namespace", "default")},
        "spec": body.get("spec"),
    }


def invalid(body: Mapping[str, Any]) -> str:
    """The data plane's own verdict on one object ("" if valid); the admission webhook's too."""
    document = _document(body)
    try:
        if document.get("apiVersion") != API_VERSION:
            raise ConfigError(f"apiVersion must be {API_VERSION!r}", field="apiVersion")
        if document.get("kind") == "AccessPolicy":
            model.parse_access_policy(document)
        elif document.get("kind") == "IdentityProvider":
            _no_file_paths(providers.parse_provider(document))
        else:
            raise ConfigError("kind must be AccessPolicy or IdentityProvider", field="kind")
    except ConfigErrors as errors:
        return _short("; ".join(str(error) for error in errors.errors))
    except ConfigError as error:
        return _short(str(error))
    return ""


def _no_file_paths(spec: providers.ProviderSpec) -> None:
    """In a cluster keys and secrets come from Secrets: a file path in a resource would name a
    file on the data plane's own disk (its service account token, the audit signing key)."""
    if spec.api_key is not None and spec.api_key.keys_file:
        raise ConfigError("in a cluster name a Secret (keysSecretRef), not a file", field="spec.apiKey.keysFile")
    if spec.jwt is not None and spec.jwt.hmac_secret_file:
        raise ConfigError("in a cluster name a Secret (hmacSecretRef), not a file", field="spec.jwt.hmacSecretFile")


class _SecretProblem(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _resolve_secrets(document: Mapping[str, Any], secrets: SecretData) -> InForce:
    """The provider's Secret references replaced by the files the published Secret holds."""
    if document.get("kind") != "IdentityProvider":
        return InForce(document)
    spec = providers.parse_provider(document)
    namespace, name = spec.namespace, spec.name
    if spec.api_key is not None and spec.api_key.keys_secret_ref is not None:
        file = f"apikeys.{namespace}.{name}"
        value = _secret_value(secrets, namespace, spec.api_key.keys_secret_ref, "spec.apiKey.keysSecretRef")
        try:
            apikey.parse_keys(value.decode("utf-8", "replace"), "the Secret's keys", "spec.apiKey.keysSecretRef")
        except ConfigError as error:
            raise _SecretProblem("InvalidSecret", str(error)) from None
        section = {k: v for k, v in document["spec"]["apiKey"].items() if k != "keysSecretRef"}
        return InForce(_with_spec(document, "apiKey", {**section, "keysFile": file}), {file: value})
    if spec.jwt is not None and spec.jwt.hmac_secret_ref is not None:
        file = f"hmac.{namespace}.{name}"
        value = _secret_value(secrets, namespace, spec.jwt.hmac_secret_ref, "spec.jwt.hmacSecretRef")
        if len(value.strip()) < 32:
            raise _SecretProblem("InvalidSecret", "spec.jwt.hmacSecretRef: an HMAC secret must be at least 32 bytes")
        section = {k: v for k, v in document["spec"]["jwt"].items() if k != "hmacSecretRef"}
        return InForce(_with_spec(document, "jwt", {**section, "hmacSecretFile": file}), {file: value})
    return InForce(document)


def _secret_value(secrets: SecretData, namespace: str, ref: providers.SecretRef, field: str) -> bytes:
    data = secrets.get((namespace, ref.name))
    if data is None:
        raise _SecretProblem(
            "SecretNotFound",
            f"{field}: no Secret {namespace}/{ref.name} labelled {CREDENTIALS_LABEL}=true",
        )
    if ref.key not in data:
        raise _SecretProblem("SecretNotFound", f"{field}: Secret {namespace}/{ref.name} has no key {ref.key!r}")
    return data[ref.key]


def _with_spec(document: Mapping[str, Any], section: str, value: Mapping[str, Any]) -> dict[str, Any]:
    return {**document, "spec": {**document["spec"], section: value}}


def _claim(key: str, document: Mapping[str, Any], created: str, before: InForce | None) -> ownership.Claim:
    metadata = document["metadata"]
    hosts = tuple(str(host) for host in (document.get("spec") or {}).get("hosts", []))
    held = set((before.document.get("spec") or {}).get("hosts", [])) if before else set()
    incumbent = before is not None and set(hosts) <= held
    return ownership.Claim(str(metadata["namespace"]), str(metadata["name"]), created, hosts, incumbent)


def _conflicts(documents: Mapping[str, Mapping[str, Any]]) -> dict[str, list[str]]:
    """Every policy on a host whose policies disagree, with the data plane's message."""
    policies = {
        key: model.parse_access_policy(doc) for key, doc in documents.items() if doc.get("kind") == "AccessPolicy"
    }
    _, conflicts = compiled.compile_policies(list(policies.values()))
    keys = {str(policy.ref): key for key, policy in policies.items()}
    found: dict[str, list[str]] = {}
    for conflict in conflicts:
        for ref in conflict.policies:
            found.setdefault(keys[ref], []).append(f"{conflict.host}: {conflict.message}")
    return found


def _data_key(key: str) -> str:
    kind, namespace, name = key.split("/")
    return f"{kind.lower()}.{namespace}.{name}.yaml"


def _short(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 1] + "…"
