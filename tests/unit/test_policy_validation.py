"""Invalid configuration gets a specific error naming file, document and field, never a traceback."""

from __future__ import annotations

import pathlib
import textwrap

import pytest

from authz import cli, loader
from authz.errors import ConfigErrors

HEADER = "apiVersion: tollgate.dev/v1alpha1\nkind: AccessPolicy\nmetadata: {name: p, namespace: ns}\n"

# One row per case, so the table reads as a table.
# fmt: off
BAD = [
    ("missing-hosts", "spec: {rules: []}", "spec.hosts", "required"),
    ("empty-hosts", "spec: {hosts: []}", "spec.hosts", "should be non-empty"),
    ("typo-field", "spec: {hosts: [a.test], rules: [{name: r, action: Allow, to: {method: [GET]}}]}", "spec.rules[0].to.method", "unknown field"),
    ("bad-mode", "spec: {hosts: [a.test], mode: Audit}", "spec.mode", "'Audit' is not one of"),
    ("bad-action", "spec: {hosts: [a.test], rules: [{name: r, action: Maybe}]}", "spec.rules[0].action", "not one of"),
    ("rule-without-name", "spec: {hosts: [a.test], rules: [{action: Allow}]}", "spec.rules[0].name", "required"),
    ("bad-cidr", "spec: {hosts: [a.test], rules: [{name: r, action: Allow, from: {ipBlocks: [10.0.0.0/33]}}]}", "spec.rules[0].from.ipBlocks[0]", "not an IP address or CIDR"),
    ("star-in-middle", "spec: {hosts: [a.test], rules: [{name: r, action: Allow, to: {paths: ['/a*b']}}]}", "spec.rules[0].to.paths[0]", "'*' may only stand"),
    ("non-canonical-path", "spec: {hosts: [a.test], rules: [{name: r, action: Allow, to: {paths: ['/a/../b']}}]}", "spec.rules[0].to.paths[0]", "write '/b'"),
    ("path-no-slash", "spec: {hosts: [a.test], rules: [{name: r, action: Allow, to: {paths: [admin]}}]}", "spec.rules[0].to.paths[0]", "starts with '/'"),
    ("encoded-slash-path", "spec: {hosts: [a.test], rules: [{name: r, action: Allow, to: {paths: ['/a%2Fb']}}]}", "spec.rules[0].to.paths[0]", "can never match"),
    ("dup-rule", "spec: {hosts: [a.test], rules: [{name: r, action: Allow}, {name: r, action: Deny}]}", "spec.rules[1].name", "duplicate rule name"),
    ("bad-host", "spec: {hosts: ['foo.*.com']}", "spec.hosts[0]", "is not a host name"),
    ("host-with-port", "spec: {hosts: ['a.test:8080']}", "spec.hosts[0]", "is not a host name"),
    ("bad-method", "spec: {hosts: [a.test], rules: [{name: r, action: Allow, to: {methods: ['GE T']}}]}", "spec.rules[0].to.methods[0]", "not an HTTP method"),
    ("claim-and-header", "spec: {hosts: [a.test], rules: [{name: r, action: Allow, when: [{claim: a, header: b, values: [x]}]}]}", "spec.rules[0].when[0]", "exactly one of"),
    ("condition-without-values", "spec: {hosts: [a.test], rules: [{name: r, action: Allow, when: [{claim: a}]}]}", "spec.rules[0].when[0]", "needs 'values'"),
    ("unknown-provider", "spec: {hosts: [a.test], identity: {providers: [nope]}}", "spec.identity.providers[0]", "no IdentityProvider named 'nope'"),
    ("spec-not-mapping", "spec: [1, 2]", "spec", "must be a mapping"),
]
# fmt: on


