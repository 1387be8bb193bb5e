"""Turn a :class:`~authz.decision.Decision` into Envoy's ``CheckResponse``: the outgoing edge.

Called by :mod:`authz.service`. Allowed requests get the trusted identity headers for the
upstream; every client-sent header in the reserved ``x-tollgate-`` namespace, in any spelling
(``x_tollgate_subject``, which WSGI and CGI servers read as the same name), is removed or
overwritten, so the upstream can believe them. Values are never cut short: subjects and
principals are plain printable ASCII (checked by the identity stage), groups and roles an RFC 9651
structured-field list of strings (``"staff", "admins"``; display strings ``%"…"`` for non-ASCII), so
a group named ``staff,admins`` stays one group. Denied requests get a status, a small JSON body
with no internals, and for 401 a ``WWW-Authenticate`` challenge. Both carry dynamic metadata
(decision id, policy, rule, reason) under ``envoy.filters.http.ext_authz`` for Envoy's access log.
"""

from __future__ import annotations

import dataclasses
import json
import secrets

from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2
from google.rpc import code_pb2, status_pb2
from http_sfv import item as sf_item
from http_sfv import list as sf_list
from http_sfv import types as sf_types

from authz import decision as decision_model
from authz.identity import model as identity_model

__all__ = [
    "IDENTITY_HEADERS",
    "IDENTITY_VALUES",
    "allow_key",
    "client_reserved",
    "denied_body",
    "denied_status",
    "encode",
    "encode_failed",
    "identity_headers",
    "to_check_response",
]

SUBJECT = "x-tollgate-subject"
GROUPS = "x-tollgate-groups"
ROLES = "x-tollgate-roles"
METHOD = "x-tollgate-auth-method"
PRINCIPAL = "x-tollgate-principal"
DECISION_ID = "x-tollgate-decision-id"  # the audit record's id; the request id is Envoy's x-request-id
# Every header Tollgate vouches for. Whatever a client sends under these names never reaches the
# upstream: each is either overwritten with Tollgate's value or removed.
IDENTITY_VALUES = (SUBJECT, GROUPS, ROLES, METHOD, PRINCIPAL)  # the caller's; removed for anonymous callers
IDENTITY_HEADERS = (*IDENTITY_VALUES, DECISION_ID)

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_ERROR_NAMES = {400: "bad_request", 401: "unauthenticated", 403: "forbidden", 500: "internal_error", 503: "unavailable"}
_RPC_CODES = {
    400: code_pb2.INVALID_ARGUMENT,
    401: code_pb2.UNAUTHENTICATED,
    403: code_pb2.PERMISSION_DENIED,
    503: code_pb2.UNAVAILABLE,
}
_JSON = base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key="content-type", value="application/json"))
_CHALLENGE = base_pb2.HeaderValueOption(
    header=base_pb2.HeaderValue(key="www-authenticate", value='Bearer realm="tollgate"')
)
_NO_STORE = base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key="cache-control", value="no-store"))
_FAILED: bytes = external_auth_pb2.CheckResponse(
    status=status_pb2.Status(code=code_pb2.INTERNAL),
    denied_response=external_auth_pb2.DeniedHttpResponse(
        status=http_status_pb2.HttpStatus(code=500),
        headers=[_JSON, _NO_STORE],
        body='{"error":"internal_error","reason":"authz_error","request_id":""}',
    ),
).SerializeToString()


def _structured_list(values: tuple[str, ...]) -> str:
    """``("staff", "a,b")`` → ``"staff", "a,b"``: an RFC 9651 List of Strings, or of Display
    Strings for values that are not printable ASCII. Values were checked by the identity stage
    (:func:`authz.identity.model.check_identity_values`)."""
    if not values:
        return ""
    items = sf_list.List()
    for value in values:
        printable_ascii = value.isascii() and value.isprintable()
        items.append(sf_item.Item(value if printable_ascii else sf_types.DisplayString(value)))
    return str(items)


def _plain(value: str) -> str:
    """A plain header value; anything the identity stage should have refused is a fault, not a cut."""
    if not (value.isascii() and value.isprintable()):
        raise ValueError("an identity value is not printable ASCII")
    return value


def _metadata(decision: decision_model.Decision, metadata: struct_pb2.Struct) -> None:
    # Assigning fields one by one is about twice as fast as Struct.update() on this hot path.
    fields = metadata.fields
    fields["decision_id"].string_value = decision.decision_id
    fields["reason"].string_value = decision.reason
    fields["policy"].string_value = decision.policy
    fields["rule"].string_value = decision.rule
    if decision.dry_run is not None:
        fields["dry_run_decision"].string_value = "allow" if decision.dry_run.allowed else "deny"
        fields["dry_run_rule"].string_value = f"{decision.dry_run.policy}#{decision.dry_run.rule}".rstrip("#")


