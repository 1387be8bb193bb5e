"""``tollgate audit ui`` end to end: behind a real Envoy and a real Tollgate, in Debian's headless
Chromium, over the very log that Tollgate writes.

- An auditor (group ``auditors``, token in a cookie) sees the pages; anyone else gets Tollgate's
  403 or 401 and never reaches the page; every view, export and proof download is itself a
  decision record naming who looked at what. Identity headers a client forges are not believed.
- In the browser: the overview, a search by real subject and date through the form, a record,
  its inclusion proof (checked with ``tollgate audit verify-proof``), and a CSV export equal,
  byte for byte, to ``tollgate audit query`` for the same filter.
- A tampered log is flagged on every page; bad input gets a 400 naming the parameter; a hostile
  host name in the log stays text.
"""

from __future__ import annotations

import contextlib
import datetime
import html
import io
import json
import os
import pathlib
import re
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from selenium.webdriver.common.by import By

from authz import cli
from authz.audit import note, pseudonym, publish, query, witness
from authz.dev import auditlog, browser, harness, idp

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "docs" / "images" / "audit-ui-overview.png"
_MISSING = browser.missing()
needs_browser = pytest.mark.skipif(
    bool(_MISSING), reason=f"needs {' and '.join(_MISSING)} (make test installs them when run as root)"
)
pytestmark = [pytest.mark.envoy]

POLICIES = """\
apiVersion: tollgate.dev/v1alpha1
kind: AccessPolicy
metadata: {name: audit-ui, namespace: tollgate}
spec:
  hosts: [audit.test]
  rules:
    - {name: auditors, action: Allow, from: {groups: [auditors]}}
---
apiVersion: tollgate.dev/v1alpha1
kind: AccessPolicy
metadata: {name: app, namespace: shop}
spec:
  hosts: [app.test]
  rules:
    - {name: staff, action: Allow, to: {paths: [/orders]}, from: {groups: [staff]}}
"""


class Stack:
    def __init__(self, **parts: Any) -> None:
        self.__dict__.update(parts)

    def token(self, subject: str, *groups: str) -> str:
        return str(self.idp.token(subject, groups=list(groups)))

    def records(self, *flags: str) -> list[dict[str, Any]]:
        """``tollgate audit query --format json`` on the log, with ``flags``."""
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert cli.main(["audit", "query", str(self.audit_dir), "--format", "json", *flags]) == 0
        return [json.loads(line) for line in out.getvalue().splitlines()]

    def pseudonym(self, value: str) -> str:
        return str(pseudonym.load_keys(self.keys / "pseudonyms.yaml")(value))


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, dev_idp: idp.DevIdentityProvider, module_audit_keys: pathlib.Path
) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("audit-ui")
    config = directory / "config.yaml"
    config.write_text(dev_idp.provider_config("corp", cookie="session") + "---\n" + POLICIES)
    audit_dir = directory / "audit"
    started: list[Any] = []
    try:
        authz = harness.TollgateProcess(
            config,
            extra=harness.audit_flags(
                module_audit_keys, audit_dir, "--audit-mode", "sync", "--audit-checkpoint-seconds", "0.5"
            ),
            log_to=directory / "tollgate.log",
        ).start()
        started.append(authz)
        ui = harness.AuditUI(
            audit_dir,
            module_audit_keys / "verifier.key",
            directory / "index.sqlite3",
            extra=["--pseudonym-keys", str(module_audit_keys / "pseudonyms.yaml"), "--refresh", "0.3"],
            log_to=directory / "ui.log",
        ).start()
        started.append(ui)
        proxy = harness.Envoy(authz_port=authz.port, upstream_port=ui.port, log_to=directory / "envoy.log").start()
        started.append(proxy)
        yield Stack(idp=dev_idp, authz=authz, ui=ui, proxy=proxy, audit_dir=audit_dir, keys=module_audit_keys)
    finally:
        for process in reversed(started):
            process.stop()


