"""``make demo``: Envoy + Tollgate + a demo upstream + the local identity provider, then sample
requests with real tokens, each decision printed; keeps running until Ctrl-C
(``DEMO_ONESHOT=1`` exits after the samples, non-zero if any sample was decided unexpectedly).

Ports (override with environment variables): Envoy DEMO_ENVOY_PORT=10000, Tollgate
DEMO_TOLLGATE_PORT=9001, its metrics and health DEMO_METRICS_PORT=9090, identity provider 9400
(fixed: examples/policies/identity.yaml names it).
Everything the demo writes — its audit log, the verifier key, the identity provider's keys — goes
to ``.tollgate-demo/`` in the working directory (``DEMO_DIR`` to change), emptied at each start, so
the README's tour can name the files.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import pathlib
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from http_sfv import list as sf_list

from authz.audit import note, pseudonym, query
from authz.audit import verify as audit_verify
from authz.dev import harness, idp, upstream

_EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples" / "policies"
_IDP_PORT = 9400
_COLOURS = ("\033[1m", "\033[32m", "\033[31m", "\033[2m", "\033[0m")
_BOLD, _GREEN, _RED, _DIM, _RESET = _COLOURS if sys.stdout.isatty() else ("",) * 5


def _request(port: int, method: str, host: str, path: str, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.putrequest(method, path, skip_host=True)
        connection.putheader("Host", host)
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        body = response.read()
        try:
            return response.status, json.loads(body)
        except ValueError:
            return response.status, {}
    finally:
        connection.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _samples(provider: idp.DevIdentityProvider) -> Iterator[tuple[str, str, str, str, dict[str, str], int]]:
    """(who, method, host, path, headers, expected status)."""
    alice = provider.token("alice", groups=["staff"], email="alice@example.com")
    bob = provider.token("bob", groups=["staff"])
    carol = provider.token("carol", groups=["admins"])
    carol_mfa = provider.token("carol", groups=["admins"], mfa=True)
    yield "anyone", "GET", "www.example.com", "/", {}, 200
    yield "anyone", "POST", "www.example.com", "/contact", {}, 200
    yield "anyone", "GET", "www.example.com", "/admin", {}, 401
    yield "anyone", "GET", "www.example.com", "/public/..;/admin", {}, 401
    yield "anyone", "GET", "orders.example.com", "/healthz", {}, 200
    yield "no token", "GET", "orders.example.com", "/orders", {}, 401
    yield "bad token", "GET", "orders.example.com", "/orders", bearer(alice[:-4] + "AAAA"), 401
    yield "alice", "GET", "orders.example.com", "/orders", bearer(alice), 200
    spoofing = {**bearer(alice), "x-tollgate-subject": "root"}
    yield "alice (spoofing)", "GET", "orders.example.com", "/orders/7", spoofing, 200
    yield "bob", "POST", "orders.example.com", "/orders/7", bearer(bob), 403
    yield "carol (admin, no MFA)", "POST", "orders.example.com", "/orders/7", bearer(carol), 403
    yield "carol (admin, MFA)", "POST", "orders.example.com", "/orders/7", bearer(carol_mfa), 200
    yield "alice", "GET", "orders.example.com", "//orders/internal/../internal/report", bearer(alice), 403
    yield "alice", "GET", "orders.example.com", "/orders%2Finternal", bearer(alice), 400


def _groups(copies: list[str]) -> str:
    """x-tollgate-groups as an upstream reads it: an RFC 9651 list of strings."""
    if not copies:
        return "-"
    parsed = sf_list.List()
    parsed.parse(copies[0].encode())
    return ",".join(str(item.value) for item in parsed)


def run_samples(envoy_port: int, provider: idp.DevIdentityProvider) -> int:
    unexpected = 0
    print(f"\n{_BOLD}Sample requests through Envoy (127.0.0.1:{envoy_port}){_RESET}\n")
    for who, method, host, path, headers, expected in _samples(provider):
        status, body = _request(envoy_port, method, host, path, headers)
        if status == 200:
            seen = body.get("headers", {})
            subject = seen.get("x-tollgate-subject", ["-"])[0]
            detail = f"allowed → upstream saw subject={subject} groups={_groups(seen.get('x-tollgate-groups', []))}"
            colour = _GREEN
        else:
            detail = f"denied: {body.get('error', '?')} ({body.get('reason', '?')})"
            colour = _RED
        mark = "" if status == expected else f"  {_RED}UNEXPECTED (wanted {expected}){_RESET}"
        unexpected += status != expected
        print(f"  {colour}{status}{_RESET}  {method:6} {host}{path}  {_DIM}as {who}{_RESET}\n       {detail}{mark}")
    return unexpected


def main() -> int:
    oneshot = os.environ.get("DEMO_ONESHOT") == "1"
    work = pathlib.Path(os.environ.get("DEMO_DIR", ".tollgate-demo")).resolve()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    config = work / "policies"
    shutil.copytree(_EXAMPLES, config)
    envoy_port = int(os.environ.get("DEMO_ENVOY_PORT", "10000"))
    tollgate_port = int(os.environ.get("DEMO_TOLLGATE_PORT", "9001"))
    metrics_port = int(os.environ.get("DEMO_METRICS_PORT", "9090"))
    ui_port = int(os.environ.get("DEMO_UI_PORT", "9403"))
    try:
        provider = idp.DevIdentityProvider(work / "idp", port=_IDP_PORT)
    except OSError as error:
        print(f"demo: cannot listen on 127.0.0.1:{_IDP_PORT} for the identity provider: {error}", file=sys.stderr)
        return 2
    echo = upstream.EchoUpstream()
    audit_dir, audit_flags, verifier_key = _audit_setup(work)
    extra = [*audit_flags, "--metrics-listen", f"127.0.0.1:{metrics_port}"]
    authz = harness.TollgateProcess(config, extra=extra, log_to=work / "tollgate.log", port=tollgate_port)
    # The auditors' web view: behind this Envoy for audit.example.com (only group auditors), and
    # --local-only on loopback for a browser on this machine.
    ui = harness.AuditUI(
        audit_dir,
        verifier_key,
        work / "audit-index.sqlite3",
        extra=["--local-only", "--pseudonym-keys", str(verifier_key.with_name("pseudonyms.yaml"))],
        log_to=work / "audit-ui.log",
        port=ui_port,
    )
    proxy = harness.Envoy(
        authz_port=authz.port,
        upstream_port=echo.port,
        log_to=work / "envoy.log",
        port=envoy_port,
        host_upstreams=(("audit.example.com", ui_port),),
    )
    print(f"{_BOLD}Tollgate demo{_RESET}  (work directory {work})")
    print(f"  identity provider  {provider.issuer}   DEVELOPMENT ONLY")
    print(f"  upstream (echo)    http://127.0.0.1:{echo.port}")
    print(f"  tollgate (gRPC)    127.0.0.1:{authz.port}   config {config}")
    print(f"  metrics            http://127.0.0.1:{metrics_port}/metrics   (and /healthz, /readyz)")
    print(f"  envoy              http://127.0.0.1:{envoy_port}")
    print(f"  audit log          {audit_dir}")
    print(f"  audit web view     http://127.0.0.1:{ui_port}/   (through Envoy: Host audit.example.com, group auditors)")
    with harness.running(provider, echo, authz, ui, proxy):
        _wait_for_keys(envoy_port, provider)
        unexpected = run_samples(envoy_port, provider)
        show_audit(audit_dir)
        unexpected += not brute_force(envoy_port, audit_dir)
        unexpected += not audit_view(envoy_port, ui_port, provider)
        if oneshot:
            authz.stop()  # SIGTERM: the audit session is closed with a final signed checkpoint
            intact = verify_audit(audit_dir, verifier_key)
            _print_files(work, audit_dir, verifier_key)
            print(f"\n{'all samples decided as expected' if not unexpected else f'{unexpected} unexpected'}")
            return 1 if unexpected or not intact else 0
        _print_files(work, audit_dir, verifier_key)
        _print_try(
            work,
            provider=provider,
            envoy_port=envoy_port,
            metrics_port=metrics_port,
            audit_dir=audit_dir,
            verifier_key=verifier_key,
        )
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
    print("stopped")
    return 0


def _print_try(
    work: pathlib.Path,
    *,
    provider: idp.DevIdentityProvider,
    envoy_port: int,
    metrics_port: int,
    audit_dir: pathlib.Path,
    verifier_key: pathlib.Path,
) -> None:
    token = provider.token("alice", groups=["staff"])
    print(
        f"\nTry it yourself (Ctrl-C to stop):\n  curl -H 'Host: orders.example.com' "
        f"-H 'Authorization: Bearer {token}' http://127.0.0.1:{envoy_port}/orders"
    )
    print(f"  .venv/bin/tollgate dev token --state {work / 'idp'} --sub alice --groups staff")
    print(f"  .venv/bin/tollgate audit query {audit_dir} --since 10m")
    print(f"  .venv/bin/tollgate audit query {audit_dir} --kind alert")
    print(f"  curl -s http://127.0.0.1:{metrics_port}/metrics | grep tollgate_checks_total")
    print(f"  .venv/bin/tollgate audit verify {audit_dir} --key {verifier_key}   (after Ctrl-C)")


def _print_files(work: pathlib.Path, audit_dir: pathlib.Path, verifier_key: pathlib.Path) -> None:
    print(f"\n{_BOLD}Files{_RESET} (kept until the next demo): {work}")
    print(f"  audit log     {audit_dir}")
    print(f"  verifier key  {verifier_key}")


def _audit_setup(work: pathlib.Path) -> tuple[pathlib.Path, list[str], pathlib.Path]:
    """Fresh development keys for the demo's audit trail (never reuse them elsewhere)."""
    keys = work / "audit-keys"
    keys.mkdir()
    skey, vkey = note.generate("tollgate.dev/audit/demo")
    (keys / "signing.key").write_text(skey)
    (keys / "verifier.key").write_text(vkey)
    pseudonym.generate_key_file(keys / "pseudonyms.yaml", "demo")
    audit_dir = work / "audit"
    flags = harness.audit_flags(keys, audit_dir, "--audit-instance", "demo", "--audit-checkpoint-seconds", "1")
    return audit_dir, flags, keys / "verifier.key"


