"""One decision → one audit record (a plain dict), and the canonical JSON bytes of a record.

Called by the recorder off the request path. What is written, and what never is:

- Subject, email and source IP are pseudonymized (:mod:`authz.audit.pseudonym`).
- No header values except the User-Agent; no query values (parameter names only); never a
  token, an Authorization or Cookie header, an API key or a certificate.
- The path is the canonical one the decision was made on.

Canonical JSON: ``json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)``
encoded as UTF-8 plus a newline; the verifier re-encodes every record and rejects any line
that differs (a re-serialized record).
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from typing import Any
from urllib import parse

import orjson
from google.protobuf import descriptor

from authz import decision as decision_model
from authz.audit import pseudonym
from authz.audit.schema.tollgate.audit.v1 import audit_pb2

__all__ = [
    "SCHEMA_VERSION",
    "canonical",
    "decision_record",
    "encode",
    "format_time",
    "is_canonical",
    "schema_problem",
]

SCHEMA_VERSION = 1


def canonical(record: Mapping[str, Any]) -> bytes:
    """The reference encoding: what the verifier demands of every line."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


_ORJSON_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE


def encode(record: Mapping[str, Any]) -> bytes:
    """The writer's encoding: byte for byte :func:`canonical`, by orjson (several times faster than
    the standard library's encoder; tests compare the two on every kind of record and on
    generated text). What orjson cannot represent (integers beyond 64 bits, lone surrogates) takes
    the reference path."""
    try:
        return orjson.dumps(record, option=_ORJSON_OPTIONS)
    except TypeError:
        return canonical(record)


_second: tuple[int, str] = (-1, "")  # the last second formatted: records come many per second