def _recorded(stack: Stack, decision_id: str) -> dict[str, Any]:
    found = harness.wait_until(
        lambda: [r for r in stack.records("--host", "audit.test") if r["id"] == decision_id], what=decision_id
    )
    return dict(found[0])


def test_auditors_see_the_page_others_are_refused_and_every_visit_is_recorded(
    stack: Stack, http: Callable[..., Any]
) -> None:
    ann = {"authorization": "Bearer " + stack.token("ann", "auditors")}
    page = http(stack.proxy.port, "GET", "/", host="audit.test", headers=ann)
    assert page.status == 200
    text = page.body.decode()
    assert "Signed in as <strong>ann</strong> (auditors) via Tollgate" in text
    # The page names the record of this very view: allowed, by ann, for this path.
    (decision_id,) = re.findall(r'decision\s+<a href="/records/([0-9a-f-]+)">', text)
    seen = _recorded(stack, decision_id)
    assert seen["decision"] == "allow" and seen["policy"] == "tollgate/audit-ui" and seen["request"]["path"] == "/"
    assert seen["identity"]["subject"] == stack.pseudonym("ann")

    # Not an auditor: Tollgate's 403, and the page never answered (its own refusal reads otherwise).
    bob = {"authorization": "Bearer " + stack.token("bob", "staff")}
    for headers in (bob, {**bob, "x-tollgate-subject": "ann", "x-tollgate-groups": "auditors"}):
        refused = http(stack.proxy.port, "GET", "/search", host="audit.test", headers=headers)
        assert refused.status == 403 and b"Tollgate audit trail" not in refused.body
    assert http(stack.proxy.port, "GET", "/", host="audit.test").status == 401
    denied = harness.wait_until(
        lambda: stack.records("--host", "audit.test", "--decision", "deny", "--subject", stack.pseudonym("bob")),
        what="bob's denials",
    )
    assert len(denied) == 2 and {r["status"] for r in denied} == {403}
    assert {r["request"]["path"] for r in denied} == {"/search"}

    # An auditor who forges identity headers is shown as who Tollgate says she is.
    forged = http(
        stack.proxy.port, "GET", "/", host="audit.test", headers={**ann, "x-tollgate-subject": "mallory"}
    ).body.decode()
    assert "Signed in as <strong>ann</strong>" in forged and "mallory" not in forged

    # Around Envoy, straight to the page: no identity from Tollgate, refused.
    with pytest.raises(urllib.error.HTTPError) as refused_directly:
        urllib.request.urlopen(stack.ui.url + "/", timeout=5)
    assert refused_directly.value.code == 403
    assert b"no identity from Tollgate" in refused_directly.value.read()


