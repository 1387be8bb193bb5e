"""Table-driven semantics of AccessPolicy, through the real decision pipeline (decide_check()).

Each row is one request against one fixed policy set; the table covers every semantic in
docs/policy.md: matching of to/from/when and their not-variants, Deny-before-Allow across policies,
defaults and their conflicts, DryRun, wildcard hosts, 401 versus 403, and the server default.
"""

from __future__ import annotations

import pathlib
from typing import Any

import pytest

from authz import check_request, decision, loader
from authz.canonical import RequestRejected
from authz.dev import checks
from authz.identity import model as identity_model
from authz.policy import compile as compiled
from authz.policy import evaluate

POLICIES = """
apiVersion: tollgate.dev/v1alpha1
kind: AccessPolicy
metadata: {name: to-matching, namespace: t}
spec:
  hosts: [a.test]
  rules:
    - {name: exact, action: Allow, to: {methods: [GET], paths: [/exact]}}
    - {name: prefix, action: Allow, to: {methods: [GET], paths: [/pre/*]}}
    - {name: suffix, action: Allow, to: {methods: [GET], paths: ["*.png"]}}
    - {name: not-paths, action: Allow, to: {methods: [GET], paths: [/np/*], notPaths: [/np/secret/*]}}
    - {name: not-methods, action: Allow, to: {notMethods: [DELETE], paths: [/nm]}}
    - {name: not-any-method, action: Allow, to: {notMethods: ["*"], paths: [/nm-all]}}
    - {name: any-method, action: Allow, to: {paths: [/anything]}}
---
apiVersion: tollgate.dev/v1alpha1
kind: AccessPolicy
metadata: {name: from-matching, namespace: t}
spec:
  hosts: [b.test]
  rules:
    - {name: subjects, action: Allow, to: {paths: [/subj]}, from: {subjects: [alice, "svc-*"]}}
    - {name: groups, action: Allow, to: {paths: [/grp]}, from: {groups: [admins]}}
    - {name: roles, action: Allow, to: {paths: [/role]}, from: {roles: [reader]}}
    - {name: principals, action: Allow, to: {paths: [/prin]}, from: {principals: ["spiffe://cluster.local/ns/shop/*"]}}
    - {name: ip, action: Allow, to: {paths: [/ip]}, from: {ipBlocks: [10.0.0.0/8, "2001:db8::/32"]}}
    - {name: not-ip, action: Allow, to: {paths: [/notip]}, from: {notIpBlocks: [192.168.0.0/16]}}
    - {name: authenticated, action: Allow, to: {paths: [/authn]}, from: {authenticated: true}}
    - {name: anonymous, action: Allow, to: {paths: [/anon]}, from: {authenticated: false}}
---
apiVersion: tollgate.dev/v1alpha1
kind: AccessPolicy
metadata: {name: when-matching, namespace: t}
spec:
  hosts: [c.test]
  rules:
    - {name: claim, action: Allow, to: {paths: [/claim]}, when: [{claim: tier, values: [gold, platinum]}]}
    - {name: not-claim, action: Allow, to: {paths: [/notclaim]}, when: [{claim: tier, notValues: [banned]}]}
    - {name: nested, action: Allow, to: {paths: [/nested]}, when: [{claim: realm_access.roles, values: [ops]}]}
    - {name: mfa, action: Allow, to: {paths: [/mfa]}, when: [{claim: mfa, values: ["true"]}]}
    - {name: header, action: Allow, to: {paths: [/hdr]}, when: [{header: X-Tenant, values: [acme]}]}
    - {name: not-header, action: Allow, to: {paths: [/hdrnot]}, when: [{header: x-env, notValues: [prod]}]}
    - name: combo
      action: Allow
      to: {methods: [POST], paths: [/combo]}
      from: {groups: [admins], ipBlocks: [10.0.0.0/8]}
      when: [{claim: mfa, values: ["true"]}, {header: x-tenant, values: [acme]}]
---
apiVersion: tollgate.dev/v1alpha1
kind: AccessPolicy
metadata: {name: d1-allow-all, namespace: t}
spec:
  hosts: [d.test]
  defaultAction: Allow
  rules: [{name: allow-all, action: Allow, to: {paths: ["*"]}}]
---
apiVersion: tollgate.dev/v1alpha1
kind: AccessPolicy
metadata: {name: d2-deny-admin, namespace: t}
spec:
  hosts: [d.test]
  defaultAction: Allow
  rules: [{name: deny-admin, action: Deny, to: {paths: [/admin, /admin/*]}}]
---
apiVersion: tollgate.dev/v1alpha1
kind: AccessPolicy
metadata: {name: e1-open, namespace: t}
spec: {hosts: [e.test], defaultAction: Allow}
---
apiVersion: tollgate.dev/v1alpha1
kind: AccessPolicy
metadata: {name: e2-closed, namespace: t}
spec: {hosts: [e.test], defaultAction: Deny}
---
apiVersion: tollgate.dev/v1alpha1
kind: AccessPolicy
metadata: {name: f-open, namespace: t}
spec: {hosts: [f.test], defaultAction: Allow}
---
apiVersion: tollgate.dev/v1alpha1
kind: AccessPolicy
metadata: {name: g-implicit, namespace: t}
spec: {hosts: [g.test], rules: [{name: ok, action: Allow, to: {paths: [/ok]}}]}
---
apiVersion: tollgate.dev/v1alpha1
kind: AccessPolicy
metadata: {name: h-dry, namespace: t}
spec:
  hosts: [h.test]
  mode: DryRun
  rules: [{name: ok, action: Allow, to: {paths: [/ok]}}]
---
apiVersion: tollgate.dev/v1alpha1
kind: AccessPolicy
metadata: {name: i-live, namespace: t}
spec: {hosts: [i.test], defaultAction: Allow}
---
apiVersion: tollgate.dev/v1alpha1
kind: AccessPolicy
metadata: {name: i-dry, namespace: t}
spec:
  hosts: [i.test]
  mode: DryRun
  defaultAction: Allow
  rules: [{name: deny-beta, action: Deny, to: {paths: [/beta]}}]
---
apiVersion: tollgate.dev/v1alpha1
kind: AccessPolicy
metadata: {name: w-wild, namespace: t}
spec:
  hosts: ["*.w.test"]
  rules: [{name: w, action: Allow, to: {paths: [/w]}}]
---
apiVersion: tollgate.dev/v1alpha1
kind: AccessPolicy
metadata: {name: w-exact, namespace: t}
spec:
  hosts: [x.w.test]
  rules: [{name: x, action: Allow, to: {paths: [/x]}}]
"""


