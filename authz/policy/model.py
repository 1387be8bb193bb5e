"""The AccessPolicy resource as typed, validated, plain objects.

Owns the meaning of every field of ``AccessPolicy.spec`` (``tollgate.dev/v1alpha1``); the
structure is checked against ``accesspolicy.schema.json`` (the same schema the CRD serves) and the
values (patterns, CIDRs, methods) here. Called by :mod:`authz.loader` for local files and by the
operator for custom resources. Semantics are documented in ``docs/policy.md``.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import ipaddress
import json
import re
from collections.abc import Callable, Mapping
from importlib import resources
from typing import Any

import jsonschema

from authz import canonical
from authz.errors import ConfigError, ConfigErrors, Problems

__all__ = [
    "AccessPolicy",
    "Action",
    "Condition",
    "Mode",
    "PolicyRef",
    "Rule",
    "parse_access_policy",
]

API_VERSION = "tollgate.dev/v1alpha1"
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_METHOD = re.compile(r"^[A-Z]+$")
_HOST_LABELS = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class Action(enum.StrEnum):
    ALLOW = "Allow"
    DENY = "Deny"


class Mode(enum.StrEnum):
    ENFORCE = "Enforce"
    DRY_RUN = "DryRun"


@dataclasses.dataclass(frozen=True, slots=True)
class PolicyRef:
    """Where a policy came from: ``namespace/name`` plus the file and document that defined it."""

    namespace: str
    name: str
    source: str = ""

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclasses.dataclass(frozen=True, slots=True)
class Condition:
    """One ``when`` entry: a claim (dotted path) or header that must (not) have one of the values."""

    claim: str | None
    header: str | None
    values: tuple[str, ...]
    not_values: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Rule:
    """One rule; every condition given must hold (AND), each list matches any of its items (OR)."""

    name: str
    action: Action
    methods: tuple[str, ...] = ()
    not_methods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    not_paths: tuple[str, ...] = ()
    subjects: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    principals: tuple[str, ...] = ()
    ip_blocks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    not_ip_blocks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    authenticated: bool | None = None
    when: tuple[Condition, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class AccessPolicy:
    ref: PolicyRef
    hosts: tuple[str, ...]
    mode: Mode
    default_action: Action
    default_action_set: bool
    rules: tuple[Rule, ...]
    providers: tuple[str, ...] | None  # None: every identity provider in scope


@functools.cache
def _spec_validator() -> jsonschema.Draft202012Validator:
    text = resources.files("authz.policy").joinpath("accesspolicy.schema.json").read_text()
    return jsonschema.Draft202012Validator(json.loads(text))


_NAMED_PROPERTY = re.compile(r"'([^']+)' (?:is a required property|was unexpected)")


def _field(error: jsonschema.ValidationError) -> str:
    """Render where an error is as ``spec.rules[1].to.paths[0]``, naming a missing or unknown key."""
    out = "spec"
    for part in error.absolute_path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    named = _NAMED_PROPERTY.search(error.message)
    if error.validator in ("required", "additionalProperties") and named:
        out += f".{named.group(1)}"
    return out


def parse_access_policy(document: Mapping[str, Any], *, source: str = "") -> AccessPolicy:
    """Validate one AccessPolicy document and return it typed; raise :class:`ConfigError` naming the field."""
    metadata = document.get("metadata")
    if not isinstance(metadata, Mapping):
        raise ConfigError("metadata must be a mapping with a name", field="metadata")
    name = metadata.get("name")
    namespace = metadata.get("namespace", "default")
    for field, value in (("metadata.name", name), ("metadata.namespace", namespace)):
        if not isinstance(value, str) or not _NAME.match(value) or len(value) > 253:
            raise ConfigError(f"{value!r} is not a valid Kubernetes name", field=field)
    assert isinstance(name, str) and isinstance(namespace, str)
    spec = document.get("spec")
    if not isinstance(spec, Mapping):
        raise ConfigError("spec is required and must be a mapping", field="spec")
    errors = sorted(_spec_validator().iter_errors(spec), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise ConfigErrors(
            [
                ConfigError(
                    "unknown field (misspelt?)" if error.validator == "additionalProperties" else error.message,
                    field=_field(error),
                )
                for error in errors
            ]
        )

    problems = Problems()
    rules: list[Rule] = []
    seen: set[str] = set()
    for index, raw_rule in enumerate(spec.get("rules", [])):
        with problems.check():
            rule = _parse_rule(raw_rule, f"spec.rules[{index}]")
            if rule.name in seen:
                raise ConfigError(f"duplicate rule name {rule.name!r}", field=f"spec.rules[{index}].name")
            seen.add(rule.name)
            rules.append(rule)
    hosts: list[str] = []
    for index, host in enumerate(spec["hosts"]):
        with problems.check():
            hosts.append(_parse_host(host, f"spec.hosts[{index}]"))
    problems.raise_any()

    providers = spec.get("identity", {}).get("providers")
    return AccessPolicy(
        ref=PolicyRef(namespace=namespace, name=name, source=source),
        hosts=tuple(hosts),
        mode=Mode(spec.get("mode", Mode.ENFORCE)),
        default_action=Action(spec.get("defaultAction", Action.DENY)),
        default_action_set="defaultAction" in spec,
        rules=tuple(rules),
        providers=tuple(providers) if providers is not None else None,
    )


def _parse_host(host: str, field: str) -> str:
    host = host.strip().lower()
    if host == "*":
        return host
    bare = host[2:] if host.startswith("*.") else host
    if ":" in bare or "/" in bare or not _HOST_LABELS.match(bare):
        raise ConfigError(
            f"{host!r} is not a host name: use 'name.example.com', '*.example.com' or '*' (ports are ignored)",
            field=field,
        )
    return host


def _parse_rule(raw: Mapping[str, Any], field: str) -> Rule:
    """One rule; every field is checked, and all its errors are reported together."""
    to = raw.get("to", {})
    source = raw.get("from", {})
    problems = Problems()
    parsed: dict[str, Any] = {}
    fields: tuple[tuple[str, Callable[[Any, str], Any], Mapping[str, Any], str], ...] = (
        ("methods", _methods, to, "methods"),
        ("not_methods", _methods, to, "notMethods"),
        ("paths", _paths, to, "paths"),
        ("not_paths", _paths, to, "notPaths"),
        ("subjects", _patterns, source, "subjects"),
        ("groups", _patterns, source, "groups"),
        ("roles", _patterns, source, "roles"),
        ("principals", _patterns, source, "principals"),
        ("ip_blocks", _networks, source, "ipBlocks"),
        ("not_ip_blocks", _networks, source, "notIpBlocks"),
    )
    for name, parse, section, key in fields:
        with problems.check():
            where = f"{field}.{'to' if section is to else 'from'}.{key}"
            parsed[name] = parse(section.get(key, []), where)
    conditions: list[Condition] = []
    for index, condition in enumerate(raw.get("when", [])):
        with problems.check():
            conditions.append(_condition(condition, f"{field}.when[{index}]"))
    problems.raise_any()
    return Rule(
        name=raw["name"],
        action=Action(raw["action"]),
        authenticated=source.get("authenticated"),
        when=tuple(conditions),
        **parsed,
    )


def _methods(values: list[str], field: str) -> tuple[str, ...]:
    out = []
    problems = Problems()
    for index, value in enumerate(values):
        method = value.upper()
        with problems.check():
            if method != "*" and not _METHOD.match(method):
                raise ConfigError(f"{value!r} is not an HTTP method", field=f"{field}[{index}]")
        out.append(method)
    problems.raise_any()
    return tuple(out)


def check_pattern(value: str, field: str) -> None:
    """A pattern is exact, ``prefix*``, ``*suffix`` or ``*``; a ``*`` anywhere else is an error."""
    inner = value[1:-1] if len(value) > 1 else ""
    if "*" in inner or value == "**":
        raise ConfigError(f"{value!r}: '*' may only stand alone, at the start, or at the end of a pattern", field=field)


def _patterns(values: list[str], field: str) -> tuple[str, ...]:
    problems = Problems()
    for index, value in enumerate(values):
        with problems.check():
            check_pattern(value, f"{field}[{index}]")
    problems.raise_any()
    return tuple(values)


def _paths(values: list[str], field: str) -> tuple[str, ...]:
    problems = Problems()
    for index, value in enumerate(values):
        with problems.check():
            _path(value, f"{field}[{index}]")
    problems.raise_any()
    return tuple(values)


def _path(value: str, item: str) -> None:
    check_pattern(value, item)
    if value == "*" or value.startswith("*"):
        return
    if not value.startswith("/"):
        raise ConfigError(f"{value!r}: a path pattern starts with '/' or '*'", field=item)
    literal = value[:-1] if value.endswith("*") else value
    try:
        canonical_form = canonical.canonical_path(literal)
    except canonical.RequestRejected as error:
        raise ConfigError(f"{value!r} can never match: {error.message}", field=item) from error
    # Requests are matched in canonical form, so a non-canonical pattern would never match.
    if canonical_form != literal:
        raise ConfigError(
            f"{value!r} is not in canonical form and would never match; write {canonical_form!r}", field=item
        )


def _networks(values: list[str], field: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    out = []
    problems = Problems()
    for index, value in enumerate(values):
        try:
            out.append(ipaddress.ip_network(value, strict=False))
        except ValueError:
            problems.errors.append(
                ConfigError(f"{value!r} is not an IP address or CIDR block", field=f"{field}[{index}]")
            )
    problems.raise_any()
    return tuple(out)


def _condition(raw: Mapping[str, Any], field: str) -> Condition:
    claim, header = raw.get("claim"), raw.get("header")
    if (claim is None) == (header is None):
        raise ConfigError("a condition names exactly one of 'claim' or 'header'", field=field)
    values, not_values = raw.get("values", []), raw.get("notValues", [])
    if not values and not not_values:
        raise ConfigError("a condition needs 'values' or 'notValues'", field=field)
    _patterns(values, f"{field}.values")
    _patterns(not_values, f"{field}.notValues")
    if header is not None:
        for key, items in (("values", values), ("notValues", not_values)):
            for index, value in enumerate(items):
                if "," in value:
                    # Each copy of a repeated header is matched on its own (Envoy joins copies with
                    # commas), so a value holding a comma could never match.
                    raise ConfigError(
                        f"{value!r}: header values are matched per copy and cannot contain ','",
                        field=f"{field}.{key}[{index}]",
                    )
    return Condition(
        claim=claim,
        header=header.lower() if header else None,
        values=tuple(values),
        not_values=tuple(not_values),
    )