def format_time(time_ms: int) -> str:
    """RFC 3339 UTC with milliseconds: ``2026-11-23T20:51:37.944Z``."""
    global _second  # noqa: PLW0603 - a one-entry cache, replaced as one tuple (never seen half-set)
    second, millis = divmod(time_ms, 1000)
    cached_second, text = _second
    if second != cached_second:
        text = datetime.datetime.fromtimestamp(second, tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        _second = (second, text)
    return f"{text}{millis:03d}Z"


def _outcome(decision: decision_model.Decision) -> str:
    if decision.allowed:
        return "allow"
    # Failures of Tollgate or its dependencies are errors, not policy decisions.
    return "error" if decision.status >= 500 else "deny"


def _query_names(query: str) -> list[str]:
    names = [parse.unquote_plus(pair.split("=", 1)[0]) for pair in query.split("&") if pair]
    return sorted(set(names))


def is_canonical(line: bytes, parsed: Mapping[str, Any]) -> bool:
    """``canonical(parsed) == line`` (json.loads keeps the line's key order, so a record whose keys
    were reordered, or that was re-serialized in any other way, compares unequal). The fast
    encoding decides the usual case; a mismatch is confirmed with the reference itself, so values
    the writer never produces (floats, say) are judged exactly as the reference would."""
    return encode(parsed) == line or canonical(parsed) == line


def decision_record(
    decision: decision_model.Decision, time_ms: int, pseudonyms: pseudonym.Pseudonymizer
) -> dict[str, Any]:
    """Every field but the log's own (seq, prev, origin), which the log adds when it appends."""
    identity = decision.identity
    request = decision.request
    dry = decision.dry_run
    record: dict[str, Any] = {
        "v": SCHEMA_VERSION,
        "kind": "decision",
        "id": decision.decision_id,
        "time": format_time(time_ms),
        "time_ms": time_ms,
        "decision": _outcome(decision),
        "status": decision.status,
        "reason": decision.reason,
        "message": decision.message,
        "policy": decision.policy,
        "rule": decision.rule,
        "revision": decision.revision,
        "identity": {
            "authenticated": identity.authenticated,
            "email": pseudonyms(identity.email),
            "groups": list(identity.groups),
            "issuer": identity.issuer,
            "key_id": identity.key_id,
            "method": identity.method,
            "mfa": identity.mfa,
            "principal": identity.principal,
            "provider": identity.provider or decision.provider,
            "roles": list(identity.roles),
            "subject": pseudonyms(identity.subject),
        },
        "request": {
            "destination": request.destination if request else "",
            "host": request.host if request else "",
            "method": request.method if request else "",
            "path": request.path if request else "",
            "protocol": request.protocol if request else "",
            "query_params": _query_names(request.query) if request and request.query else [],
            "request_id": request.request_id if request else "",
            "source_ip": pseudonyms(request.source_ip) if request else "",
            "user_agent": request.headers.get("user-agent", "")[:512] if request else "",
        },
        "trace": {"span_id": decision.span_id, "trace_id": decision.trace_id},
        "latency_us": decision.duration_ns // 1000,
        "pseudonym_key": pseudonyms.key_id,
    }
    if dry is not None:
        record["dry_run"] = {
            "decision": "allow" if dry.allowed else "deny",
            "policy": dry.policy,
            "reason": dry.reason,
            "rule": dry.rule,
        }
    return record


def schema_problem(value: dict[str, Any]) -> str:
    """The first way a parsed record departs from the audit schema (``proto/tollgate/audit/v1``,
    in protobuf's JSON mapping: field names and types), or "" if none."""
    return _schema_problem(value, _SCHEMA, "")


# A field of the schema as the check reads it: (kind, repeated, the fields of a message's type).
# Kinds: a message, one of the Python types a scalar must be, or an integer (any other scalar).
_Fields = dict[str, tuple[object, bool, "_Fields | None"]]
_MESSAGE, _INTEGER = object(), object()
_SCALARS = {descriptor.FieldDescriptor.TYPE_STRING: str, descriptor.FieldDescriptor.TYPE_BOOL: bool}


def _compile(message: Any, known: dict[str, _Fields]) -> _Fields:
    """The schema's fields as plain dicts, read from the descriptors once: looking fields and their
    types up in protobuf's descriptors for every record cost most of ``tollgate audit verify``."""
    if message.full_name in known:
        return known[message.full_name]
    fields: _Fields = {}
    known[message.full_name] = fields  # before the fields: a type may contain itself
    for field in message.fields:
        if field.type == descriptor.FieldDescriptor.TYPE_MESSAGE:
            fields[field.name] = (_MESSAGE, field.is_repeated, _compile(field.message_type, known))
        else:
            fields[field.name] = (_SCALARS.get(field.type, _INTEGER), field.is_repeated, None)
    return fields


_SCHEMA = _compile(audit_pb2.AuditRecord.DESCRIPTOR, {})


def _schema_problem(value: dict[str, Any], fields: _Fields, path: str) -> str:
    """The first way ``value`` departs from the proto's JSON mapping (names and types), or "".

    Equivalent, for the types the audit schema uses, to ``json_format.ParseDict`` — which is pure
    Python and made verifying a million records take minutes.
    """
    for key, item in value.items():
        field = fields.get(key)
        if field is None:
            return f"unknown field {path + key!r}"
        kind, repeated, inner = field
        if item is None and kind is _MESSAGE:
            continue  # JSON null: field unset
        if repeated and not isinstance(item, list):
            return f"{path + key!r} must be a list"
        for element in item if repeated else (item,):
            if kind is _MESSAGE:
                if not isinstance(element, dict):
                    return f"{path + key!r} must be an object"
                assert inner is not None
                problem = _schema_problem(element, inner, path + key + ".")
                if problem:
                    return problem
            elif kind is _INTEGER:
                if not isinstance(element, int) or isinstance(element, bool):
                    return f"{path + key!r} must be an integer"
            elif not isinstance(element, kind):  # type: ignore[arg-type]
                return f"{path + key!r} has the wrong type"
    return ""