def who(
    subject: str = "",
    *,
    groups: tuple[str, ...] = (),
    roles: tuple[str, ...] = (),
    principal: str = "",
    claims: dict[str, Any] | None = None,
    mfa: bool = False,
) -> identity_model.Identity:
    if not subject and not principal:
        return identity_model.ANONYMOUS
    return identity_model.Identity(
        authenticated=True,
        method="jwt",
        subject=subject or principal,
        groups=groups,
        roles=roles,
        principal=principal,
        claims=claims or {},
        mfa=mfa,
    )


ANON = who()
ALICE = who("alice")
ADMIN = who("root", groups=("admins",), mfa=True)

# (id, method, host, path, identity, source ip, headers, allowed, reason, "policy#rule", status)
# One row per case, so the table reads as a table.
# fmt: off
CASES: list[tuple[Any, ...]] = [
    # to: exact / prefix / suffix / not-variants
    ("exact", "GET", "a.test", "/exact", ANON, "1.2.3.4", {}, True, "rule_allow", "t/to-matching#exact", 200),
    ("exact-is-exact", "GET", "a.test", "/exact/more", ANON, "1.2.3.4", {}, False, "default_deny", "t/to-matching#", 401),
    ("exact-method-mismatch", "POST", "a.test", "/exact", ANON, "1.2.3.4", {}, False, "default_deny", "t/to-matching#", 401),
    ("method-lower-case-refused", "get", "a.test", "/exact", ANON, "1.2.3.4", {}, False, "request_method_invalid", "#", 400),
    ("prefix", "GET", "a.test", "/pre/x/y", ANON, "1.2.3.4", {}, True, "rule_allow", "t/to-matching#prefix", 200),
    ("prefix-needs-slash", "GET", "a.test", "/pre", ANON, "1.2.3.4", {}, False, "default_deny", "t/to-matching#", 401),
    ("prefix-not-sibling", "GET", "a.test", "/prefix", ANON, "1.2.3.4", {}, False, "default_deny", "t/to-matching#", 401),
    ("suffix", "GET", "a.test", "/img/logo.png", ANON, "1.2.3.4", {}, True, "rule_allow", "t/to-matching#suffix", 200),
    ("suffix-case", "GET", "a.test", "/img/logo.PNG", ANON, "1.2.3.4", {}, False, "default_deny", "t/to-matching#", 401),
    ("not-paths-allows", "GET", "a.test", "/np/open", ANON, "1.2.3.4", {}, True, "rule_allow", "t/to-matching#not-paths", 200),
    ("not-paths-excludes", "GET", "a.test", "/np/secret/x", ANON, "1.2.3.4", {}, False, "default_deny", "t/to-matching#", 401),
    ("not-methods-allows", "PUT", "a.test", "/nm", ANON, "1.2.3.4", {}, True, "rule_allow", "t/to-matching#not-methods", 200),
    ("not-methods-excludes", "DELETE", "a.test", "/nm", ANON, "1.2.3.4", {}, False, "default_deny", "t/to-matching#", 401),
    ("not-methods-star-excludes-everything", "GET", "a.test", "/nm-all", ANON, "1.2.3.4", {}, False, "default_deny", "t/to-matching#", 401),
    ("no-methods-any", "PATCH", "a.test", "/anything", ANON, "1.2.3.4", {}, True, "rule_allow", "t/to-matching#any-method", 200),
    ("query-not-path", "GET", "a.test", "/exact?x=/pre/a", ANON, "1.2.3.4", {}, True, "rule_allow", "t/to-matching#exact", 200),
    ("query-cannot-smuggle", "GET", "a.test", "/nothing?p=/exact", ANON, "1.2.3.4", {}, False, "default_deny", "t/to-matching#", 401),
    ("canonical-dots", "GET", "a.test", "/x/../exact", ANON, "1.2.3.4", {}, True, "rule_allow", "t/to-matching#exact", 200),
    ("canonical-dots-escape", "GET", "a.test", "/np/open/../secret/x", ANON, "1.2.3.4", {}, False, "default_deny", "t/to-matching#", 401),
    ("canonical-encoded-dots", "GET", "a.test", "/np/%2e%2e/np/secret/a", ANON, "1.2.3.4", {}, False, "path_encoded_dot", "#", 400),
    ("canonical-slashes", "GET", "a.test", "//exact", ANON, "1.2.3.4", {}, True, "rule_allow", "t/to-matching#exact", 200),
    ("canonical-params", "GET", "a.test", "/np/open/..;/secret/a", ANON, "1.2.3.4", {}, False, "path_ambiguous_dot_segment", "#", 400),
    ("encoded-slash-400", "GET", "a.test", "/np%2Fsecret", ANON, "1.2.3.4", {}, False, "path_encoded_slash", "#", 400),
    ("bad-escape-400", "GET", "a.test", "/np/%zz", ANON, "1.2.3.4", {}, False, "path_bad_escape", "#", 400),
    ("host-case-and-port", "GET", "A.TEST:8443", "/exact", ANON, "1.2.3.4", {}, True, "rule_allow", "t/to-matching#exact", 200),
    # from: subjects / groups / roles / principals / ip blocks / authenticated
    ("subject-exact", "GET", "b.test", "/subj", ALICE, "1.2.3.4", {}, True, "rule_allow", "t/from-matching#subjects", 200),
    ("subject-prefix", "GET", "b.test", "/subj", who("svc-billing"), "1.2.3.4", {}, True, "rule_allow", "t/from-matching#subjects", 200),
    ("subject-other-403", "GET", "b.test", "/subj", who("bob"), "1.2.3.4", {}, False, "default_deny", "t/from-matching#", 403),
    ("subject-anon-401", "GET", "b.test", "/subj", ANON, "1.2.3.4", {}, False, "default_deny", "t/from-matching#", 401),
    ("group-member", "GET", "b.test", "/grp", who("u", groups=("staff", "admins")), "1.2.3.4", {}, True, "rule_allow", "t/from-matching#groups", 200),
    ("group-nonmember", "GET", "b.test", "/grp", who("u", groups=("staff",)), "1.2.3.4", {}, False, "default_deny", "t/from-matching#", 403),
    ("role-holder", "GET", "b.test", "/role", who("u", roles=("reader",)), "1.2.3.4", {}, True, "rule_allow", "t/from-matching#roles", 200),
    ("role-missing", "GET", "b.test", "/role", who("u", roles=("writer",)), "1.2.3.4", {}, False, "default_deny", "t/from-matching#", 403),
    ("principal-match", "GET", "b.test", "/prin", who(principal="spiffe://cluster.local/ns/shop/sa/web"), "1.2.3.4", {}, True, "rule_allow", "t/from-matching#principals", 200),
    ("principal-other-ns", "GET", "b.test", "/prin", who(principal="spiffe://cluster.local/ns/dev/sa/web"), "1.2.3.4", {}, False, "default_deny", "t/from-matching#", 403),
    ("principal-absent", "GET", "b.test", "/prin", ALICE, "1.2.3.4", {}, False, "default_deny", "t/from-matching#", 403),
    ("ip-in-v4", "GET", "b.test", "/ip", ANON, "10.1.2.3", {}, True, "rule_allow", "t/from-matching#ip", 200),
    ("ip-in-v6", "GET", "b.test", "/ip", ANON, "2001:db8::1", {}, True, "rule_allow", "t/from-matching#ip", 200),
    ("ip-out", "GET", "b.test", "/ip", ANON, "11.0.0.1", {}, False, "default_deny", "t/from-matching#", 401),
    ("ip-garbage-fails-closed", "GET", "b.test", "/ip", ANON, "not-an-ip", {}, False, "source_address_invalid", "t/from-matching#ip", 401),
    ("not-ip-outside", "GET", "b.test", "/notip", ANON, "10.0.0.1", {}, True, "rule_allow", "t/from-matching#not-ip", 200),
    ("not-ip-inside", "GET", "b.test", "/notip", ANON, "192.168.1.1", {}, False, "default_deny", "t/from-matching#", 401),
    ("not-ip-garbage-fails-closed", "GET", "b.test", "/notip", ANON, "", {}, False, "source_address_invalid", "t/from-matching#not-ip", 401),
    ("authenticated-yes", "GET", "b.test", "/authn", ALICE, "1.2.3.4", {}, True, "rule_allow", "t/from-matching#authenticated", 200),
    ("authenticated-no", "GET", "b.test", "/authn", ANON, "1.2.3.4", {}, False, "default_deny", "t/from-matching#", 401),
    ("anonymous-only-anon", "GET", "b.test", "/anon", ANON, "1.2.3.4", {}, True, "rule_allow", "t/from-matching#anonymous", 200),
    ("anonymous-only-user", "GET", "b.test", "/anon", ALICE, "1.2.3.4", {}, False, "default_deny", "t/from-matching#", 403),
    # when: claims (flat, list, nested), mfa, headers, not-variants, AND of everything
    ("claim-match", "GET", "c.test", "/claim", who("u", claims={"tier": "gold"}), "1.2.3.4", {}, True, "rule_allow", "t/when-matching#claim", 200),
    ("claim-list-match", "GET", "c.test", "/claim", who("u", claims={"tier": ["x", "platinum"]}), "1.2.3.4", {}, True, "rule_allow", "t/when-matching#claim", 200),
    ("claim-mismatch", "GET", "c.test", "/claim", who("u", claims={"tier": "bronze"}), "1.2.3.4", {}, False, "default_deny", "t/when-matching#", 403),
    ("claim-absent", "GET", "c.test", "/claim", who("u"), "1.2.3.4", {}, False, "default_deny", "t/when-matching#", 403),
    ("not-claim-other", "GET", "c.test", "/notclaim", who("u", claims={"tier": "gold"}), "1.2.3.4", {}, True, "rule_allow", "t/when-matching#not-claim", 200),
    ("not-claim-banned", "GET", "c.test", "/notclaim", who("u", claims={"tier": "banned"}), "1.2.3.4", {}, False, "default_deny", "t/when-matching#", 403),
    ("nested-claim", "GET", "c.test", "/nested", who("u", claims={"realm_access": {"roles": ["ops"]}}), "1.2.3.4", {}, True, "rule_allow", "t/when-matching#nested", 200),
    ("nested-claim-wrong-shape", "GET", "c.test", "/nested", who("u", claims={"realm_access": "ops"}), "1.2.3.4", {}, False, "default_deny", "t/when-matching#", 403),
    ("mfa-yes", "GET", "c.test", "/mfa", who("u", mfa=True), "1.2.3.4", {}, True, "rule_allow", "t/when-matching#mfa", 200),
    ("mfa-no", "GET", "c.test", "/mfa", who("u"), "1.2.3.4", {}, False, "default_deny", "t/when-matching#", 403),
    ("header-match", "GET", "c.test", "/hdr", ANON, "1.2.3.4", {"x-tenant": "acme"}, True, "rule_allow", "t/when-matching#header", 200),
    ("header-mismatch", "GET", "c.test", "/hdr", ANON, "1.2.3.4", {"x-tenant": "evil"}, False, "default_deny", "t/when-matching#", 401),
    ("not-header-absent", "GET", "c.test", "/hdrnot", ANON, "1.2.3.4", {}, True, "rule_allow", "t/when-matching#not-header", 200),
    ("not-header-prod", "GET", "c.test", "/hdrnot", ANON, "1.2.3.4", {"x-env": "prod"}, False, "default_deny", "t/when-matching#", 401),
    ("combo-all", "POST", "c.test", "/combo", ADMIN, "10.9.9.9", {"x-tenant": "acme"}, True, "rule_allow", "t/when-matching#combo", 200),
    ("combo-no-mfa", "POST", "c.test", "/combo", who("root", groups=("admins",)), "10.9.9.9", {"x-tenant": "acme"}, False, "default_deny", "t/when-matching#", 403),
    ("combo-wrong-ip", "POST", "c.test", "/combo", ADMIN, "8.8.8.8", {"x-tenant": "acme"}, False, "default_deny", "t/when-matching#", 403),
    ("combo-wrong-header", "POST", "c.test", "/combo", ADMIN, "10.9.9.9", {"x-tenant": "other"}, False, "default_deny", "t/when-matching#", 403),
    ("combo-wrong-method", "GET", "c.test", "/combo", ADMIN, "10.9.9.9", {"x-tenant": "acme"}, False, "default_deny", "t/when-matching#", 403),
    # Deny rules beat Allow rules, across policies on one host
    ("deny-beats-allow", "GET", "d.test", "/admin", ALICE, "1.2.3.4", {}, False, "rule_deny", "t/d2-deny-admin#deny-admin", 403),
    ("deny-beats-allow-subtree", "GET", "d.test", "/admin/users", ANON, "1.2.3.4", {}, False, "rule_deny", "t/d2-deny-admin#deny-admin", 401),
    ("allow-elsewhere", "GET", "d.test", "/shop", ANON, "1.2.3.4", {}, True, "rule_allow", "t/d1-allow-all#allow-all", 200),
    ("deny-sees-canonical", "GET", "d.test", "/shop/..//admin", ANON, "1.2.3.4", {}, False, "rule_deny", "t/d2-deny-admin#deny-admin", 401),
    # defaults: explicit conflict → Deny; Allow when alone; absent means Deny
    ("default-conflict-deny", "GET", "e.test", "/", ALICE, "1.2.3.4", {}, False, "default_deny", "t/e2-closed#", 403),
    ("default-allow", "GET", "f.test", "/", ANON, "1.2.3.4", {}, True, "default_allow", "t/f-open#", 200),
    ("default-implicit-deny", "GET", "g.test", "/other", ANON, "1.2.3.4", {}, False, "default_deny", "t/g-implicit#", 401),
    # DryRun never changes the outcome
    ("dry-only-allows", "GET", "h.test", "/anything", ANON, "1.2.3.4", {}, True, "dry_run_only", "#", 200),
    ("dry-with-live", "GET", "i.test", "/beta", ALICE, "1.2.3.4", {}, True, "default_allow", "t/i-live#", 200),
    # wildcard hosts: exact and wildcard policies apply together; the bare domain is not covered
    ("wild-sub", "GET", "y.w.test", "/w", ANON, "1.2.3.4", {}, True, "rule_allow", "t/w-wild#w", 200),
    ("wild-deep-sub", "GET", "a.b.w.test", "/w", ANON, "1.2.3.4", {}, True, "rule_allow", "t/w-wild#w", 200),
    ("wild-not-exact-rule", "GET", "y.w.test", "/x", ANON, "1.2.3.4", {}, False, "default_deny", "t/w-wild#", 401),
    ("exact-plus-wild-1", "GET", "x.w.test", "/x", ANON, "1.2.3.4", {}, True, "rule_allow", "t/w-exact#x", 200),
    ("exact-plus-wild-2", "GET", "x.w.test", "/w", ANON, "1.2.3.4", {}, True, "rule_allow", "t/w-wild#w", 200),
    ("wild-not-bare", "GET", "w.test", "/w", ANON, "1.2.3.4", {}, False, "no_policy", "#", 401),
    # server default for hosts no policy covers
    ("uncovered-anon-401", "GET", "nobody.test", "/", ANON, "1.2.3.4", {}, False, "no_policy", "#", 401),
    ("uncovered-user-403", "GET", "nobody.test", "/", ALICE, "1.2.3.4", {}, False, "no_policy", "#", 403),
]
# fmt: on