def show_audit(audit_dir: pathlib.Path) -> None:
    """What the audit trail recorded, including what the DryRun policy would have done."""
    time.sleep(0.5)  # records are written in batches a few milliseconds apart
    records = list(query.iter_records(audit_dir, query.Filters()))
    judged = [item for item in records if item.get("dry_run")]
    print(
        f"\n{_BOLD}Audit trail{_RESET}: {len(records)} decision records (subjects and addresses pseudonymized); "
        f"the {len(judged)} a DryRun policy also judged:"
    )
    for item in judged:
        dry, request = item["dry_run"], item["request"]
        deciding = f"{dry['policy']}#{dry['rule']}" if dry.get("rule") else dry["policy"]
        print(
            f"  {item['decision']:5} {request['method']:6} {request['host']}{request['path']}  "
            f"{_DIM}with the DryRun policies enforced: would {dry['decision']} ({dry['reason']}, {deciding}){_RESET}"
        )


def brute_force(envoy_port: int, audit_dir: pathlib.Path) -> bool:
    """25 forged tokens from one address: the detector raises one alert, in the signed audit log."""
    print(f"\n{_BOLD}A brute force{_RESET}: 25 forged tokens from one address")
    for attempt in range(25):
        _request(envoy_port, "GET", "orders.example.com", "/orders", bearer(f"forged.token.{attempt}"))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        alerts = list(query.iter_records(audit_dir, query.Filters(kinds=frozenset({"alert"}))))
        if alerts:
            alert = alerts[0]["alert"]
            print(
                f"  {_RED}alert {alert['state']}{_RESET}: {alert['detector']}, {alert['key_kind']} "
                f"{alert['key'][:12]}… (a pseudonym), {alert['count']} failures within {alert['window_seconds']} s"
                f"\n  {_DIM}in the audit log, the metrics and the server log; first decision "
                f"{alert['first_decision']}{_RESET}"
            )
            return True
        time.sleep(0.2)
    print(f"  {_RED}UNEXPECTED: no alert was raised{_RESET}")
    return False