@pytest.mark.parametrize(("body", "field", "message"), [pytest.param(*c[1:], id=c[0]) for c in BAD])
def test_invalid_policy_names_file_document_and_field(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], body: str, field: str, message: str
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(HEADER + body + "\n")
    assert cli.main(["policy", "check", str(path)]) == 1
    error = capsys.readouterr().err
    assert str(path) in error
    assert "document 1 (AccessPolicy ns/p)" in error
    assert f": {field}: " in error
    assert message in error
    assert "Traceback" not in error


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("apiVersion: v1\nkind: AccessPolicy\nmetadata: {name: p}\nspec: {hosts: [a]}", "apiVersion must be"),
        ("apiVersion: tollgate.dev/v1alpha1\nkind: Policy\nmetadata: {name: p}\nspec: {}", "kind must be one of"),
        (
            "apiVersion: tollgate.dev/v1alpha1\nkind: AccessPolicy\nmetadata: {name: Bad_Name}\nspec: {hosts: [a]}",
            "not a valid Kubernetes name",
        ),
        ("spec: [unclosed", "invalid YAML"),
        ("- just\n- a list", "a document must be a mapping"),
    ],
)
def test_broken_documents(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(content)
    assert cli.main(["policy", "check", str(path)]) == 1
    error = capsys.readouterr().err
    assert str(path) in error and message in error


def test_yaml_errors_give_line_numbers(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(HEADER + "spec:\n  hosts: [a.test\n  mode: x\n")
    with pytest.raises(ConfigErrors) as caught:
        loader.load(path)
    assert "line " in str(caught.value)


def test_every_error_is_reported_at_once(tmp_path: pathlib.Path) -> None:
    (tmp_path / "a.yaml").write_text(HEADER + "spec: {hosts: []}\n")
    (tmp_path / "b.yaml").write_text(HEADER.replace("name: p", "name: q") + "spec: {hosts: ['x:1']}\n")
    with pytest.raises(ConfigErrors) as caught:
        loader.load(tmp_path)
    assert len(caught.value.errors) == 2
    assert {pathlib.Path(e.file).name for e in caught.value.errors} == {"a.yaml", "b.yaml"}


def test_duplicate_policy_across_files(tmp_path: pathlib.Path) -> None:
    (tmp_path / "a.yaml").write_text(HEADER + "spec: {hosts: [a.test]}\n")
    (tmp_path / "b.yaml").write_text(HEADER + "spec: {hosts: [b.test]}\n")
    with pytest.raises(ConfigErrors) as caught:
        loader.load(tmp_path)
    assert "also defined in" in str(caught.value) and "a.yaml" in str(caught.value)


def test_directory_skips_hidden_and_non_yaml(tmp_path: pathlib.Path) -> None:
    (tmp_path / "ok.yaml").write_text(HEADER + "spec: {hosts: [a.test]}\n")
    (tmp_path / ".hidden.yaml").write_text("not: [valid")
    (tmp_path / "README.md").write_text("# notes")
    assert len(loader.load(tmp_path).policies) == 1


def test_check_reports_conflicts_and_succeeds(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        textwrap.dedent("""\
        apiVersion: tollgate.dev/v1alpha1
        kind: AccessPolicy
        metadata: {name: open}
        spec: {hosts: [a.test], defaultAction: Allow}
        ---
        apiVersion: tollgate.dev/v1alpha1
        kind: AccessPolicy
        metadata: {name: closed}
        spec: {hosts: ["*.test"], defaultAction: Deny}
        """)
    )
    assert cli.main(["policy", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "warning: a.test: policies disagree on defaultAction" in out
    assert f"ok: {path}: 2 AccessPolicy" in out


def test_missing_path(capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path) -> None:
    assert cli.main(["policy", "check", str(tmp_path / "nope")]) == 1
    assert "no such file or directory" in capsys.readouterr().err


def test_explain_prints_the_deciding_rule(capsys: pytest.CaptureFixture[str]) -> None:
    examples = pathlib.Path(__file__).parents[2] / "examples" / "policies"
    assert (
        cli.main(
            ["policy", "explain", "--config", str(examples), "--host", "www.example.com", "--path", "/public/../admin"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert (
        "decision: deny (401)" in out and "rule:     no-admin" in out and "request:  GET www.example.com/admin" in out
    )
    assert (
        cli.main(
            [
                "policy",
                "explain",
                "--config",
                str(examples),
                "--method",
                "POST",
                "--host",
                "orders.example.com",
                "--path",
                "/orders/7",
                "--claims",
                '{"sub": "alice", "groups": ["admins"], "amr": ["mfa"]}',
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "decision: allow (200)" in out and "rule:     admins-write" in out
    assert (
        cli.main(["policy", "explain", "--config", str(examples), "--host", "www.example.com", "--path", "/a%2Fb"]) == 0
    )
    assert "path_encoded_slash" in capsys.readouterr().out
