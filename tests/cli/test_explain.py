"""``tollgate policy explain``: the server's decision path, offline, and why each rule did not match."""

from __future__ import annotations

import hashlib
import pathlib
import subprocess
import sys
import textwrap

import pytest

from authz import cli

EXAMPLES = pathlib.Path(__file__).parents[2] / "examples" / "policies"
TOLLGATE = pathlib.Path(sys.executable).with_name("tollgate")
ORDERS = ["--config", str(EXAMPLES), "--host", "orders.example.com", "--path", "/orders/7"]


def explain(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(["policy", "explain", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_says_which_condition_each_rule_missed(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = explain(capsys, *ORDERS, "--method", "DELETE", "--claims", '{"sub": "carol", "groups": ["staff"]}')
    assert code == 0
    assert "decision: deny (403)" in out and "reason:   default_deny" in out
    assert "Allow shop/orders-api#admins-write: not met: from.groups [admins]; when[0] claim mfa values [true]" in out
    assert "Allow shop/orders-api#read: not met: to.methods [GET]: the method is DELETE" in out
    assert "Deny  shop/orders-api#block-internal: not met: to.paths [/orders/internal, /orders/internal/*]" in out
    assert "default: deny (shop/orders-api)" in out


def test_mfa_is_read_from_acr_as_the_server_reads_it(capsys: pytest.CaptureFixture[str]) -> None:
    claims = '{"sub": "carol", "groups": ["admins"], "acr": "mfa"}'
    code, out, _ = explain(capsys, *ORDERS, "--method", "POST", "--claims", claims)
    assert code == 0 and "decision: allow (200)" in out and "rule:     admins-write" in out
    assert "caller:   jwt carol; provider demo-idp; groups admins; mfa yes" in out


def test_exit_code_gates_on_deny() -> None:
    def status(*args: str) -> int:
        return subprocess.run([str(TOLLGATE), "policy", "explain", *args], capture_output=True, check=False).returncode

    assert status(*ORDERS, "--method", "DELETE", "--exit-code") == 1
    assert status(*ORDERS, "--method", "DELETE") == 0  # without --exit-code a deny is still an answer
    assert status(*ORDERS, "--claims", '{"sub": "carol"}', "--exit-code") == 0
    assert status(*ORDERS, "--path", "/a%2fb", "--exit-code") == 1  # 400: refused before any rule


PROVIDERS = """
apiVersion: tollgate.dev/v1alpha1
kind: IdentityProvider
metadata: {name: keycloak}
spec:
  type: jwt
  jwt:
    issuer: https://sso.example.com/realms/corp
    jwksUri: https://sso.example.com/realms/corp/certs
    claims: {subject: preferred_username, groups: realm_access.roles}
---
apiVersion: tollgate.dev/v1alpha1
kind: IdentityProvider
metadata: {name: partner}
spec:
  type: jwt
  jwt: {issuer: https://partner.example.com, jwksUri: https://partner.example.com/keys}
---
apiVersion: tollgate.dev/v1alpha1
kind: IdentityProvider
metadata: {name: keys}
spec:
  type: apiKey
  apiKey: {keysFile: keys.yaml}
---
apiVersion: tollgate.dev/v1alpha1
kind: AccessPolicy
metadata: {name: corp}
spec:
  hosts: [corp.test]
  identity: {providers: [keycloak, keys]}
  rules: [{name: admins, action: Allow, from: {groups: [admins]}}]
---
apiVersion: tollgate.dev/v1alpha1
kind: AccessPolicy
metadata: {name: shared}
spec:
  hosts: [shared.test]
  rules: [{name: users, action: Allow, from: {authenticated: true}}]
"""


@pytest.fixture
def config(tmp_path: pathlib.Path) -> pathlib.Path:
    (tmp_path / "config.yaml").write_text(PROVIDERS)
    digest = hashlib.sha256(b"robot.secret-key-value").hexdigest()
    (tmp_path / "keys.yaml").write_text(
        textwrap.dedent(f"""\
            keys:
              - {{id: robot, sha256: {digest}, subject: robot-1, groups: [admins]}}
            """)
    )
    return tmp_path / "config.yaml"


def test_claims_go_through_the_providers_claim_mapping(
    capsys: pytest.CaptureFixture[str], config: pathlib.Path
) -> None:
    claims = '{"sub": "0f3c", "preferred_username": "dana", "realm_access": {"roles": ["admins"]}}'
    code, out, _ = explain(capsys, "--config", str(config), "--host", "corp.test", "--path", "/", "--claims", claims)
    assert code == 0 and "decision: allow (200)" in out
    assert "caller:   jwt dana; provider keycloak; groups admins" in out


def test_claims_from_a_provider_the_host_does_not_accept(
    capsys: pytest.CaptureFixture[str], config: pathlib.Path
) -> None:
    args = ["--config", str(config), "--host", "corp.test", "--path", "/", "--claims", '{"sub": "eve"}']
    code, out, _ = explain(capsys, *args, "--provider", "partner")
    assert code == 0 and "decision: deny (401)" in out and "token_unknown_issuer" in out


def test_several_possible_issuers_need_provider(capsys: pytest.CaptureFixture[str], config: pathlib.Path) -> None:
    args = ["--config", str(config), "--host", "shared.test", "--path", "/", "--claims", '{"sub": "eve"}']
    code, _, err = explain(capsys, *args)
    assert code == 2 and "--provider" in err and "keycloak, partner" in err
    code, out, _ = explain(capsys, *args, "--provider", "partner")
    assert code == 0 and "decision: allow (200)" in out
    code, _, err = explain(capsys, *args, "--provider", "nobody")
    assert code == 2 and "--provider 'nobody'" in err


def test_api_keys_and_tokens_in_headers(capsys: pytest.CaptureFixture[str], config: pathlib.Path) -> None:
    args = ["--config", str(config), "--host", "corp.test", "--path", "/"]
    code, out, _ = explain(capsys, *args, "--header", "x-api-key=robot.secret-key-value")
    assert code == 0 and "decision: allow (200)" in out and "caller:   apiKey robot-1" in out
    code, out, _ = explain(capsys, *args, "--header", "x-api-key=robot.wrong")
    assert code == 0 and "decision: deny (401)" in out
    code, _, err = explain(capsys, *args, "--header", "authorization=Bearer a.b.c")
    assert code == 2 and "--claims" in err


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--claims", "{not json"], "--claims"),
        (["--claims", "[1, 2]"], "--claims"),
        (["--header", "no-equals-sign"], "--header"),
    ],
)
def test_bad_input_is_a_usage_error(capsys: pytest.CaptureFixture[str], args: list[str], named: str) -> None:
    code, _, err = explain(capsys, *ORDERS, *args)
    assert code == 2 and named in err and len(err.strip().splitlines()) == 1


def test_invalid_config_is_a_usage_error(capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path) -> None:
    (tmp_path / "bad.yaml").write_text("kind: AccessPolicy\n")
    code, _, err = explain(capsys, "--config", str(tmp_path), "--host", "a.test", "--path", "/")
    assert code == 2 and "bad.yaml" in err and "apiVersion" in err
