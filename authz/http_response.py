"""Turn a :class:`~authz.decision.Decision` into the HTTP ext_authz answer: the second edge's outgoing stage.

The same meaning as the gRPC ``CheckResponse`` of :mod:`authz.response`, in the form Envoy's
``http_service`` reads (the generated configuration of :mod:`authz.envoy_bootstrap` names each):

- **allowed** (200): the identity headers (``allowed_upstream_headers``: Envoy sets them on the
  upstream request, replacing any client copy) and ``x-envoy-auth-headers-to-remove``: the identity
  headers this caller has no value for, every client-sent header in the reserved ``x-tollgate-``
  namespace, and every ``x-tollgate-envoy-*`` name (a client copy of one never reached Tollgate,
  since Envoy drops it from the check request, so it is removed whether or not it was sent);
- **denied**: the status, ``content-type``, ``cache-control``, for 401 the ``WWW-Authenticate``
  challenge (``allowed_client_headers``) and the same small JSON body as over gRPC. Envoy treats
  any 5xx from an HTTP authorization server as a failure of the service — with
  ``failure_mode_allow`` that would let the request through — so Tollgate's own 500 and 503 denials
  are sent as 403, with the reason in the body; the audit record keeps the decided status;
- **both**: ``x-tollgate-decision-id``, ``-reason``, ``-policy``, ``-rule`` (and the dry-run
  verdict), which ``dynamic_metadata_from_headers`` turns into Envoy's dynamic metadata under
  ``envoy.filters.http.ext_authz`` for the access log.

Called by :mod:`authz.checks` for every HTTP check. Guarded by tests/unit/test_http_response.py.
"""

from __future__ import annotations

import http
import urllib.parse

from authz import decision as decision_model
from authz import http_request, response

__all__ = ["FAILED", "METADATA_HEADERS", "REMOVE", "encode", "encode_failed"]

REMOVE = "x-envoy-auth-headers-to-remove"
REASON = "x-tollgate-reason"
POLICY = "x-tollgate-policy"
RULE = "x-tollgate-rule"
DRY_RUN_DECISION = "x-tollgate-dry-run-decision"
DRY_RUN_RULE = "x-tollgate-dry-run-rule"
# Response headers Envoy turns into dynamic metadata (the gRPC answer's decision_id, reason, ...).
METADATA_HEADERS = (response.DECISION_ID, REASON, POLICY, RULE, DRY_RUN_DECISION, DRY_RUN_RULE)
_ENVOY_NAMES = tuple(http_request.ENVOY_ATTRIBUTES)
_PHRASES = {status.value: status.phrase for status in http.HTTPStatus}
_FAILED_BODY = b'{"error":"internal_error","reason":"authz_error","request_id":""}'
FAILED = (  # the answer when nothing better can be built: a deny that holds no request data
    b"HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncache-control: no-store\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(_FAILED_BODY), _FAILED_BODY)
)


# The allow answers of one (identity, verdict) pair differ only in the decision id and in the
# client-sent reserved headers to remove, so each pair's answer is built once (identity headers,
# metadata, the removals every such answer has) and later answers only add those two. Bounded by
# emptying; the same key as the gRPC answer's templates (response.allow_key).
Template = tuple[bytes, bytes, tuple[str, ...]]  # before the id, after it up to the removals, the removals
_templates: dict[tuple[object, ...], Template] = {}
_MAX_TEMPLATES = 10_000
_END = b"\r\ncontent-length: 0\r\n\r\n"


def encode(decision: decision_model.Decision) -> bytes:
    """The whole HTTP/1.1 response for ``decision``."""
    if decision.allowed:
        return _encode_allowed(decision)
    lines = [response.DECISION_ID, ": ", decision.decision_id, "\r\n"]
    _metadata(decision, lines)
    status = response.denied_status(decision)
    body = response.denied_body(status, decision).encode()
    sent = 403 if status >= 500 else status  # an HTTP authorization server's 5xx is a failure to Envoy
    lines.append("content-type: application/json\r\ncache-control: no-store\r\n")
    if sent == 401:
        lines.append('www-authenticate: Bearer realm="tollgate"\r\n')
    lines += ("content-length: ", str(len(body)), "\r\n\r\n")
    return f"HTTP/1.1 {sent} {_PHRASES[sent]}\r\n".encode() + "".join(lines).encode() + body


def _encode_allowed(decision: decision_model.Decision) -> bytes:
    identity = decision.identity
    key = response.allow_key(decision)
    template = _templates.get(key)
    if template is None:
        if len(_templates) >= _MAX_TEMPLATES:
            _templates.clear()
        template = _templates[key] = _allowed_template(decision)
    head, middle, remove = template
    reserved = decision.request.reserved_headers() if decision.request is not None else ()
    if reserved:  # a client sent headers in the reserved namespace: remove those too
        extra = [name for name in response.client_reserved(reserved, identity) if name not in remove]
        remove = (*remove, *extra)
    return b"".join((head, decision.decision_id.encode(), middle, ",".join(remove).encode(), _END))


def _allowed_template(decision: decision_model.Decision) -> Template:
    identity = decision.identity
    if identity.authenticated:
        values, removals = response.identity_headers(identity)
    else:
        values, removals = (), response.IDENTITY_VALUES
    lines = ["\r\n"]
    _metadata(decision, lines)
    for name, value in values:
        lines += (name, ": ", value, "\r\n")
    lines += (REMOVE, ": ")
    head = f"HTTP/1.1 200 OK\r\n{response.DECISION_ID}: ".encode()
    return head, "".join(lines).encode(), (*removals, *_ENVOY_NAMES)


def encode_failed(decision: decision_model.Decision) -> bytes:
    """The answer for a decision whose first answer could not be built (now a 500 deny): encoded
    as any deny, or, should even that fail, a fixed 403 that holds no request data."""
    try:
        return encode(decision)
    except Exception:  # the fixed answer below cannot fail
        return FAILED


def _metadata(decision: decision_model.Decision, lines: list[str]) -> None:
    """The decision's reason, policy and rule (and dry-run verdict), for Envoy's dynamic metadata.
    Reasons are fixed codes; policy and rule names come from the configuration and are
    percent-encoded should they hold anything but printable ASCII (a header value cannot)."""
    lines += (REASON, ": ", decision.reason, "\r\n")
    if decision.policy:
        lines += (POLICY, ": ", _safe(decision.policy), "\r\n")
    if decision.rule:
        lines += (RULE, ": ", _safe(decision.rule), "\r\n")
    if decision.dry_run is not None:
        verdict = decision.dry_run
        rule = f"{verdict.policy}#{verdict.rule}".rstrip("#")
        lines += (DRY_RUN_DECISION, ": ", "allow" if verdict.allowed else "deny", "\r\n")
        lines += (DRY_RUN_RULE, ": ", _safe(rule), "\r\n")


def _safe(value: str) -> str:
    if value.isascii() and value.isprintable():
        return value
    return urllib.parse.quote(value, safe="")