class StaticIdentity:
    """The identity stage, replaced by a fixed answer: these tests are about policy, not tokens."""

    def __init__(self, identity: identity_model.Identity) -> None:
        self.identity = identity

    def resolve_now(self, request: Any, scope: Any) -> identity_model.Identity | None:
        return self.identity

    async def resolve(self, request: Any, scope: Any) -> identity_model.Identity:
        return self.identity


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory) -> loader.Snapshot:
    path = tmp_path_factory.mktemp("policies") / "policies.yaml"
    path.write_text(POLICIES)
    return loader.load(path)


def test_table_is_large_enough() -> None:
    assert len(CASES) >= 60
    assert len({case[0] for case in CASES}) == len(CASES)


@pytest.mark.parametrize(
    ("method", "host", "path", "identity", "source_ip", "headers", "allowed", "reason", "decided_by", "status"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
async def test_decision(
    snapshot: loader.Snapshot,
    method: str,
    host: str,
    path: str,
    identity: identity_model.Identity,
    source_ip: str,
    headers: dict[str, str],
    allowed: bool,
    reason: str,
    decided_by: str,
    status: int,
) -> None:
    request = checks.check_request(method=method, host=host, path=path, source_ip=source_ip, headers=headers)
    result = await decision.decide_check(request, snapshot, StaticIdentity(identity))
    assert (result.allowed, result.reason, f"{result.policy}#{result.rule}", result.status) == (
        allowed,
        reason,
        decided_by,
        status,
    ), result.message


async def test_dry_run_reports_would_be_decision(snapshot: loader.Snapshot) -> None:
    only_dry = await decision.decide_check(
        checks.check_request(host="h.test", path="/nope"), snapshot, StaticIdentity(ANON)
    )
    assert only_dry.allowed and only_dry.dry_run is not None
    assert (only_dry.dry_run.allowed, only_dry.dry_run.reason, only_dry.dry_run.policy) == (
        False,
        "default_deny",
        "t/h-dry",
    )
    ok = await decision.decide_check(checks.check_request(host="h.test", path="/ok"), snapshot, StaticIdentity(ANON))
    assert ok.dry_run is not None and (ok.dry_run.allowed, ok.dry_run.rule) == (True, "ok")
    beta = await decision.decide_check(
        checks.check_request(host="i.test", path="/beta"), snapshot, StaticIdentity(ALICE)
    )
    assert beta.allowed and beta.dry_run is not None
    assert (beta.dry_run.allowed, beta.dry_run.reason, beta.dry_run.policy, beta.dry_run.rule) == (
        False,
        "rule_deny",
        "t/i-dry",
        "deny-beta",
    )
    live_only = await decision.decide_check(checks.check_request(host="f.test"), snapshot, StaticIdentity(ANON))
    assert live_only.dry_run is None


async def test_server_default_allow(snapshot: loader.Snapshot) -> None:
    result = await decision.decide_check(
        checks.check_request(host="nobody.test"), snapshot, StaticIdentity(ANON), default_allow=True
    )
    assert (result.allowed, result.reason, result.status) == (True, "no_policy", 200)


def test_conflicting_defaults_are_reported(snapshot: loader.Snapshot) -> None:
    messages = {conflict.host: conflict.message for conflict in snapshot.conflicts}
    assert "e.test" in messages and "Deny applies" in messages["e.test"]
    assert "d.test" not in messages  # both say Allow: no conflict


def test_merge_is_independent_of_file_order(tmp_path: pathlib.Path) -> None:
    documents = POLICIES.split("\n---\n")
    forward, backward = tmp_path / "forward", tmp_path / "backward"
    forward.mkdir()
    backward.mkdir()
    for index, document in enumerate(documents):
        (forward / f"{index:02d}.yaml").write_text(document)
        (backward / f"{len(documents) - index:02d}.yaml").write_text(document)
    one, two = loader.load(forward), loader.load(backward)
    for case in CASES:
        _, method, host, path, identity, source_ip, headers, *_ = case
        request = checks.check_request(method=method, host=host, path=path, source_ip=source_ip, headers=headers)
        try:
            parsed = check_request.from_check_request(request)
        except RequestRejected:
            continue  # rejected before any policy is consulted
        verdicts = [
            evaluate.evaluate(
                s.index.lookup(parsed.host), compiled.Context(parsed, identity), server_default_allow=False
            )
            for s in (one, two)
        ]
        assert verdicts[0] == verdicts[1], case[0]