def audit_view(envoy_port: int, ui_port: int, provider: idp.DevIdentityProvider) -> bool:
    """The auditors' web view through Envoy: an auditor sees it, anyone else is refused by Tollgate."""
    print(f"\n{_BOLD}The auditors' web view{_RESET} (tollgate audit ui), behind the same Envoy and Tollgate")
    expected = True
    for who, groups, wanted in (("dana", ["auditors"], 200), ("alice", ["staff"], 403)):
        status, _ = _request(envoy_port, "GET", "audit.example.com", "/", bearer(provider.token(who, groups=groups)))
        colour = _GREEN if status == 200 else _RED
        mark = "" if status == wanted else f"  {_RED}UNEXPECTED (wanted {wanted}){_RESET}"
        expected &= status == wanted
        print(
            f"  {colour}{status}{_RESET}  GET    audit.example.com/  {_DIM}as {who} ({', '.join(groups)}){_RESET}{mark}"
        )
    print(f"  open http://127.0.0.1:{ui_port}/ in a browser {_DIM}(--local-only: this machine only){_RESET}")
    return expected


def verify_audit(audit_dir: pathlib.Path, verifier_key: pathlib.Path) -> bool:
    report = audit_verify.verify_directory(audit_dir, note.Verifier(verifier_key.read_text()))
    for finding in report.findings:
        print(f"  {finding}")
    verdict = "intact" if report.exit_code == 0 else "NOT intact"
    print(
        f"\n{_BOLD}Audit log verified offline{_RESET}: {verdict} — {report.records} records, "
        f"{report.checkpoints} signed checkpoints"
    )
    return report.exit_code == 0


def _wait_for_keys(port: int, provider: idp.DevIdentityProvider) -> None:
    """Tollgate fetches the provider's keys in the background right after it starts."""
    token = provider.token("probe")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        _, body = _request(port, "GET", "orders.example.com", "/orders", bearer(token))
        if body.get("reason") != "identity_unavailable":
            return
        time.sleep(0.1)


if __name__ == "__main__":
    sys.exit(main())
