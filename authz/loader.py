"""Load configuration files into one immutable, compiled :class:`Snapshot`.

Called by ``tollgate serve`` at start and on every change (hot reload), and by ``tollgate policy``.
A path is a YAML file or a directory of ``*.yaml``/``*.yml`` files (hidden entries skipped, so a
Kubernetes ConfigMap mount with its ``..data`` links loads once). Every document must be a
``tollgate.dev/v1alpha1`` ``AccessPolicy`` or ``IdentityProvider``.

Errors are collected across all files and raised together as :class:`ConfigErrors`, each naming
file, document and field. A load either produces a whole new snapshot or nothing at all: the caller
keeps its last good snapshot on error.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
import time
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from authz.errors import ConfigError, ConfigErrors
from authz.identity import apikey
from authz.identity import providers as identity_providers
from authz.policy import compile as compiled
from authz.policy import model

__all__ = ["Document", "Snapshot", "build_snapshot", "config_files", "load", "parse_documents", "read_documents"]

_KINDS = ("AccessPolicy", "IdentityProvider")
_MAX_FILE_BYTES = 4 * 1024 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class Document:
    file: str
    index: int  # 1-based position in the file
    body: Mapping[str, Any]

    @property
    def label(self) -> str:
        kind = self.body.get("kind", "?")
        metadata = self.body.get("metadata")
        name = metadata.get("name", "?") if isinstance(metadata, Mapping) else "?"
        namespace = metadata.get("namespace", "default") if isinstance(metadata, Mapping) else "?"
        return f"document {self.index} ({kind} {namespace}/{name})"


@dataclasses.dataclass(frozen=True, slots=True)
class Snapshot:
    """One consistent configuration: swapped in whole, never edited."""

    index: compiled.PolicyIndex
    policies: tuple[model.AccessPolicy, ...]
    providers: tuple[identity_providers.ProviderSpec, ...]
    conflicts: tuple[compiled.Conflict, ...]
    revision: str
    files: tuple[str, ...]  # configuration files, and files they refer to (keys, secrets)
    # time.time_ns() as reading its files began (0: not read from files); not part of its identity
    read_ns: int = dataclasses.field(default=0, compare=False)


def config_files(path: pathlib.Path) -> list[pathlib.Path]:
    """The YAML files ``path`` names, in a fixed order."""
    if path.is_dir():
        return sorted(
            p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and not p.name.startswith(".") and p.is_file()
        )
    return [path]


def read_documents(path: pathlib.Path) -> tuple[list[Document], str, list[ConfigError]]:
    """Parse every document under ``path``: the documents, a revision hash of the raw bytes, and
    the errors of the files that could not be read (the others' documents are still returned, so
    one broken file does not hide the problems of the rest)."""
    if not path.exists():
        raise ConfigErrors([ConfigError("no such file or directory", file=str(path))])
    digest = hashlib.sha256()
    documents: list[Document] = []
    errors: list[ConfigError] = []
    for file in config_files(path):
        try:
            raw = file.read_bytes()
        except OSError as error:
            errors.append(ConfigError(f"cannot read: {error.strerror}", file=str(file)))
            continue
        digest.update(file.name.encode() + b"\0" + raw + b"\0")
        found, problems = parse_documents(str(file), raw)
        documents += found
        errors += problems
    return documents, digest.hexdigest()[:12], errors


def parse_documents(name: str, raw: bytes) -> tuple[list[Document], list[ConfigError]]:
    """The YAML documents of one file (``name`` labels them in messages): a ConfigMap key read
    through the API is parsed exactly as a file is."""
    if len(raw) > _MAX_FILE_BYTES:
        return [], [ConfigError(f"file larger than {_MAX_FILE_BYTES} bytes", file=name)]
    try:
        bodies = list(yaml.load_all(raw, Loader=_LOADER))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        return [], [ConfigError(f"{where}invalid YAML: {problem}", file=name)]
    documents, errors = [], []
    for position, body in enumerate(bodies, start=1):
        if body is None:
            continue
        if not isinstance(body, Mapping):
            errors.append(ConfigError("a document must be a mapping", file=name, document=f"document {position}"))
            continue
        documents.append(Document(name, position, body))
    return documents, errors


def build_snapshot(
    documents: Iterable[Document],
    revision: str,
    *,
    complete: bool = True,
    files: Mapping[str, bytes] | None = None,
) -> Snapshot:
    """Validate and compile documents; raise :class:`ConfigErrors` listing every problem.

    ``complete``: these are all the documents (False when some file could not be read: then a
    provider a policy names may be in that file, and is not reported missing). ``files``: the
    files providers name, by name, when they come from the Kubernetes API instead of a disk
    (:mod:`authz.kube`); None reads them from beside the document's file."""
    policies: list[model.AccessPolicy] = []
    providers: list[identity_providers.ProviderSpec] = []
    errors: list[ConfigError] = []
    seen: dict[tuple[str, str, str], Document] = {}
    documents = list(documents)
    for document in documents:
        try:
            kind = _check_header(document.body)
            ref = _identity_of(document.body)
            key = (kind, *ref)
            if key in seen:
                first = seen[key]
                raise ConfigError(
                    f"{kind} {ref[0]}/{ref[1]} is also defined in {first.file} document {first.index}",
                    field="metadata.name",
                )
            seen[key] = document
            source = f"{document.file}#{document.index}"
            if kind == "AccessPolicy":
                policies.append(model.parse_access_policy(document.body, source=source))
            else:
                spec = identity_providers.parse_provider(document.body, source=source)
                providers.append(_read_provider_files(spec, pathlib.Path(document.file).parent, files))
        except ConfigErrors as found:
            errors.extend(error.located(file=document.file, document=document.label) for error in found.errors)
        except ConfigError as error:
            errors.append(error.located(file=document.file, document=document.label))
    named: dict[str, identity_providers.ProviderSpec] = {}
    for provider in providers:
        taken = named.setdefault(provider.name, provider)
        if taken is not provider:
            # Policies and the resolver name a provider by its name alone: two of one name would
            # let one silently stand in for the other.
            file, _, position = provider.source.rpartition("#")
            errors.append(
                ConfigError(
                    f"IdentityProvider name {provider.name!r} is also used by {taken.namespace}/{taken.name} "
                    f"({taken.source}); provider names are unique across namespaces",
                    file=file,
                    document=f"document {position} (IdentityProvider {provider.namespace}/{provider.name})",
                    field="metadata.name",
                )
            )
    known = set(named)
    for policy in policies if complete else ():
        for item, name in enumerate(policy.providers or ()):
            if name not in known:
                file, _, position = policy.ref.source.rpartition("#")
                errors.append(
                    ConfigError(
                        f"no IdentityProvider named {name!r} is defined",
                        file=file,
                        document=f"document {position} (AccessPolicy {policy.ref})",
                        field=f"spec.identity.providers[{item}]",
                    )
                )
    if errors:
        raise ConfigErrors(errors)
    index, conflicts = compiled.compile_policies(policies)
    return Snapshot(
        index=index,
        policies=tuple(policies),
        providers=tuple(sorted(providers, key=lambda p: p.name)),
        conflicts=tuple(conflicts),
        revision=revision,
        files=tuple(sorted({d.file for d in documents} | {f for p in providers for f in _referenced_files(p)})),
    )


