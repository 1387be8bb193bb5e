"""Provider scope of overlapping policies: the narrowest holds. ``corp.scope.test``'s own policy
accepts only ``corp``; the broader ``*.scope.test`` policy accepts ``corp`` and ``partner``. A
``partner`` token on ``corp.scope.test`` is refused (once it was accepted: the lists were joined),
while ``portal.scope.test``, whose own policy names no provider, takes both.
"""

from __future__ import annotations

import pathlib

import pytest

from authz import cli

pytestmark = pytest.mark.envoy


def _partner(hardening) -> tuple[str, str]:
    return ("Authorization", "Bearer " + hardening.partner.token("pat"))


def test_a_broader_policy_never_widens_a_hosts_providers(hardening, mode: str) -> None:
    refused = hardening.send(mode, "GET", "/", "corp.scope.test", [_partner(hardening)])
    assert refused.upstream is None and (refused.status, refused.reason) == (401, "token_unknown_issuer")
    accepted = hardening.send(mode, "GET", "/", "corp.scope.test", [hardening.bearer("alice")])
    assert accepted.upstream is not None and accepted.received("x-tollgate-subject") == ["alice"]


def test_a_host_without_its_own_list_takes_the_broader_one(hardening, mode: str) -> None:
    for token, subject in [(_partner(hardening), "pat"), (hardening.bearer("alice"), "alice")]:
        answer = hardening.send(mode, "GET", "/", "portal.scope.test", [token])
        assert answer.upstream is not None and answer.received("x-tollgate-subject") == [subject]


def test_policy_check_warns_when_lists_share_no_provider(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "p.yaml").write_text(
        """
apiVersion: tollgate.dev/v1alpha1
kind: IdentityProvider
metadata: {name: corp}
spec: {type: mtls, mtls: {trustDomains: [corp.local]}}
---
apiVersion: tollgate.dev/v1alpha1
kind: IdentityProvider
metadata: {name: partner}
spec: {type: mtls, mtls: {trustDomains: [partner.local]}}
---
apiVersion: tollgate.dev/v1alpha1
kind: AccessPolicy
metadata: {name: a}
spec: {hosts: [x.example.com], identity: {providers: [corp]}}
---
apiVersion: tollgate.dev/v1alpha1
kind: AccessPolicy
metadata: {name: b}
spec: {hosts: ["*.example.com"], identity: {providers: [partner]}}
"""
    )
    assert cli.main(["policy", "check", str(tmp_path)]) == 0
    assert "identity.providers lists share no provider" in capsys.readouterr().out