# The allow answers of one (identity, verdict) pair differ only in the decision id, which appears
# twice (the x-tollgate-decision-id header and the dynamic metadata) and always has the same length
# (a UUID). So each pair's answer is serialized once, by protobuf, with a placeholder id, and later
# answers splice the real id into those bytes. The placeholder is random per process, so no header
# value can collide with it on purpose; a template is kept only if it holds exactly two copies.
_PLACEHOLDER = secrets.token_hex(18)
_ID_BYTES = len(_PLACEHOLDER)
Template = tuple[bytes, bytes, bytes]
_templates: dict[tuple[object, ...], Template | None] = {}
_MAX_TEMPLATES = 10_000


def encode(decision: decision_model.Decision) -> bytes:
    """The serialized ``CheckResponse`` for ``decision``: the same meaning as
    ``to_check_response(decision).SerializeToString()``, built from templates."""
    decision_id = decision.decision_id.encode()
    if len(decision_id) != _ID_BYTES:
        return _serialized(decision)
    if not decision.allowed:
        return _encode_denied(decision, decision_id)
    identity = decision.identity
    key = allow_key(decision)
    try:
        template = _templates[key]
    except KeyError:
        template = _remember(_templates, key, _template(decision))
    if template is None:
        return _serialized(decision)
    head, middle, tail = template
    reserved = decision.request.reserved_headers() if decision.request is not None else ()
    removals = client_reserved(reserved, identity) if reserved else None
    if removals:
        # A second encoding that only adds to headers_to_remove: parsers merge it (repeated fields append).
        extra = external_auth_pb2.CheckResponse()
        extra.ok_response.headers_to_remove.extend(removals)
        return b"".join((head, decision_id, middle, decision_id, tail, extra.SerializeToString()))
    return b"".join((head, decision_id, middle, decision_id, tail))


def allow_key(decision: decision_model.Decision) -> tuple[object, ...]:
    """What an allow answer depends on besides its decision id and the client's reserved headers:
    the key of the answer templates, here and in :mod:`authz.http_response`."""
    identity = decision.identity
    return (
        identity.authenticated,
        identity.method,
        identity.subject,
        identity.groups,
        identity.roles,
        identity.principal,
        decision.reason,
        decision.policy,
        decision.rule,
        decision.dry_run,
    )


def encode_failed(decision: decision_model.Decision) -> bytes:
    """The answer for a decision whose first answer could not be built (now a 500 deny): encoded
    as any deny, or, should even that fail, a fixed 500 deny that holds no request data."""
    try:
        return encode(decision)
    except Exception:  # the fixed answer below cannot fail
        return _FAILED


def client_reserved(reserved: tuple[str, ...], identity: identity_model.Identity) -> list[str]:
    """Of the client-sent headers in the reserved namespace, those this answer must remove. Names
    it sets are left out (it overwrites them): Envoy would remove Tollgate's own value too."""
    own = {DECISION_ID}
    if identity.authenticated:
        own.update(name for name, _ in identity_headers(identity)[0])  # only requests that sent such headers
    return [name for name in reserved if name not in own]


# Denied answers differ by the decision id (once, in the metadata) and the JSON body, which holds
# the request id and so has no fixed length. Protobuf parsers merge the encodings of a message
# that are concatenated (embedded messages merge field by field), so a denied answer is: its fixed
# part, serialized once per (status, reason, policy, rule, dry run) without a body and with the
# placeholder id, then a second encoding that holds only the body.
DeniedTemplate = tuple[bytes, bytes, str]  # before the id, after it, the body's fixed start
_denied_templates: dict[tuple[object, ...], DeniedTemplate | None] = {}


def _encode_denied(decision: decision_model.Decision, decision_id: bytes) -> bytes:
    status = denied_status(decision)
    key = (status, decision.reason, decision.policy, decision.rule, decision.dry_run)
    try:
        template = _denied_templates[key]
    except KeyError:
        template = _remember(_denied_templates, key, _denied_template(decision, status))
    if template is None:
        return _serialized(decision)
    head, tail, prefix = template
    body = external_auth_pb2.CheckResponse(
        denied_response=external_auth_pb2.DeniedHttpResponse(body=denied_body(status, decision, prefix))
    ).SerializeToString()
    return b"".join((head, decision_id, tail, body))