@needs_browser
def test_in_a_browser_search_a_record_its_proof_and_an_export(
    stack: Stack, http: Callable[..., Any], tmp_path: pathlib.Path
) -> None:
    since = (datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M")
    alice = {"authorization": "Bearer " + stack.token("alice", "staff")}
    for path in ("/orders", "/admin", "/orders/7"):
        http(stack.proxy.port, "GET", path, host="app.test", headers=alice)
    http(stack.proxy.port, "GET", "/admin", host="app.test")
    time.sleep(1.0)  # a signed checkpoint covers them (every 0.5 s)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    driver = browser.chromium(downloads, resolve=["audit.test"])
    base = f"http://audit.test:{stack.proxy.port}"
    try:
        driver.get(base + "/healthz")  # any page of the site, to set its cookie
        driver.add_cookie({"name": "session", "value": stack.token("ann", "auditors"), "path": "/"})

        driver.get(base + "/?range=1h")
        assert "ann" in driver.find_element(By.ID, "viewer").text
        assert driver.find_element(By.ID, "chart-timeline").get_attribute("src").startswith("data:image/svg+xml")
        harness.wait_until(lambda: _counted(driver), what="the overview counting the requests to app.test")

        # Search by the real subject (the server has the pseudonym keys) and a date, in the form.
        driver.get(base + "/search")
        driver.find_element(By.NAME, "subject").send_keys("alice")
        driver.find_element(By.NAME, "since").send_keys(since)
        browser.follow(driver, driver.find_element(By.ID, "search-button"))
        expected = stack.records(
            "--subject", "alice", "--pseudonym-keys", str(stack.keys / "pseudonyms.yaml"), "--since", since
        )
        assert len(expected) == 3
        assert driver.find_element(By.ID, "result-count").text.startswith("3 matching decision(s)")
        links = driver.find_elements(By.CLASS_NAME, "record-link")
        assert len(links) == 3
        permalink = driver.find_element(By.ID, "permalink").get_attribute("href")
        assert "subject=alice" in permalink and urllib.parse.quote(since) in permalink

        # Export CSV: the same bytes `tollgate audit query` writes for the same filter.
        driver.find_element(By.ID, "export-csv").click()
        exported = browser.wait_for_download(downloads, lambda p: p.suffix == ".csv")
        reference = tmp_path / "query.csv"
        with contextlib.redirect_stderr(io.StringIO()):
            assert cli.main([
                "audit", "query", str(stack.audit_dir), "--subject", "alice", "--since", since,
                "--pseudonym-keys", str(stack.keys / "pseudonyms.yaml"), "--format", "csv", "--out", str(reference),
            ]) == 0  # fmt: skip
        assert exported.read_bytes() == reference.read_bytes()
        assert exported.read_bytes().count(b"\n") == 4  # a header and alice's three decisions

        # A record, and its inclusion proof: checked offline with nothing but the verifier key.
        browser.follow(driver, links[0])
        record_id = driver.find_element(By.ID, "record-id").text
        assert record_id == expected[-1]["id"]  # newest first
        assert "alice" not in driver.find_element(By.ID, "raw").text  # pseudonyms only
        driver.find_element(By.ID, "download-proof").click()
        proof = browser.wait_for_download(downloads, lambda p: p.name == f"proof-{record_id}.json")
        with contextlib.redirect_stdout(io.StringIO()) as said:
            assert cli.main(["audit", "verify-proof", str(proof), "--key", str(stack.keys / "verifier.key")]) == 0
        assert f"record {record_id}" in said.getvalue()

        driver.get(base + "/integrity")
        assert "intact" in driver.find_element(By.ID, "verdict").text
        assert driver.find_element(By.ID, "sessions").text.count("live") == 1
    finally:
        driver.quit()

    # Who looked at what: each of those views is a decision record by ann, path by path.
    views = {"/", "/search", f"/records/{record_id}", f"/records/{record_id}/proof", "/export", "/integrity"}

    def viewed() -> set[str]:
        by_ann = stack.records("--host", "audit.test", "--subject", stack.pseudonym("ann"), "--decision", "allow")
        return {r["request"]["path"] for r in by_ann}

    harness.wait_until(lambda: viewed() >= views, what="the views in the audit log")


def _counted(driver: Any) -> bool:
    """Whether the overview counts alice's four requests yet (reloading it if not)."""
    driver.refresh()
    return bool(int(driver.find_element(By.ID, "totals").text.split()[0]) >= 4)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> auditlog.Written:
    """A day of decisions (20,000, one every 4.3 s), alerts, and a client-chosen host with markup."""
    return auditlog.write_log(
        tmp_path_factory.mktemp("synthetic"),
        20_000,
        spacing_ms=4320,
        users=200,
        hosts=8,
        alert_every=2500,
        odd_hosts=('<img src=x onerror="alert(1)">.test',),
    )


@pytest.fixture
def local_ui(synthetic: auditlog.Written, tmp_path: pathlib.Path) -> Iterator[Callable[..., harness.AuditUI]]:
    started: list[harness.AuditUI] = []

    def start(
        directory: pathlib.Path = synthetic.directory, *extra: str, key: pathlib.Path = synthetic.verifier_key
    ) -> harness.AuditUI:
        ui = harness.AuditUI(
            directory,
            key,
            tmp_path / f"index-{len(started)}.sqlite3",
            extra=["--local-only", "--refresh", "0.3", "--verify-interval", "0.5", *extra],
            log_to=tmp_path / "ui.log",
        ).start()
        started.append(ui)
        return ui

    yield start
    for ui in started:
        ui.stop()


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _indexed(ui: harness.AuditUI) -> str:
    return str(
        harness.wait_until(lambda: (page := _get(ui.url + "/?range=all")[1]) and "Indexing" not in page and page)
    )


@needs_browser
def test_a_tampered_log_is_flagged_on_every_page(
    local_ui: Callable[..., harness.AuditUI], synthetic: auditlog.Written, tmp_path: pathlib.Path
) -> None:
    copy = tmp_path / "audit"
    shutil.copytree(synthetic.directory, copy)
    ui = local_ui(copy)
    _indexed(ui)
    driver = browser.chromium(tmp_path, width=1280, height=1500)
    try:
        driver.get(ui.url + "/?range=all")
        harness.wait_until(lambda: _banner(driver, "Log verified intact"), what="the intact banner")
        driver.save_screenshot(str(tmp_path / "overview.png"))
        if os.environ.get("TOLLGATE_UPDATE_SCREENSHOT") == "1":  # the README's picture
            SCREENSHOT.parent.mkdir(exist_ok=True)
            shutil.copy(tmp_path / "overview.png", SCREENSHOT)
        record = driver.find_element(By.CSS_SELECTOR, "#alerts a").get_attribute("href")

        # One record's path edited in place, same length: the hash chain and the Merkle tree break.
        (segment,) = list(copy.rglob("segment-*.jsonl"))
        data = segment.read_bytes()
        segment.write_bytes(data.replace(b'"path":"/api/orders/5"', b'"path":"/api/orders/6"', 1))
        for page in ("/?range=all", "/search?decision=deny", record, "/integrity"):
            driver.get(page if page.startswith("http") else ui.url + page)
            harness.wait_until(lambda: _banner(driver, "TAMPERED"), what=f"the tampered banner on {page}")
        assert "tampered" in driver.find_element(By.ID, "sessions").text
        assert "INTEGRITY" in driver.find_element(By.ID, "findings").text
    finally:
        driver.quit()


def _banner(driver: Any, text: str) -> bool:
    if text not in driver.find_element(By.ID, "integrity-banner").text:
        driver.refresh()
        return False
    return True


def test_pages_answer_bad_input_with_400_naming_the_parameter(local_ui: Callable[..., harness.AuditUI]) -> None:
    ui = local_ui()
    _indexed(ui)
    for asked, says in (
        ("since=yesterday-ish", "since: 'yesterday-ish' is not a time"),
        ("until=2026-13-45", "until: '2026-13-45' is not a time"),
        ("since=99999999999999999999999", "since: '99999999999999999999999' is not a time"),
        ("since=9999999999999d", "since: '9999999999999d' is not a time"),
        ("decision=maybe", "decision: 'maybe' is not allow, deny or error"),
        ("subject=alice", "subject: 'alice' is not a pseudonym (32 hex digits)"),
        ("page=0", "page: must be from 1 to"),
        ("page=two", "page: not a number"),
        ("host=" + "h" * 600, "host: longer than 512 characters"),
    ):
        status, body = _get(f"{ui.url}/search?{asked}")
        assert status == 400 and says in html.unescape(body), (asked, body[-300:])
        assert "Traceback" not in body
    assert _get(ui.url + "/export?format=xml")[0] == 400
    assert _get(ui.url + "/?range=forever")[0] == 400
    assert _get(ui.url + "/records/no-such-record")[0] == 404


def test_a_hostile_host_name_stays_text_and_trace_ids_link_out(
    local_ui: Callable[..., harness.AuditUI], synthetic: auditlog.Written
) -> None:
    ui = local_ui(synthetic.directory, "--trace-url", "https://tracing.example/trace/{trace_id}")
    page = _indexed(ui)
    hostile = '<img src=x onerror="alert(1)">.test'
    status, body = _get(ui.url + "/search?" + urllib.parse.urlencode({"host": hostile}))
    assert status == 200 and "<strong>1</strong> matching decision(s)" in body
    assert hostile not in body and "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;.test" in body
    assert "<img src=x" not in page and "&lt;img src=x" in page  # the overview lists hosts too
    record_id = re.findall(r'href="/records/([0-9a-f-]+)" class="record-link"', body)[0]
    status, record = _get(f"{ui.url}/records/{record_id}")
    assert status == 200 and 'href="https://tracing.example/trace/00000000000000000000000000000000"' in record
    with urllib.request.urlopen(ui.url + "/", timeout=10) as reply:
        policy = reply.headers["content-security-policy"]
    assert "script-src" not in policy and "default-src 'none'" in policy  # no script may run at all


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (
            ["--local-only", "--listen", "0.0.0.0:9999"],
            "--local-only: --listen '0.0.0.0:9999' is not a loopback address",
        ),
        (
            ["--trace-url", "https://tracing/trace"],
            "--trace-url 'https://tracing/trace': must be an http(s) URL containing {trace_id}",
        ),
        (["--refresh", "0"], "--refresh '0': must be from 0.1 to 3600"),
        (["--archive", "/nonexistent"], "--archive /nonexistent: no such directory"),
    ],
)
def test_bad_flags_are_one_line_errors(
    synthetic: auditlog.Written, flags: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["audit", "ui", str(synthetic.directory), "--key", str(synthetic.verifier_key), *flags]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1 and "Traceback" not in err


def test_the_index_is_never_written_into_the_log_directory(
    synthetic: auditlog.Written, capsys: pytest.CaptureFixture[str]
) -> None:
    inside = synthetic.directory / "index.sqlite3"
    assert (
        cli.main(
            ["audit", "ui", str(synthetic.directory), "--key", str(synthetic.verifier_key), "--index", str(inside)]
        )
        == 2
    )
    assert "inside the log directory" in capsys.readouterr().err and not inside.exists()


def test_with_a_witness_a_log_cut_back_to_an_earlier_checkpoint_is_tampered(
    local_ui: Callable[..., harness.AuditUI], synthetic: auditlog.Written, tmp_path: pathlib.Path
) -> None:
    # A witness accepts the whole log, through the real publisher.
    served = publish.LogPublisher(synthetic.directory, "127.0.0.1", port := harness.free_port()).start()
    try:
        signer = note.Signer.from_skey(note.generate("witness.test")[0])
        verifier = note.Verifier(synthetic.verifier_key.read_text())
        state = tmp_path / "witness"
        new, alerts = witness.poll([f"http://127.0.0.1:{port}"], verifier, signer, state)
    finally:
        served.stop()
    assert len(new) == 1 and not alerts
    # A copy cut back to an earlier signed checkpoint, the later ones gone: on its own it reads as a
    # log still being written (its newest checkpoint is recent). Only the witness knows it held more.
    cut = tmp_path / "audit"
    shutil.copytree(synthetic.directory, cut)
    (segment,) = list(cut.rglob("segment-*.jsonl"))
    checkpoints = segment.with_name("checkpoints.jsonl")
    entries = checkpoints.read_bytes().splitlines(keepends=True)
    earlier = sorted(json.loads(line)["size"] for line in entries)[-2]
    assert 1 < earlier < new[0].size
    segment.write_bytes(b"".join(segment.read_bytes().splitlines(keepends=True)[:earlier]))
    checkpoints.write_bytes(b"".join(line for line in entries if json.loads(line)["size"] <= earlier))

    # The witness, shown the cut log, refuses it: a smaller checkpoint than it accepted.
    served = publish.LogPublisher(cut, "127.0.0.1", port := harness.free_port()).start()
    try:
        refused, alerts = witness.poll([f"http://127.0.0.1:{port}"], verifier, signer, state)
    finally:
        served.stop()
    assert not refused and len(alerts) == 1

    alone = local_ui(cut)
    page = harness.wait_until(
        lambda: (text := _get(alone.url + "/integrity")[1]) and "Log verified intact" in text and text
    )
    assert "TAMPERED" not in page and "No witness state given" in page
    watched = local_ui(cut, "--witness", str(state))
    page = harness.wait_until(lambda: (text := _get(watched.url + "/integrity")[1]) and "TAMPERED" in text and text)
    assert f'<td class="n">{new[0].size}</td>' in page  # the witness's size, shown
    assert html.escape(str(alerts[0])) in page  # and what it refused
    assert "INTEGRITY" in page


def test_an_age_in_a_search_is_pinned_in_its_permalink_pages_and_export(
    local_ui: Callable[..., harness.AuditUI], synthetic: auditlog.Written
) -> None:
    ui = local_ui()
    _indexed(ui)
    before = time.time_ns() // 1_000_000 - 6 * 3_600_000
    status, body = _get(ui.url + "/search?since=6h&decision=deny")
    after = time.time_ns() // 1_000_000 - 6 * 3_600_000
    assert status == 200
    links = {
        name: html.unescape(re.search(rf'href="([^"]*)" id="{name}"', body).group(1))  # type: ignore[union-attr]
        for name in ("permalink", "next", "export-csv")
    }
    for link in links.values():
        (since,) = urllib.parse.parse_qs(urllib.parse.urlsplit(link).query)["since"]
        assert since.endswith("Z") and before <= query.parse_time(since, 0) <= after, link


def test_the_json_export_is_what_the_command_line_writes_for_the_same_filter(
    local_ui: Callable[..., harness.AuditUI], synthetic: auditlog.Written, tmp_path: pathlib.Path
) -> None:
    ui = local_ui(synthetic.directory, "--pseudonym-keys", str(synthetic.pseudonym_keys))
    _indexed(ui)
    since = str(synthetic.first_ms + 3_600_000)
    asked = {"since": since, "subject": "user-7", "decision": "deny", "format": "json"}
    with urllib.request.urlopen(ui.url + "/export?" + urllib.parse.urlencode(asked), timeout=30) as reply:
        exported = reply.read()
        assert reply.headers["content-disposition"].startswith('attachment; filename="tollgate-audit-')
    reference = tmp_path / "query.jsonl"
    with contextlib.redirect_stderr(io.StringIO()):
        assert cli.main([
            "audit", "query", str(synthetic.directory), "--since", since, "--subject", "user-7", "--decision", "deny",
            "--pseudonym-keys", str(synthetic.pseudonym_keys), "--format", "json", "--out", str(reference),
        ]) == 0  # fmt: skip
    assert exported == reference.read_bytes() and exported.count(b"\n") >= 5


def test_a_proof_of_a_record_whose_session_was_partly_archived_needs_and_uses_the_archive(
    local_ui: Callable[..., harness.AuditUI], tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The real writer with small segments and retention archiving all but the newest.
    archive = tmp_path / "archive"
    written = auditlog.write_log(tmp_path, 3000, segment_bytes=200_000, archive=archive)
    assert list(archive.rglob("segment-*.jsonl")) and list(written.directory.rglob("segment-*.jsonl"))
    live_ids = [
        json.loads(line)["id"]
        for segment in written.directory.rglob("segment-*.jsonl")
        for line in segment.read_text().splitlines()
        if '"kind":"decision"' in line
    ]
    record_id = live_ids[0]  # in the live log; its session's first segments are in the archive
    key = str(written.verifier_key)
    out = tmp_path / "proof.json"
    assert cli.main(["audit", "prove", str(written.directory), "--record", record_id, "--out", str(out)]) == 1
    assert "give the archive too" in capsys.readouterr().err
    assert cli.main(["audit", "prove", str(written.directory), "--record", record_id, "--archive", str(archive),
                     "--out", str(out)]) == 0  # fmt: skip
    assert cli.main(["audit", "verify-proof", str(out), "--key", key]) == 0

    ui = local_ui(written.directory, "--archive", str(archive), key=written.verifier_key)
    harness.wait_until(lambda: _get(f"{ui.url}/records/{record_id}")[0] == 200, what="the record indexed")
    page = harness.wait_until(lambda: (text := _get(ui.url + "/integrity")[1]) and "Verdict" in text and text)
    assert "intact" in page and "TAMPERED" not in page  # the live log and its archive verify as one
    status, body = _get(f"{ui.url}/records/{record_id}/proof")
    assert status == 200
    (tmp_path / "downloaded.json").write_text(body)
    assert cli.main(["audit", "verify-proof", str(tmp_path / "downloaded.json"), "--key", key]) == 0


def _proof_of_an_edited_record(
    local_ui: Callable[..., harness.AuditUI], tmp_path: pathlib.Path, edit: Callable[[list[bytes]], int]
) -> tuple[int, str]:
    """The web view's answer to a proof download for the record ``edit`` names, after ``edit``
    changed the lines of the log's segment (the record itself still indexed and shown)."""
    written = auditlog.write_log(tmp_path, 200)
    segment = next(written.directory.rglob("segment-*.jsonl"))
    segment.chmod(0o640)
    lines = segment.read_bytes().splitlines(True)
    record_id = json.loads(lines[edit(lines)])["id"]
    segment.write_bytes(b"".join(lines))
    ui = local_ui(written.directory, key=written.verifier_key)
    harness.wait_until(lambda: _get(f"{ui.url}/records/{record_id}")[0] == 200, what="the record indexed")
    return _get(f"{ui.url}/records/{record_id}/proof")


def test_a_session_whose_first_record_is_damaged_gets_a_reason_and_the_rest_of_the_view_works(
    local_ui: Callable[..., harness.AuditUI], tmp_path: pathlib.Path
) -> None:
    def damage_the_first(lines: list[bytes]) -> int:
        lines[0] = b"[]\n"  # the session_start record
        return 50

    status, body = _proof_of_an_edited_record(local_ui, tmp_path, damage_the_first)
    assert status == 409 and "first record cannot be read" in body


def test_a_record_whose_position_was_edited_gets_a_reason_not_an_error(
    local_ui: Callable[..., harness.AuditUI], tmp_path: pathlib.Path
) -> None:
    def edit_its_seq(lines: list[bytes]) -> int:
        lines[60] = re.sub(rb'"seq":\d+', b'"seq":"sixty"', lines[60])
        return 60

    status, body = _proof_of_an_edited_record(local_ui, tmp_path, edit_its_seq)
    assert status == 409 and "no position" in body


def test_local_only_answers_only_requests_addressed_to_this_machine(
    local_ui: Callable[..., harness.AuditUI], http: Callable[..., Any]
) -> None:
    # A page in the auditor's browser could point a DNS name of its own at 127.0.0.1 (rebinding)
    # and read the view: the Host it sends is then that name, which --local-only refuses.
    ui = local_ui()
    # (HTTP/1.1 without a Host is refused by the HTTP server itself, before the page: 400.)
    for host, status in (("127.0.0.1", 200), ("localhost:9403", 200), ("attacker.example", 403), (None, 400)):
        reply = http(ui.port, "GET", "/integrity", host=host)
        assert reply.status == status, (host, reply.body[:200])
    refused = http(ui.port, "GET", "/", host="attacker.example:9403")
    assert b"loopback name or address" in refused.body
