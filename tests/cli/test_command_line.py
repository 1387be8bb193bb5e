"""The ``tollgate`` command as a user meets it, through the installed console script.

Every wrong flag, variable, file or value gets one line on standard error that names it, and
exit status 2; never a Python traceback.
"""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import pytest

from authz import cli

TOLLGATE = pathlib.Path(sys.executable).with_name("tollgate")
EXAMPLES = pathlib.Path(__file__).parents[2] / "examples" / "policies"


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
    return subprocess.run(
        [str(TOLLGATE), *args],
        capture_output=True,
        text=True,
        env={**environment, **(env or {})},
        timeout=timeout,
        check=False,
    )


def usage_error(result: subprocess.CompletedProcess[str], *named: str) -> str:
    """Assert a one-line usage error (exit 2) naming each of ``named``; return the line."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for name in named:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("tollgate ") and result.stdout.split()[1][0].isdigit()


def test_a_bad_variable_never_breaks_help_and_is_named_when_used(tmp_path: pathlib.Path) -> None:
    assert run("--help", env={"TOLLGATE_GRACE": "x"}).returncode == 0
    assert run("serve", "--help", env={"TOLLGATE_GRACE": "x"}).returncode == 0
    line = usage_error(run("serve", "--config", str(EXAMPLES), env={"TOLLGATE_GRACE": "x"}), "TOLLGATE_GRACE", "'x'")
    assert "seconds" in line
    usage_error(
        run("serve", "--config", str(EXAMPLES), env={"TOLLGATE_AUDIT_QUEUE_SIZE": "-1"}), "TOLLGATE_AUDIT_QUEUE_SIZE"
    )
    usage_error(
        run("serve", "--config", str(EXAMPLES), env={"TOLLGATE_AUDIT_OTEL_LOGS": "maybe"}), "TOLLGATE_AUDIT_OTEL_LOGS"
    )
    usage_error(run("serve", "--config", str(EXAMPLES), env={"TOLLGATE_PATH_MODE": "loose"}), "TOLLGATE_PATH_MODE")


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--listen", "nonsense"], "--listen"),
        (["--listen", "127.0.0.1:99999"], "--listen"),
        (["--listen", "[::1:80"], "--listen"),
        (["--reload-interval", "soon"], "--reload-interval"),
        (["--grace", "-1"], "--grace"),
        (["--default-action", "Maybe"], "--default-action"),
        (["--log-level", "LOUD"], "--log-level"),
        (["--tls-cert", "/nonexistent/cert.pem", "--tls-key", "/nonexistent/key.pem"], "--tls-cert"),
        (["--tls-cert", "/etc/hostname"], "--tls-key"),
        (["--audit-dir", "/tmp/x"], "--audit-signing-key"),
        (["--no-such-flag"], "--no-such-flag"),
        (["--metrics-listen", "nowhere"], "--metrics-listen"),
        (["--detection", "maybe"], "--detection"),
        (["--detectors", "/nonexistent/detectors.yaml"], "--detectors"),
        (["--alertmanager-url", "alertmanager:9093"], "--alertmanager-url"),
        (["--alertmanager-url", "http://alertmanager:9093", "--detection", "off"], "--alertmanager-url"),
    ],
)
def test_serve_refuses_bad_flags_in_one_line(flags: list[str], named: str) -> None:
    usage_error(run("serve", "--config", str(EXAMPLES), *flags), named)


def test_serve_refuses_a_detectors_file_naming_file_and_field(tmp_path: pathlib.Path) -> None:
    detectors = tmp_path / "detectors.yaml"
    detectors.write_text("detectors:\n  tokenReplay: {addresses: 0}\n")
    result = run("serve", "--config", str(EXAMPLES), "--detectors", str(detectors))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert str(detectors) in result.stderr and "detectors.tokenReplay.addresses" in result.stderr


def test_alert_events_without_an_otlp_endpoint_are_refused_in_one_line() -> None:
    unset = {"OTEL_EXPORTER_OTLP_ENDPOINT": "", "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": ""}
    result = run("serve", "--config", str(EXAMPLES), env={"OTEL_LOGS_EXPORTER": "otlp", **unset})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]  # after the warning that the audit trail is off
    assert last.startswith("tollgate: OTEL_LOGS_EXPORTER=otlp") and "OTEL_EXPORTER_OTLP_ENDPOINT" in last


def test_serve_refuses_a_malformed_kubernetes_source() -> None:
    usage_error(run("serve", "--config", "kubernetes:Not_A_Namespace"), "--config", "kubernetes:NAMESPACE/NAME")


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--publish", "no-slash"], "--publish"),
        (["--publish", "UPPER/case"], "--publish"),
        (["--watch-namespaces", "a,B_c"], "--watch-namespaces"),
        (["--webhook-listen", "nowhere"], "--webhook-listen"),
        (["--priority", "-1"], "--priority"),
        (["--delegations", "/nonexistent/delegations.yaml"], "--delegations"),
    ],
)
def test_operator_refuses_bad_flags_in_one_line(flags: list[str], named: str) -> None:
    usage_error(run("operator", *flags), named)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("[a, b]", "must be a mapping"),
        ("Team_A: [a.example.com]", "not a namespace name"),
        ("team-a: a.example.com", "must be a list"),
        ("team-a: ['a b']", "must be a list"),
        ("team-a: [", "invalid YAML"),
    ],
)
def test_operator_names_the_delegations_file_and_its_problem(
    tmp_path: pathlib.Path, content: str, problem: str
) -> None:
    path = tmp_path / "delegations.yaml"
    path.write_text(content)
    usage_error(run("operator", "--delegations", str(path)), "--delegations", str(path), problem)


def test_serve_without_config() -> None:
    usage_error(run("serve"), "--config", "TOLLGATE_CONFIG")


def test_listen_port_in_use() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        usage_error(run("serve", "--config", str(EXAMPLES), "--listen", f"127.0.0.1:{port}"), "--listen", "in use")


def test_serve_with_an_unreadable_signing_key(tmp_path: pathlib.Path) -> None:
    (tmp_path / "keys").write_text("current: a\nkeys: {a: AAAA}\n")
    result = run(
        "serve",
        "--config",
        str(EXAMPLES),
        "--audit-dir",
        str(tmp_path / "audit"),
        "--audit-signing-key",
        str(tmp_path / "missing.key"),
        "--audit-pseudonym-keys",
        str(tmp_path / "keys"),
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "missing.key" in result.stderr


def test_every_option_has_help() -> None:
    missing = []

    def walk(parser: object, prefix: str) -> None:
        for action in parser._actions:  # type: ignore[attr-defined]
            if action.option_strings and action.help is None:
                missing.append(f"{prefix} {action.option_strings[0]}")
            if hasattr(action, "choices") and isinstance(action.choices, dict):
                for name, sub in action.choices.items():
                    walk(sub, f"{prefix} {name}")
            elif action.dest != "help" and not action.option_strings and action.help is None:
                missing.append(f"{prefix} {action.dest}")

    walk(cli.parser(), "tollgate")
    assert missing == []
    text = run("serve", "--help").stdout
    assert "(default: 127.0.0.1:9001; env TOLLGATE_LISTEN)" in " ".join(text.split())
    assert "(default: 10.0; env TOLLGATE_GRACE)" in " ".join(text.split())


def test_audit_verify_and_query_refuse_a_folder_without_logs(tmp_path: pathlib.Path) -> None:
    key = tmp_path / "verifier.key"
    assert run("audit", "keygen", "--name", "tollgate.dev/audit/test", "--out", str(tmp_path)).returncode == 0
    line = usage_error(run("audit", "verify", "/nonexistent", "--key", str(key)), "/nonexistent")
    assert "tamper" not in line.lower()
    empty = tmp_path / "empty"
    empty.mkdir()
    usage_error(run("audit", "verify", str(empty), "--key", str(key)), str(empty), "no audit log")
    usage_error(run("audit", "query", str(empty)), str(empty), "no audit log")
    usage_error(run("audit", "report", str(tmp_path / "missing")), "no such directory")


def test_audit_query_by_real_subject_needs_the_pseudonym_keys(tmp_path: pathlib.Path) -> None:
    session = tmp_path / "logs" / "pod-1" / "0190a5b2-0000-7000-8000-000000000000"
    session.mkdir(parents=True)
    (session / "checkpoints.jsonl").write_text("")
    line = usage_error(
        run("audit", "query", str(tmp_path / "logs"), "--subject", "alice"), "--subject", "--pseudonym-keys"
    )
    assert "pseudonym" in line
    usage_error(
        run("audit", "query", str(tmp_path / "logs"), "--email", "a@example.com"), "--email", "--pseudonym-keys"
    )
    ok = run("audit", "query", str(tmp_path / "logs"), "--subject", "0" * 32, "--format", "json")
    assert ok.returncode == 0, ok.stderr


def test_policy_check_reports_every_error_of_every_file(tmp_path: pathlib.Path) -> None:
    config = tmp_path / "config"
    config.mkdir()
    (config / "a.yaml").write_text("apiVersion: tollgate.dev/v1alpha1\nkind: AccessPolicy\nmetadata: {name: a\n")
    (config / "b.yaml").write_text(
        textwrap.dedent("""\
            apiVersion: tollgate.dev/v1alpha1
            kind: AccessPolicy
            metadata: {name: b}
            spec:
              hosts: [b.test, 'x.*.test']
              rules:
                - {name: one, action: Allow, to: {paths: ['/a*b', admin]}, from: {ipBlocks: [10.0.0.0/33]}}
                - {name: two, action: Allow, to: {methods: ['GE T']}}
            ---
            apiVersion: tollgate.dev/v1alpha1
            kind: AccessPolicy
            metadata: {name: c}
            spec: {hosts: [c.test], mode: Audit, defaultAction: Maybe}
            """)
    )
    (config / "c.yaml").write_text(
        textwrap.dedent("""\
            apiVersion: tollgate.dev/v1alpha1
            kind: IdentityProvider
            metadata: {name: idp}
            spec:
              type: jwt
              jwt: {issuer: not-a-url, algorithms: [none], leewaySeconds: 9999}
            """)
    )
    other = tmp_path / "other.yaml"
    other.write_text("apiVersion: tollgate.dev/v1alpha1\nkind: Gadget\nmetadata: {name: g}\n")
    result = run("policy", "check", str(config), str(other))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    errors = result.stderr.strip().splitlines()
    expected = [
        ("a.yaml", "invalid YAML"),
        ("b.yaml: document 1 (AccessPolicy default/b): spec.rules[0].to.paths[0]", "'*' may only stand"),
        ("b.yaml: document 1 (AccessPolicy default/b): spec.rules[0].to.paths[1]", "starts with '/'"),
        ("b.yaml: document 1 (AccessPolicy default/b): spec.rules[0].from.ipBlocks[0]", "CIDR"),
        ("b.yaml: document 1 (AccessPolicy default/b): spec.rules[1].to.methods[0]", "not an HTTP method"),
        ("b.yaml: document 1 (AccessPolicy default/b): spec.hosts[1]", "not a host name"),
        ("b.yaml: document 2 (AccessPolicy default/c): spec.defaultAction", "Maybe"),
        ("b.yaml: document 2 (AccessPolicy default/c): spec.mode", "Audit"),
        ("c.yaml: document 1 (IdentityProvider default/idp): spec.jwt.issuer", "http(s) URL"),
        ("c.yaml: document 1 (IdentityProvider default/idp): spec.jwt.algorithms[0]", "'none'"),
        ("c.yaml: document 1 (IdentityProvider default/idp): spec.jwt.leewaySeconds", "between 0 and 300"),
        ("other.yaml: document 1 (Gadget default/g): kind", "kind must be one of"),
    ]
    for where, what in expected:
        assert any(where in line and what in line for line in errors), (where, what, errors)
    assert len(errors) == len(expected), errors


def test_policy_check_bounds_what_it_prints(tmp_path: pathlib.Path) -> None:
    rules = ", ".join(f"{{name: r{i}, action: Allow, to: {{paths: [bad{i}]}}}}" for i in range(150))
    (tmp_path / "p.yaml").write_text(
        "apiVersion: tollgate.dev/v1alpha1\nkind: AccessPolicy\nmetadata: {name: p}\n"
        f"spec: {{hosts: [a.test], rules: [{rules}]}}\n"
    )
    result = run("policy", "check", str(tmp_path / "p.yaml"))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 101
    assert lines[-1] == "... and 50 more error(s)"


def test_apikey_create_refuses_a_bad_id() -> None:
    usage_error(run("apikey", "create", "--id", "Not Valid"), "--id")