def _template(decision: decision_model.Decision) -> Template | None:
    # Without the request: its client-sent reserved headers are added per answer (_removals).
    parts = _cut(_ok(dataclasses.replace(decision, decision_id=_PLACEHOLDER, request=None)), copies=2)
    return None if parts is None else (parts[0], parts[1], parts[2])


def _denied_template(decision: decision_model.Decision, status: int) -> DeniedTemplate | None:
    parts = _cut(_denied(dataclasses.replace(decision, decision_id=_PLACEHOLDER), status, body=""), copies=1)
    return None if parts is None else (parts[0], parts[1], _body_prefix(status, decision.reason))


def _cut(reply: external_auth_pb2.CheckResponse, *, copies: int) -> list[bytes] | None:
    """The serialized ``reply`` cut at the placeholder id; None unless it holds exactly ``copies``."""
    parts: list[bytes] = reply.SerializeToString().split(_PLACEHOLDER.encode())
    return parts if len(parts) == copies + 1 else None


def _remember[T](cache: dict[tuple[object, ...], T], key: tuple[object, ...], template: T) -> T:
    """Keep a new template (``None``: the answer cannot be templated); bounded by emptying."""
    if len(cache) >= _MAX_TEMPLATES:
        cache.clear()
    cache[key] = template
    return template


def _serialized(decision: decision_model.Decision) -> bytes:
    data: bytes = to_check_response(decision).SerializeToString()
    return data


def to_check_response(decision: decision_model.Decision) -> external_auth_pb2.CheckResponse:
    if decision.allowed:
        return _ok(decision)
    status = denied_status(decision)
    return _denied(decision, status, body=denied_body(status, decision))


def _ok(decision: decision_model.Decision) -> external_auth_pb2.CheckResponse:
    reply = external_auth_pb2.CheckResponse()
    reply.status.code = code_pb2.OK
    ok = reply.ok_response
    identity = decision.identity
    if identity.authenticated:
        values, removals = identity_headers(identity)
    else:
        values, removals = (), IDENTITY_VALUES
    for name, value in values:
        _set(ok, name, value)
    # Removal is used only for names we do not set: Envoy applies `headers` and
    # `headers_to_remove` independently, and a name in both would lose Tollgate's value.
    ok.headers_to_remove.extend(removals)
    if decision.request is not None:
        ok.headers_to_remove.extend(client_reserved(decision.request.reserved_headers(), identity))
    _set(ok, DECISION_ID, decision.decision_id)
    _metadata(decision, reply.dynamic_metadata)
    return reply


def _set(ok: external_auth_pb2.OkHttpResponse, name: str, value: str) -> None:
    option = ok.headers.add()
    option.header.key = name
    option.header.value = value
    option.append_action = _OVERWRITE


Headers = tuple[tuple[tuple[str, str], ...], tuple[str, ...]]


def identity_headers(identity: identity_model.Identity) -> Headers:
    candidates = (
        (SUBJECT, _plain(identity.subject)),
        (GROUPS, _structured_list(identity.groups)),
        (ROLES, _structured_list(identity.roles)),
        (METHOD, _plain(identity.method)),
        (PRINCIPAL, _plain(identity.principal)),
    )
    values = tuple((name, value) for name, value in candidates if value)
    removals = tuple(name for name, value in candidates if not value)
    return values, removals


def denied_status(decision: decision_model.Decision) -> int:
    return decision.status if decision.status in _ERROR_NAMES else 403


def denied_body(status: int, decision: decision_model.Decision, prefix: str = "") -> str:
    """The denied answer's JSON body: no internals, the reason and the request id to quote.

    ``{"error":…,"reason":…,"request_id":…}``; ``prefix`` is :func:`_body_prefix`'s, if known.
    """
    request_id = decision.request.request_id if decision.request else ""
    return (prefix or _body_prefix(status, decision.reason)) + json.dumps(request_id) + "}"


def _body_prefix(status: int, reason: str) -> str:
    return '{"error":%s,"reason":%s,"request_id":' % (json.dumps(_ERROR_NAMES[status]), json.dumps(reason))  # noqa: UP031


def _denied(decision: decision_model.Decision, status: int, *, body: str) -> external_auth_pb2.CheckResponse:
    headers = [_JSON, _NO_STORE]
    if status == 401:
        headers.append(_CHALLENGE)
    reply = external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=_RPC_CODES.get(status, code_pb2.INTERNAL)),
        denied_response=external_auth_pb2.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=status), headers=headers, body=body
        ),
    )
    _metadata(decision, reply.dynamic_metadata)
    return reply
