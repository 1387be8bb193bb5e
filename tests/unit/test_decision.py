"""authz.decision: the named outcomes, and the field order decide()'s positional Decision relies on."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from authz import decision, loader
from authz.canonical import RequestRejected
from authz.identity import model
from authz.request import HttpRequest

POLICY = """
apiVersion: tollgate.dev/v1alpha1
kind: AccessPolicy
metadata: {name: site, namespace: web}
spec:
  hosts: [site.test]
  rules:
    - {name: public, action: Allow, to: {paths: [/public]}}
    - {name: closed, action: Deny, to: {paths: [/closed]}}
  mode: Enforce
---
apiVersion: tollgate.dev/v1alpha1
kind: AccessPolicy
metadata: {name: trial, namespace: web}
spec: {hosts: [site.test], mode: DryRun, defaultAction: Allow}
"""


def test_field_order_is_pinned() -> None:
    # decide() passes these by position; reordering the class without it would corrupt every record.
    assert [field.name for field in dataclasses.fields(decision.Decision)] == [
        "decision_id",
        "revision",
        "allowed",
        "status",
        "reason",
        "message",
        "policy",
        "rule",
        "request",
        "identity",
        "dry_run",
        "provider",
        "trace_id",
        "span_id",
        "started_ns",
        "duration_ns",
        "claimed_subject",
    ]


def test_decide_puts_each_value_in_its_field(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(POLICY)
    snapshot = loader.load(tmp_path / "p.yaml")
    alice = model.Identity(authenticated=True, method="jwt", subject="alice")
    allowed = decision.decide(HttpRequest("GET", "site.test", "/public"), alice, snapshot)
    assert (allowed.revision, allowed.allowed, allowed.status, allowed.reason) == (
        snapshot.revision,
        True,
        200,
        "rule_allow",
    )
    assert (allowed.policy, allowed.rule, allowed.message, allowed.identity) == ("web/site", "public", "", alice)
    assert allowed.request is not None and allowed.request.path == "/public"
    assert allowed.dry_run is not None and (allowed.dry_run.reason, allowed.dry_run.rule) == ("rule_allow", "public")
    assert len(allowed.decision_id) == 36 and (allowed.provider, allowed.trace_id, allowed.started_ns) == ("", "", 0)
    denied = decision.decide(HttpRequest("GET", "site.test", "/closed"), model.ANONYMOUS, snapshot)
    assert (denied.allowed, denied.status, denied.reason, denied.rule) == (False, 401, "rule_deny", "closed")
    assert decision.decide(HttpRequest("GET", "site.test", "/closed"), alice, snapshot).status == 403


def test_named_outcomes() -> None:
    assert (decision.unparseable("r").status, decision.unparseable("r").reason) == (400, "request_parse_error")
    cancelled = decision.cancelled("r", None)
    assert (cancelled.status, cancelled.reason, cancelled.allowed) == (504, "request_cancelled", False)
    rejected = decision.rejected_request("r", RequestRejected("path_nul", "NUL"))
    assert (rejected.status, rejected.reason, rejected.message) == (400, "path_nul", "NUL")
    made = decision.Decision(decision_id="d", revision="r", allowed=True, status=200, reason="rule_allow", policy="p")
    assert (decision.audit_unavailable(made).status, made.reason, made.allowed, made.policy) == (
        503,
        "audit_unavailable",
        False,
        "",
    )
    made = decision.Decision(decision_id="d", revision="r", allowed=True, status=200, reason="rule_allow")
    failed = decision.answer_failed(made, ValueError("x"))
    assert (failed.allowed, failed.status, failed.reason) == (False, 500, "authz_error")
    assert failed.message == "the answer could not be built (ValueError); the decision was allow rule_allow"