def _read_provider_files(
    spec: identity_providers.ProviderSpec, base: pathlib.Path, files: Mapping[str, bytes] | None
) -> identity_providers.ProviderSpec:
    """Read the files a provider refers to now, so a broken file fails the load, not a request.

    Relative paths are relative to the directory of the file that holds the document (or name an
    entry of ``files``). A Secret reference is the operator's to resolve: a document that still
    carries one is refused.
    """
    if (spec.api_key and spec.api_key.keys_secret_ref) or (spec.jwt and spec.jwt.hmac_secret_ref):
        field = "spec.apiKey.keysSecretRef" if spec.api_key else "spec.jwt.hmacSecretRef"
        raise ConfigError(
            "names a Kubernetes Secret, which only the operator resolves; in configuration files name a file",
            field=field,
        )
    if spec.api_key is not None:
        field = "spec.apiKey.keysFile"
        keys_file = spec.api_key.keys_file if files is not None else str(base / spec.api_key.keys_file)
        text = _provider_file(keys_file, files, field).decode("utf-8", "replace")
        settings = dataclasses.replace(spec.api_key, keys_file=keys_file, keys=apikey.parse_keys(text, keys_file))
        return dataclasses.replace(spec, api_key=settings)
    if spec.jwt is not None and spec.jwt.hmac_secret_file:
        field = "spec.jwt.hmacSecretFile"
        secret_file = spec.jwt.hmac_secret_file if files is not None else str(base / spec.jwt.hmac_secret_file)
        secret = _provider_file(secret_file, files, field).strip()
        if len(secret) < 32:
            raise ConfigError("an HMAC secret must be at least 32 bytes", field=field)
        return dataclasses.replace(
            spec, jwt=dataclasses.replace(spec.jwt, hmac_secret_file=secret_file, hmac_secret=secret)
        )
    return spec


def _provider_file(name: str, files: Mapping[str, bytes] | None, field: str) -> bytes:
    if files is not None:
        if name not in files:
            raise ConfigError(f"cannot read {name}: not in the published Secret", field=field)
        return files[name]
    try:
        return pathlib.Path(name).read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read {name}: {error.strerror}", field=field) from error


def _referenced_files(spec: identity_providers.ProviderSpec) -> list[str]:
    if spec.api_key is not None:
        return [spec.api_key.keys_file]
    if spec.jwt is not None and spec.jwt.hmac_secret_file:
        return [spec.jwt.hmac_secret_file]
    return []


def load(path: pathlib.Path) -> Snapshot:
    """The snapshot of the configuration at ``path``, or :class:`ConfigErrors` with every problem
    of every file (each naming file, document and field)."""
    started = time.time_ns()
    documents, revision, errors = read_documents(path)
    try:
        snapshot = build_snapshot(documents, revision, complete=not errors)
    except ConfigErrors as found:
        raise ConfigErrors(errors + found.errors) from None
    if errors:
        raise ConfigErrors(errors)
    return dataclasses.replace(snapshot, read_ns=started)


def _check_header(body: Mapping[str, Any]) -> str:
    if body.get("apiVersion") != model.API_VERSION:
        raise ConfigError(
            f"apiVersion must be {model.API_VERSION!r}, got {body.get('apiVersion')!r}", field="apiVersion"
        )
    kind = body.get("kind")
    if kind not in _KINDS:
        raise ConfigError(f"kind must be one of {', '.join(_KINDS)}, got {kind!r}", field="kind")
    assert isinstance(kind, str)
    return kind


def _identity_of(body: Mapping[str, Any]) -> tuple[str, str]:
    metadata = body.get("metadata")
    if not isinstance(metadata, Mapping) or not isinstance(metadata.get("name"), str):
        raise ConfigError("metadata.name is required", field="metadata.name")
    return str(metadata.get("namespace", "default")), metadata["name"]


_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
