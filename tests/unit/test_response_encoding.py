"""The answer's bytes: the spliced fast path must say exactly what protobuf would, for every kind
of decision, and decision ids must be well-formed UUIDv7s."""

from __future__ import annotations

import json

import pytest
from envoy.service.auth.v3 import external_auth_pb2

from authz import decision, ids, request, response
from authz.identity import model
from authz.policy import verdict

ALICE = model.Identity(
    authenticated=True, method="jwt", subject="alice", provider="idp", groups=("admins", "staff"), roles=("reader",)
)
BOB = model.Identity(authenticated=True, method="jwt", subject="bob", provider="idp", groups=("staff",))
WORKLOAD = model.Identity(
    authenticated=True, method="mtls", subject="spiffe://c.local/ns/a/sa/b", principal="spiffe://c.local/ns/a/sa/b"
)
HOSTILE = model.Identity(authenticated=True, method="jwt", subject="eve\r\nx-tollgate-groups: admins", provider="idp")
REQUEST = request.HttpRequest("GET", "a.test", "/", request_id="rid-1")


def _decision(**fields: object) -> decision.Decision:
    base: dict[str, object] = {"decision_id": ids.new_id(), "revision": "r1", "request": REQUEST}
    return decision.Decision(**{**base, **fields})  # type: ignore[arg-type]


ALLOWED = [
    {"allowed": True, "status": 200, "reason": "rule_allow", "policy": "ns/p", "rule": "r"},
    {"allowed": True, "status": 200, "reason": "rule_allow", "policy": "ns/p", "rule": "r", "identity": ALICE},
    {"allowed": True, "status": 200, "reason": "default_allow", "policy": "ns/p", "identity": WORKLOAD},
    {
        "allowed": True,
        "status": 200,
        "reason": "dry_run_only",
        "dry_run": verdict.DryRunVerdict(False, "rule_deny", "ns/q", "block"),
        "identity": BOB,
    },
]
DENIED = [
    {"status": 401, "reason": "default_deny", "policy": "ns/p"},
    {"status": 403, "reason": "rule_deny", "policy": "ns/p", "rule": "no", "identity": ALICE},
    {"status": 400, "reason": "path_encoded_slash"},
    {"status": 503, "reason": "identity_unavailable"},
    {"status": 500, "reason": "authz_error"},
    {"status": 504, "reason": "request_cancelled", "request": None},  # not an answer status: 403
    {"status": 401, "reason": "token_expired", "request": request.HttpRequest("GET", "a", "/", request_id="")},
    {
        "status": 403,
        "reason": "rule_deny",
        "policy": "ns/p",
        "rule": "no",
        "request": request.HttpRequest("GET", "a", "/", request_id='r"\\ü\u2028-' + "x" * 300),
        "dry_run": verdict.DryRunVerdict(True, "rule_allow", "ns/q", "yes"),
    },
]


@pytest.mark.parametrize("fields", ALLOWED + DENIED)
def test_encoded_answer_is_the_protobuf_answer(fields: dict[str, object]) -> None:
    for _ in range(3):  # the first call builds a template, the next ones splice into it
        item = _decision(**fields)
        answer = external_auth_pb2.CheckResponse.FromString(response.encode(item))
        assert answer == response.to_check_response(item)
        assert answer.dynamic_metadata.fields["decision_id"].string_value == item.decision_id
        if item.allowed:
            headers = {h.header.key: h.header.value for h in answer.ok_response.headers}
            assert headers[response.DECISION_ID] == item.decision_id


def test_templates_never_mix_identities() -> None:
    fields = {"allowed": True, "status": 200, "reason": "rule_allow", "policy": "ns/p", "rule": "r"}
    for identity, subject, groups in [(ALICE, "alice", '"admins", "staff"'), (BOB, "bob", '"staff"')] * 2:
        answer = external_auth_pb2.CheckResponse.FromString(response.encode(_decision(identity=identity, **fields)))
        headers = {h.header.key: h.header.value for h in answer.ok_response.headers}
        assert (headers[response.SUBJECT], headers[response.GROUPS]) == (subject, groups)
        removed = answer.ok_response.headers_to_remove
        assert response.ROLES in headers if identity is ALICE else response.ROLES in removed


def test_a_value_the_identity_stage_should_have_refused_is_a_fault_never_a_cut() -> None:
    # The identity stage refuses such subjects (token_invalid_claims); should one slip through,
    # encoding fails (the Check fails closed) rather than pass on an edited value.
    item = _decision(allowed=True, status=200, reason="rule_allow", policy="ns/p", rule="hostile", identity=HOSTILE)
    with pytest.raises(ValueError, match="printable ASCII"):
        response.encode(item)


