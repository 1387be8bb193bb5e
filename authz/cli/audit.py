"""``tollgate audit ...``: keys, verification, proofs, search, export and reports.

tollgate audit keygen --name NAME --out DIR          Ed25519 checkpoint signing key + verifier key
tollgate audit keygen --name NAME --kubernetes-secret NS/NAME   the same and a pseudonym key, into a new Secret
tollgate audit pseudonym-key --file F --id ID        create or rotate the HMAC pseudonym key file
tollgate audit verify DIR --key VKEY [--trusted CHECKPOINT]
tollgate audit prove DIR --record ID [--archive DIR] [--out FILE]
tollgate audit verify-proof FILE --key VKEY
tollgate audit query DIR [--since --until --subject --decision --host --path-prefix --reason --policy]
                     [--format table|json|csv] [--pseudonym-keys F]
tollgate audit report DIR [--since --until] [--threshold N --window S]
tollgate audit ui DIR [--archive DIR] --key VKEY [--listen HOST:PORT] [--pseudonym-keys F] [--witness STATE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import pathlib
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import tqdm

from authz import configuration
from authz.audit import keys, layout, note, proof, pseudonym, publish, query
from authz.audit import verify as audit_verify
from authz.audit import witness as witness_state
from authz.cli import common
from authz.errors import ConfigError

__all__ = ["add_parser"]


def add_parser(commands: Any) -> None:
    audit = commands.add_parser("audit", help="the audit trail: verify, prove, search, export")
    audit.set_defaults(run=_run)
    sub = audit.add_subparsers(dest="audit_command", required=True)

    keygen = sub.add_parser("keygen", help="create the checkpoint signing key and its verifier key")
    keygen.add_argument("--name", required=True, help="key name, e.g. tollgate.dev/audit/prod")
    where = keygen.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", help="directory for signing.key and verifier.key")
    where.add_argument(
        "--kubernetes-secret",
        metavar="NS/NAME",
        help="create this Secret with signing.key, verifier.key and pseudonyms.yaml (kept if it exists)",
    )

    pkey = sub.add_parser("pseudonym-key", help="create, or rotate in a new current key of, a pseudonym key file")
    pkey.add_argument("--file", required=True, help="the pseudonym key file (created if absent)")
    pkey.add_argument("--id", required=True, help="the new current key's id")

    verify = sub.add_parser("verify", help="verify a log directory offline with a pinned key")
    verify.add_argument(
        "directories",
        nargs="+",
        metavar="DIR",
        help="the audit log directory (--audit-dir); also its archive (--audit-archive-dir) to verify them as one, "
        "or an archive alone",
    )
    verify.add_argument("--key", required=True, help="verifier key file (or the key itself)")
    verify.add_argument("--trusted", help="a signed checkpoint kept elsewhere: the log must still contain it")
    verify.add_argument(
        "--witness",
        metavar="STATE",
        help="a witness's state directory (tollgate audit witness): the log must still contain all it accepted",
    )
    verify.add_argument("--progress", action="store_true", help="show a progress bar (default: on a terminal)")
    verify.add_argument(
        "--as-of",
        metavar="TIME",
        help="judge whether a session is still live as of this time (RFC 3339, epoch ms): when a copy "
        "was taken (default: now)",
    )

    _add_witness_parsers(sub)
    _add_ui_parser(sub)

    prove = sub.add_parser("prove", help="export one record with its inclusion proof")
    prove.add_argument("directory", help="the audit log directory (--audit-dir)")
    prove.add_argument("--record", required=True, help="record id (the decision id)")
    prove.add_argument(
        "--archive", help="the log's archive (--audit-archive-dir): older segments of the record's session"
    )
    prove.add_argument("--out", help="file to write (default: standard output)")

    check = sub.add_parser("verify-proof", help="check a proof file with nothing but the verifier key")
    check.add_argument("file", help="a proof file from tollgate audit prove")
    check.add_argument("--key", required=True, help="verifier key file (or the key itself)")

    for name, help_text in (("query", "search and export records"), ("report", "summarize denials and failures")):
        command = sub.add_parser(name, help=help_text)
        command.add_argument("directory", help="the audit log directory (--audit-dir)")
        command.add_argument("--since", help="RFC 3339 time, epoch ms, or an age like 15m, 2h, 7d")
        command.add_argument("--until", help="as --since: records before this time")
        command.add_argument("--subject", help="a subject (with --pseudonym-keys) or its pseudonym")
        command.add_argument("--email", help="an e-mail address (with --pseudonym-keys) or its pseudonym")
        command.add_argument("--pseudonym-keys", help="the pseudonym key file, to search by real subject or e-mail")
        command.add_argument("--decision", choices=["allow", "deny", "error"], help="the outcome")
        command.add_argument("--host", help="the request's host, exactly")
        command.add_argument("--path-prefix", help="the request's canonical path starts with this")
        command.add_argument("--reason", help="the reason code, exactly (e.g. token_expired)")
        command.add_argument("--policy", help="the deciding policy, exactly (namespace/name)")
        command.add_argument("--progress", action="store_true", help="show a progress bar (default: on a terminal)")
        if name == "query":
            kinds = ["decision", "alert"]
            command.add_argument(
                "--kind", choices=kinds, default="decision", help="decisions, or the detectors' alerts"
            )
            command.add_argument("--format", choices=["table", "json", "csv"], default="table", help="output format")
            command.add_argument("--out", help="file to write (default: standard output)")
        else:
            command.add_argument("--threshold", type=int, default=5, help="failed authentications that make a burst")
            command.add_argument("--window", type=int, default=60, help="seconds a burst must fit in")


def _add_witness_parsers(sub: Any) -> None:
    """``audit publish`` and ``audit witness``: checkpoints leave the box."""
    publish = sub.add_parser(
        "publish", help="serve a log's newest checkpoints and consistency proofs to witnesses (read-only HTTP)"
    )
    publish.add_argument("directory", help="the audit log directory (--audit-dir), or a copy of it")
    publish.add_argument("--listen", default="127.0.0.1:9402", metavar="HOST:PORT", help="where to serve")

    witness = sub.add_parser(
        "witness", help="copy, check and cosign every new checkpoint of one or more logs (run it off the box)"
    )
    witness.add_argument(
        "--url", action="append", required=True, help="a publisher (serve --audit-witness-listen); repeatable"
    )
    witness.add_argument("--key", required=True, help="the logs' verifier key file (or the key itself)")
    witness.add_argument("--signing-key", required=True, help="the witness's own signing key (tollgate audit keygen)")
    witness.add_argument("--state", required=True, help="the witness's directory: what it accepted, and alerts")
    witness.add_argument("--once", action="store_true", help="poll once; exit 1 if anything was refused")
    witness.add_argument("--interval", type=float, default=10.0, help="seconds between polls")


def _add_ui_parser(sub: Any) -> None:
    ui = sub.add_parser("ui", help="a read-only web view of the log for auditors (serve it behind Envoy and Tollgate)")
    ui.add_argument("directory", help="the audit log directory (--audit-dir)")
    ui.add_argument("--archive", help="its archive (--audit-archive-dir), read with it as one log")
    ui.add_argument("--key", required=True, help="verifier key file (or the key itself): every page shows the verdict")
    ui.add_argument("--listen", default="127.0.0.1:9403", metavar="HOST:PORT", help="where to serve")
    ui.add_argument("--pseudonym-keys", help="the pseudonym key file, to search by real subject or e-mail")
    ui.add_argument(
        "--index", help="the search index file (default: under $XDG_CACHE_HOME/tollgate); never in the log directory"
    )
    ui.add_argument(
        "--trace-url", default="", help="link to your tracing UI, with {trace_id}: https://grafana/trace/{trace_id}"
    )
    ui.add_argument(
        "--local-only",
        action="store_true",
        help="serve without Tollgate's identity headers; only on a loopback address, and views are not recorded",
    )
    ui.add_argument(
        "--witness", metavar="STATE", help="a witness's state directory: the log must still hold all it accepted"
    )
    ui.add_argument("--refresh", default="5", help="seconds between two looks for new records")
    ui.add_argument(
        "--verify-interval",
        default="300",
        help="at least this many seconds between two verifications (each reads every record)",
    )


def _fail(message: str, code: int = 2) -> int:
    return common.fail(f"audit: {message}", code)


def _log_directory(text: str) -> pathlib.Path:
    """The audit log directory named on the command line; one that holds no log is a usage error
    (exit 2), never a verdict ("tampered") or an empty answer."""
    directory = pathlib.Path(text)
    if not directory.exists():
        problem = "no such directory"
    elif not directory.is_dir():
        problem = "not a directory"
    elif not layout.has_sessions(directory):
        problem = "no audit log here (expected <instance>/<session>/, see docs/audit.md)"
    else:
        return directory
    raise configuration.UsageError(f"audit: {directory}: {problem}")


def _key_text(value: str) -> str:
    """A key given as a file, or as the key itself."""
    path = pathlib.Path(value)
    return path.read_text() if path.exists() else value


def _verifier(value: str) -> note.Verifier:
    return note.Verifier(_key_text(value))


@contextlib.contextmanager
def _progress(enabled: bool, total: int, label: str) -> Iterator[Callable[[int], None] | None]:
    if not (enabled or sys.stderr.isatty()):
        yield None
        return
    with tqdm.tqdm(total=total, unit="B", unit_scale=True, desc=label, file=sys.stderr) as bar:

        def advance(done: int) -> None:
            bar.update(done)

        yield advance


def _run(args: argparse.Namespace) -> int:
    command = args.audit_command
    try:
        if command == "keygen":
            return _keygen(args)
        if command == "pseudonym-key":
            pseudonym.generate_key_file(pathlib.Path(args.file), args.id)
            print(f"{args.file}: current pseudonym key is now {args.id!r}")
            return 0
        if command == "verify":
            return _verify(args)
        if command == "prove":
            return _prove(args)
        if command == "publish":
            return _publish(args)
        if command == "witness":
            return _witness(args)
        if command == "verify-proof":
            return _verify_proof(args)
        if command == "ui":
            return _ui(args)
        return _query(args)
    except note.NoteError as error:
        return _fail(f"--key: {error}")
    except ConfigError as error:
        return _fail(str(error))
    except OSError as error:
        return _fail(f"{error.filename or ''}: {error.strerror}")


def _keygen(args: argparse.Namespace) -> int:
    if args.kubernetes_secret:
        return _keygen_secret(args.name, args.kubernetes_secret)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    skey, vkey = note.generate(args.name)
    signing = out / "signing.key"
    if signing.exists():
        return _fail(f"{signing} exists; refusing to overwrite a signing key")
    signing.write_text(skey + "\n")
    signing.chmod(0o600)
    (out / "verifier.key").write_text(vkey + "\n")
    print(f"signing key:  {signing} (keep secret; give to tollgate serve --audit-signing-key)")
    print(f"verifier key: {out / 'verifier.key'} (give to auditors: {vkey})")
    return 0


def _keygen_secret(name: str, where: str) -> int:
    """Create the audit keys Secret (the Helm chart's install hook); never replace one: a new
    signing key would split the evidence from what auditors already verify."""
    import base64  # noqa: PLC0415 - only this path talks to Kubernetes

    from lightkube import Client  # noqa: PLC0415
    from lightkube.core.exceptions import ApiError  # noqa: PLC0415
    from lightkube.models.meta_v1 import ObjectMeta  # noqa: PLC0415
    from lightkube.resources.core_v1 import Secret  # noqa: PLC0415

    namespace, slash, secret_name = where.partition("/")
    if not slash or not namespace or not secret_name:
        return _fail(f"--kubernetes-secret {where!r}: must be NAMESPACE/NAME")
    data = keys.new_key_set(name)
    encoded = {key: base64.b64encode(value.encode()).decode() for key, value in data.items()}
    labels = {"app.kubernetes.io/part-of": "tollgate", "app.kubernetes.io/component": "audit-keys"}
    client = Client(field_manager="tollgate-audit-keygen")
    try:
        client.create(Secret(metadata=ObjectMeta(name=secret_name, namespace=namespace, labels=labels), data=encoded))
    except ApiError as error:
        if error.status.code == 409:
            print(f"Secret {where} exists: keeping its keys")
            return 0
        return _fail(f"--kubernetes-secret {where}: {error.status.code} {error.status.message}")
    finally:
        client.close()
    verifier = data["verifier.key"].strip()
    print(f"Secret {where}: signing.key, pseudonyms.yaml and verifier.key (give to auditors: {verifier})")
    return 0


def _verify(args: argparse.Namespace) -> int:
    directories = [_log_directory(text) for text in args.directories]
    now = time.time_ns() // 1_000_000
    try:
        as_of = query.parse_time(args.as_of, now) if args.as_of else None
    except ValueError as error:
        return _fail(f"--as-of {args.as_of!r}: {error}")
    verifier = _verifier(args.key)
    trusted = []
    if args.trusted:
        trusted.append(note.parse_checkpoint(verifier.open(pathlib.Path(args.trusted).read_text())))
    if args.witness:
        state = pathlib.Path(args.witness)
        if not (state / witness_state.STATE).exists():
            return _fail(f"--witness {state}: no witness state here")
        for item in witness_state.accepted(state).values():
            trusted.append(note.parse_checkpoint(verifier.open(item.checkpoint)))
    total = sum(p.stat().st_size for directory in directories for p in layout.segments(directory))
    with _progress(args.progress, total, "verifying") as progress:
        report = audit_verify.verify_directory(directories, verifier, progress=progress, trusted=trusted, now_ms=as_of)
    for finding in report.findings:
        print(str(finding), file=sys.stderr if finding.severity != "info" else sys.stdout)
    verdict = {
        0: "OK",
        1: "FAILED: the log was tampered with or is incomplete",
        3: "INCOMPLETE: crash artefacts only (no sign of tampering)",
    }[report.exit_code]
    print(
        f"{verdict} — {report.sessions} session(s), {report.records} record(s), "
        f"{report.checkpoints} signed checkpoint(s)"
    )
    return report.exit_code


def _publish(args: argparse.Namespace) -> int:
    directory = _log_directory(args.directory)
    host, port = common.listen_on("--listen", args.listen)
    served = publish.LogPublisher(directory, host, port).start()
    print(f"publishing the checkpoints of {directory} on http://{args.listen}/audit/v1/checkpoints", flush=True)
    stop = common.stop_event()
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()
    served.stop()
    return 0


def _witness(args: argparse.Namespace) -> int:
    for url in args.url:
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            return _fail(f"--url {url!r}: must be an http(s) URL")
    if args.interval <= 0:
        return _fail("--interval: must be more than 0 seconds")
    log_key = _verifier(args.key)
    signer = note.Signer.from_skey(pathlib.Path(args.signing_key).read_text())
    state = pathlib.Path(args.state)
    stop = common.stop_event()
    while True:
        new, alerts = witness_state.poll(args.url, log_key, signer, state)
        for item in new:
            print(f"accepted {item.origin} at size {item.size}", flush=True)
        for alert in alerts:
            print(str(alert), file=sys.stderr, flush=True)
        if args.once:
            return 1 if alerts else 0
        with contextlib.suppress(KeyboardInterrupt):
            if stop.wait(args.interval):
                return 0


def _prove(args: argparse.Namespace) -> int:
    try:
        given = [pathlib.Path(args.directory), *([pathlib.Path(args.archive)] if args.archive else [])]
        made = proof.make_proof(given, args.record)
    except proof.ProofError as error:
        return _fail(str(error), 1)
    text = json.dumps(made, indent=2) + "\n"
    if args.out:
        pathlib.Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def _verify_proof(args: argparse.Namespace) -> int:
    try:
        document = json.loads(pathlib.Path(args.file).read_text())
        proven = proof.check_proof(document, _verifier(args.key))
    except (ValueError, proof.ProofError) as error:
        print(f"FAILED: {error}", file=sys.stderr)
        return 1
    print(f"OK: record {proven['id']} (seq {proven['seq']}) is in {proven['origin']} under a signed checkpoint")
    return 0


def _query(args: argparse.Namespace) -> int:
    directory = _log_directory(args.directory)
    now = time.time_ns() // 1_000_000
    try:
        since = query.parse_time(args.since, now) if args.since else None
        until = query.parse_time(args.until, now) if args.until else None
    except ValueError as error:
        return _fail(f"--since/--until: {error}")
    keys = pseudonym.load_keys(pathlib.Path(args.pseudonym_keys)) if args.pseudonym_keys else None
    searched: dict[str, frozenset[str]] = {}
    for flag, value in (("--subject", args.subject), ("--email", args.email)):
        try:
            searched[flag] = query.subject_pseudonyms(value, keys) if value else frozenset()
        except ValueError as error:
            return _fail(f"{flag} {value!r} {error}")
    filters = query.Filters(
        since_ms=since,
        until_ms=until,
        decision=args.decision,
        host=args.host,
        path_prefix=args.path_prefix,
        reason=args.reason,
        policy=args.policy,
        subjects=searched["--subject"],
        emails=searched["--email"],
        kinds=frozenset({getattr(args, "kind", "decision")}),
    )
    total = sum(p.stat().st_size for p in layout.segments(directory))
    with _progress(args.progress, total, "reading") as progress:
        items = query.iter_records(directory, filters, progress)
        if args.audit_command == "report":
            sys.stdout.write(query.report(items, threshold=args.threshold, window_s=args.window))
            return 0
        if args.out:
            with open(args.out, "w", newline="") as output:
                count = query.write(items, output, args.format, kind=args.kind)
            print(f"{count} record(s) written to {args.out}", file=sys.stderr)
        else:
            query.write(items, sys.stdout, args.format, kind=args.kind)
    return 0


def _ui(args: argparse.Namespace) -> int:
    import hashlib  # noqa: PLC0415 - only the web view needs these
    import os  # noqa: PLC0415

    import uvicorn  # noqa: PLC0415

    from authz.auditview import app as auditview  # noqa: PLC0415

    directories = [_log_directory(args.directory)]
    if args.archive:
        archive = pathlib.Path(args.archive)
        if not archive.is_dir():
            return _fail(f"--archive {archive}: no such directory")
        directories.append(archive)
    host, port = common.listen_on("--listen", args.listen)
    if args.local_only and not auditview.is_loopback(host):
        return _fail(f"--local-only: --listen {args.listen!r} is not a loopback address")
    if args.trace_url:
        parts = urllib.parse.urlsplit(args.trace_url)
        if parts.scheme not in ("http", "https") or "{trace_id}" not in args.trace_url:
            return _fail(f"--trace-url {args.trace_url!r}: must be an http(s) URL containing {{trace_id}}")
    witness = pathlib.Path(args.witness) if args.witness else None
    if witness is not None and not (witness / witness_state.STATE).exists():
        return _fail(f"--witness {witness}: no witness state here")
    key_text = _key_text(args.key)
    note.Verifier(key_text)  # a bad key is a usage error now (note.NoteError)
    keys = pseudonym.load_keys(pathlib.Path(args.pseudonym_keys)) if args.pseudonym_keys else None
    if args.index:
        index_path = pathlib.Path(args.index)
    else:
        cache = pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache")
        digest = hashlib.sha256("\n".join(str(d.resolve()) for d in directories).encode()).hexdigest()[:16]
        index_path = cache / "tollgate" / f"audit-index-{digest}.sqlite3"
    for directory in directories:
        if directory.resolve() in (index_path.resolve(), *index_path.resolve().parents):
            return _fail(f"--index {index_path}: inside the log directory {directory}; the web view never writes there")
    settings = auditview.Settings(
        directories=tuple(directories),
        verifier_key=key_text,
        index_path=index_path,
        pseudonym_keys=keys,
        trace_url=args.trace_url,
        local_only=args.local_only,
        refresh_seconds=common.number("--refresh", args.refresh, 0.1, 3600),
        verify_interval=common.number("--verify-interval", args.verify_interval, 0.1, 86400),
        witness=witness,
    )
    application = auditview.create_app(settings)
    shown = f"[{host}]" if ":" in host else host
    print(
        f"audit trail of {', '.join(map(str, directories))} on http://{shown}:{port}/ (index: {index_path})", flush=True
    )
    # h11, whatever else is installed: the strict parser (an HTTP/1.1 request without a Host is a
    # 400 before any page), and the same one wherever the view runs. The data plane's HTTP edge
    # brings httptools, which uvicorn would otherwise pick.
    config = uvicorn.Config(
        application, host=host, port=port, log_level="warning", proxy_headers=False, server_header=False, http="h11"
    )
    uvicorn.Server(config).run()
    return 0
