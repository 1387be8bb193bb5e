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
    return _schema_problem(value, audit_pb2.AuditRecord.DESCRIPTOR, "")


_SCALARS = {
    descriptor.FieldDescriptor.TYPE_STRING: (str,),
    descriptor.FieldDescriptor.TYPE_BOOL: (bool,),
}


def _schema_problem(value: dict[str, Any], message: Any, path: str) -> str:
    """The first way ``value`` departs from the proto's JSON mapping (names and types), or "".

    Equivalent, for the types the audit schema uses, to ``json_format.ParseDict`` — which is pure
    Python and made verifying a million records take minutes.
    """
    fields = message.fields_by_name
    for key, item in value.items():
        field = fields.get(key)
        where = f"{path}{key}"
        if field is None:
            return f"unknown field {where!r}"
        if item is None and field.type == descriptor.FieldDescriptor.TYPE_MESSAGE:
            continue  # JSON null: field unset
        if field.is_repeated and not isinstance(item, list):
            return f"{where!r} must be a list"
        items = item if field.is_repeated else [item]
        for element in items:
            if field.type == descriptor.FieldDescriptor.TYPE_MESSAGE:
                if not isinstance(element, dict):
                    return f"{where!r} must be an object"
                problem = _schema_problem(element, field.message_type, where + ".")
                if problem:
                    return problem
            elif field.type in _SCALARS:
                if not isinstance(element, _SCALARS[field.type]):
                    return f"{where!r} has the wrong type"
            elif not isinstance(element, int) or isinstance(element, bool):
                return f"{where!r} must be an integer"
    return ""