def test_an_identity_carrying_the_placeholder_gets_a_correct_answer() -> None:
    # The placeholder is random per process; were a header value ever to contain it, the answer
    # must still be right (no template is kept for it).
    sneaky = model.Identity(authenticated=True, method="jwt", subject=response._PLACEHOLDER, provider="idp")
    item = _decision(allowed=True, status=200, reason="rule_allow", policy="ns/p", rule="r", identity=sneaky)
    answer = external_auth_pb2.CheckResponse.FromString(response.encode(item))
    assert answer == response.to_check_response(item)
    headers = {h.header.key: h.header.value for h in answer.ok_response.headers}
    assert headers[response.SUBJECT] == response._PLACEHOLDER


def test_denied_answers_share_a_template_only_where_everything_but_the_body_agrees() -> None:
    # Same (status, reason, policy, rule): one template; the body (request id) and the decision id
    # still differ per answer, and a different reason never reuses another's template.
    seen = []
    for request_id, reason in [("a", "rule_deny"), ("bb" * 40, "rule_deny"), ("a", "default_deny")] * 2:
        item = _decision(
            status=403,
            reason=reason,
            policy="ns/p",
            request=request.HttpRequest("GET", "a", "/", request_id=request_id),
        )
        answer = external_auth_pb2.CheckResponse.FromString(response.encode(item))
        body = json.loads(answer.denied_response.body)
        assert (body["reason"], body["request_id"]) == (reason, request_id)
        assert answer.dynamic_metadata.fields["reason"].string_value == reason
        assert answer.dynamic_metadata.fields["decision_id"].string_value == item.decision_id
        assert answer.denied_response.status.code == 403
        seen.append(item.decision_id)
    assert len(set(seen)) == len(seen)


def test_denied_bodies_are_compact_json_whatever_the_request_id() -> None:
    for request_id in ["rid-1", "", 'q"uote\\back', "ü\u2028\x00"]:
        item = _decision(
            status=401, reason='odd"reason', request=request.HttpRequest("GET", "a", "/", request_id=request_id)
        )
        body = external_auth_pb2.CheckResponse.FromString(response.encode(item)).denied_response.body
        expected = {"error": "unauthenticated", "reason": 'odd"reason', "request_id": request_id}
        assert body == json.dumps(expected, separators=(",", ":"))


def test_template_memory_is_bounded_and_answers_stay_right(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(response, "_MAX_TEMPLATES", 3)
    for index in range(10):
        someone = model.Identity(authenticated=True, method="jwt", subject=f"user-{index}", provider="idp")
        allowed = {"allowed": True, "status": 200, "reason": "rule_allow", "policy": "ns/p", "identity": someone}
        denied = {"status": 403, "reason": "rule_deny", "policy": "ns/p", "rule": f"r{index}", "identity": someone}
        for fields in (allowed, denied):
            item = _decision(**fields)
            assert external_auth_pb2.CheckResponse.FromString(response.encode(item)) == response.to_check_response(item)
        assert len(response._templates) <= 3 and len(response._denied_templates) <= 3


def test_client_reserved_headers_are_removed_and_never_baked_into_a_template() -> None:
    sent = {"x_tollgate_subject": "root", "x-tollgate-email": "x@y", "x-tollgate-subject": "root", "accept": "*/*"}
    hostile = request.HttpRequest("GET", "a.test", "/", request_id="r", headers=sent)
    fields = {"allowed": True, "status": 200, "reason": "rule_allow", "policy": "ns/reserved", "rule": "r"}
    for item in [_decision(identity=ALICE, request=hostile, **fields), _decision(request=hostile, **fields)] * 2:
        answer = external_auth_pb2.CheckResponse.FromString(response.encode(item))
        assert answer == response.to_check_response(item)
        removed = list(answer.ok_response.headers_to_remove)
        assert {"x_tollgate_subject", "x-tollgate-email"} <= set(removed)
        set_names = {h.header.key for h in answer.ok_response.headers}
        assert not set_names & set(removed)  # a name both set and removed would lose Tollgate's value
    # The same (identity, verdict) without such headers: the template holds no removals of theirs.
    plain = external_auth_pb2.CheckResponse.FromString(response.encode(_decision(identity=ALICE, **fields)))
    assert not {"x_tollgate_subject", "x-tollgate-email"} & set(plain.ok_response.headers_to_remove)
