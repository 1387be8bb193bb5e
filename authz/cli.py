"""The ``tollgate`` command.

    tollgate serve --config PATH [--listen HOST:PORT] ...   run the ext_authz server
    tollgate policy check PATH                               validate configuration (exit 1 on error)
    tollgate policy explain --config PATH --method M --host H --path P [--claims JSON] [--source-ip IP]
    tollgate apikey create --id ID                           a new API key and the hash to store
    tollgate dev token --sub alice [--groups g,h] [--mfa]    a development-only signed token
    tollgate dev idp --listen HOST:PORT                      a development-only identity provider

Every ``serve`` flag can also come from an environment variable ``TOLLGATE_<FLAG>`` (``--listen``
→ ``TOLLGATE_LISTEN``); a flag on the command line wins. Errors print one line per problem naming
file, document and field, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import pathlib
import sys
from collections.abc import Sequence

from authz import loader, server, telemetry
from authz.audit import commands as audit_commands
from authz.audit import log as audit_log
from authz.audit import note, pseudonym, recorder
from authz.dev import commands as dev_commands
from authz.errors import ConfigError
from authz.identity import apikey
from authz.identity import model as identity_model
from authz.policy import compile as compiled
from authz.policy import evaluate
from authz.request import HttpRequest, RequestRejected, canonical_host, canonical_paths, check_method, split_path

__all__ = ["main"]


def _env(flag: str, default: str | None = None) -> str | None:
    return os.environ.get("TOLLGATE_" + flag.upper().replace("-", "_"), default)


def _flag_bool(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes", "on")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tollgate", description="Identity-aware access layer for Envoy.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the ext_authz gRPC server")
    serve.add_argument("--config", default=_env("config"), help="YAML file or directory [TOLLGATE_CONFIG]")
    serve.add_argument("--listen", default=_env("listen", "127.0.0.1:9001"), help="HOST:PORT [TOLLGATE_LISTEN]")
    serve.add_argument(
        "--default-action",
        choices=["Allow", "Deny"],
        default=_env("default_action", "Deny"),
        help="decision for hosts no policy covers [TOLLGATE_DEFAULT_ACTION]",
    )
    serve.add_argument(
        "--path-mode",
        choices=["strict", "lenient"],
        default=_env("path_mode", "strict"),
        help="strict: refuse encoded dots and double encoding in paths (docs/policy.md) [TOLLGATE_PATH_MODE]",
    )
    serve.add_argument(
        "--reload-interval",
        type=float,
        default=float(_env("reload_interval", "2") or 2),
        help="seconds between config change checks, 0 disables [TOLLGATE_RELOAD_INTERVAL]",
    )
    serve.add_argument(
        "--grace",
        type=float,
        default=float(_env("grace", "10") or 10),
        help="seconds to drain in-flight requests on SIGTERM [TOLLGATE_GRACE]",
    )
    serve.add_argument("--tls-cert", default=_env("tls_cert"), help="server certificate (PEM) [TOLLGATE_TLS_CERT]")
    serve.add_argument("--tls-key", default=_env("tls_key"), help="server key (PEM) [TOLLGATE_TLS_KEY]")
    serve.add_argument(
        "--tls-client-ca",
        default=_env("tls_client_ca"),
        help="CA for client certificates: enables mTLS [TOLLGATE_TLS_CLIENT_CA]",
    )
    serve.add_argument("--log-level", default=_env("log_level", "INFO"), help="[TOLLGATE_LOG_LEVEL]")
    audit = serve.add_argument_group("audit trail (docs/audit.md)")
    audit.add_argument(
        "--audit-dir",
        default=_env("audit_dir"),
        help="log directory; unset disables the audit trail [TOLLGATE_AUDIT_DIR]",
    )
    audit.add_argument(
        "--audit-signing-key",
        default=_env("audit_signing_key"),
        help="checkpoint signing key file (tollgate audit keygen) [TOLLGATE_AUDIT_SIGNING_KEY]",
    )
    audit.add_argument(
        "--audit-pseudonym-keys",
        default=_env("audit_pseudonym_keys"),
        help="HMAC key file for pseudonyms [TOLLGATE_AUDIT_PSEUDONYM_KEYS]",
    )
    audit.add_argument(
        "--audit-mode",
        choices=["async", "sync"],
        default=_env("audit_mode", "async"),
        help="async: never wait on disk; sync: answer after fsync, deny if the log cannot be "
        "written [TOLLGATE_AUDIT_MODE]",
    )
    audit.add_argument(
        "--audit-instance",
        default=_env("audit_instance") or _hostname(),
        help="instance name (default: host name, the pod name) [TOLLGATE_AUDIT_INSTANCE]",
    )
    audit.add_argument("--audit-queue-size", type=int, default=int(_env("audit_queue_size", "10000") or 10000))
    audit.add_argument(
        "--audit-checkpoint-every",
        type=int,
        default=int(_env("audit_checkpoint_every", "1000") or 1000),
        help="records per checkpoint",
    )
    audit.add_argument(
        "--audit-checkpoint-seconds",
        type=float,
        default=float(_env("audit_checkpoint_seconds", "10") or 10),
        help="seconds between checkpoints, and the idle heartbeat",
    )
    audit.add_argument(
        "--audit-segment-max-bytes", type=int, default=int(_env("audit_segment_max_bytes", str(64 << 20)) or 64 << 20)
    )
    audit.add_argument(
        "--audit-segment-max-seconds", type=float, default=float(_env("audit_segment_max_seconds", "3600") or 3600)
    )
    audit.add_argument(
        "--audit-retain-segments",
        type=int,
        default=int(_env("audit_retain_segments", "0") or 0),
        help="keep this many newest segments per instance (0: all)",
    )
    audit.add_argument(
        "--audit-archive-dir",
        default=_env("audit_archive_dir"),
        help="retention moves old segments here instead of deleting them",
    )
    audit.add_argument(
        "--audit-otel-logs",
        action="store_true",
        default=_flag_bool(_env("audit_otel_logs")),
        help="also send every record as an OpenTelemetry log record over OTLP (a copy: integrity lives in the "
        "files) [TOLLGATE_AUDIT_OTEL_LOGS]",
    )

    policy = commands.add_parser("policy", help="check and explain policies").add_subparsers(
        dest="policy_command", required=True
    )
    check = policy.add_parser("check", help="validate a configuration file or directory")
    check.add_argument("path")
    explain = policy.add_parser("explain", help="show the decision for one request and why")
    explain.add_argument("--config", required=True)
    explain.add_argument("--method", default="GET")
    explain.add_argument("--host", required=True)
    explain.add_argument("--path", required=True)
    explain.add_argument("--claims", help="verified claims to assume, as JSON (implies an authenticated caller)")
    explain.add_argument("--principal", default="", help="mTLS peer principal to assume")
    explain.add_argument("--source-ip", default="127.0.0.1")
    explain.add_argument("--header", action="append", default=[], help="NAME=VALUE, repeatable")
    explain.add_argument("--default-action", choices=["Allow", "Deny"], default="Deny")
    explain.add_argument("--path-mode", choices=["strict", "lenient"], default="strict", help="as for serve")

    keys = commands.add_parser("apikey", help="API keys").add_subparsers(dest="apikey_command", required=True)
    create = keys.add_parser("create", help="print a new key and the hash line for the keys file")
    create.add_argument("--id", required=True)

    audit_commands.add_parser(commands)
    dev_commands.add_parser(commands)
    return parser


def _hostname() -> str:
    import socket  # noqa: PLC0415 - only for this default

    return socket.gethostname().split(".")[0] or "tollgate"


def _audit_recorder(args: argparse.Namespace) -> recorder.AuditRecorder | None:
    """Build the recorder from the --audit-* flags (None when the audit trail is off)."""
    if not args.audit_dir:
        logging.getLogger("authz.audit").warning("audit trail disabled (no --audit-dir): decisions are not recorded")
        return None
    if not args.audit_signing_key or not args.audit_pseudonym_keys:
        raise ConfigError("--audit-dir needs --audit-signing-key and --audit-pseudonym-keys")
    try:
        signer = note.Signer.from_skey(pathlib.Path(args.audit_signing_key).read_text())
    except (OSError, note.NoteError) as error:
        raise ConfigError(f"cannot use the signing key: {error}", file=args.audit_signing_key) from error
    pseudonyms = pseudonym.load_keys(pathlib.Path(args.audit_pseudonym_keys))
    settings = audit_log.LogSettings(
        segment_max_bytes=args.audit_segment_max_bytes,
        segment_max_seconds=args.audit_segment_max_seconds,
        checkpoint_every=args.audit_checkpoint_every,
        checkpoint_seconds=args.audit_checkpoint_seconds,
        retain_segments=args.audit_retain_segments,
        archive_dir=pathlib.Path(args.audit_archive_dir) if args.audit_archive_dir else None,
    )
    log = audit_log.AuditLog(pathlib.Path(args.audit_dir), signer, instance=args.audit_instance, settings=settings)
    audit = recorder.AuditRecorder(log, pseudonyms, mode=args.audit_mode, queue_size=args.audit_queue_size)
    if args.audit_otel_logs:
        from authz.audit import otel_export  # noqa: PLC0415 - the logs SDK loads only when asked for

        audit.exporter = otel_export.LogExport()
    return audit


def _fail(message: str, code: int = 1) -> int:
    print(f"tollgate: {message}", file=sys.stderr)
    return code


def _serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.config:
        return _fail("--config (or TOLLGATE_CONFIG) is required", 2)
    if bool(args.tls_cert) != bool(args.tls_key):
        return _fail("--tls-cert and --tls-key go together", 2)
    settings = server.ServerSettings(
        config=pathlib.Path(args.config),
        listen=args.listen,
        default_allow=args.default_action == "Allow",
        strict_paths=args.path_mode == "strict",
        reload_interval=args.reload_interval,
        grace=args.grace,
        tls_cert=pathlib.Path(args.tls_cert) if args.tls_cert else None,
        tls_key=pathlib.Path(args.tls_key) if args.tls_key else None,
        tls_client_ca=pathlib.Path(args.tls_client_ca) if args.tls_client_ca else None,
    )
    try:
        snapshot = loader.load(settings.config)
        tracing = telemetry.Tracing.from_environment()
        audit_recorder = _audit_recorder(args)
    except ConfigError as error:
        return _fail(f"invalid configuration, not starting:\n{error}", 2)
    except telemetry.TracingUnavailable as error:
        return _fail(str(error), 2)

    async def run() -> None:
        runtime = server.Runtime(snapshot, default_allow=settings.default_allow, strict_paths=settings.strict_paths)
        runtime.tracing = tracing
        if audit_recorder is not None:
            await audit_recorder.start()
            runtime.recorder = audit_recorder
        await server.serve(settings, runtime)

    try:
        asyncio.run(run())
    except OSError as error:
        return _fail(str(error), 2)
    return 0


def _policy_check(args: argparse.Namespace) -> int:
    try:
        snapshot = loader.load(pathlib.Path(args.path))
    except ConfigError as error:
        print(str(error), file=sys.stderr)
        return 1
    for conflict in snapshot.conflicts:
        print(f"warning: {conflict.host}: {conflict.message}")
    print(
        f"ok: {len(snapshot.policies)} AccessPolicy, {len(snapshot.providers)} IdentityProvider "
        f"(revision {snapshot.revision})"
    )
    return 0


def _policy_explain(args: argparse.Namespace) -> int:
    try:
        snapshot = loader.load(pathlib.Path(args.config))
    except ConfigError as error:
        print(str(error), file=sys.stderr)
        return 1
    identity = identity_model.ANONYMOUS
    if args.claims:
        try:
            claims = json.loads(args.claims)
        except ValueError:
            return _fail("--claims: not valid JSON")
        if not isinstance(claims, dict):
            return _fail("--claims: must be a JSON object")
        identity = identity_model.Identity(
            authenticated=True,
            method="jwt",
            subject=str(claims.get("sub", "")),
            groups=identity_model.claim_values(claims, "groups"),
            roles=identity_model.claim_values(claims, "roles"),
            mfa="mfa" in identity_model.claim_values(claims, "amr"),
            claims=claims,
            principal=args.principal,
        )
    elif args.principal:
        identity = identity_model.Identity(
            authenticated=True, method="mtls", subject=args.principal, principal=args.principal
        )
    raw_path, query = split_path(args.path)
    headers: dict[str, str] = {}
    for item in args.header:
        name, _, value = item.partition("=")
        name = name.strip().lower()
        # Repeated --header flags are joined as Envoy joins repeated headers.
        headers[name] = headers[name] + "," + value.strip() if name in headers else value.strip()
    try:
        path, path_with_parameters = canonical_paths(raw_path, strict=args.path_mode == "strict")
        request = HttpRequest(
            method=check_method(args.method),
            host=canonical_host(args.host),
            path=path,
            raw_path=raw_path,
            path_with_parameters=path_with_parameters,
            query=query,
            headers=headers,
            source_ip=args.source_ip,
            source_principal=args.principal,
        )
        host = snapshot.index.lookup(request.host)
        verdict = evaluate.evaluate(
            host, compiled.Context(request, identity), server_default_allow=args.default_action == "Allow"
        )
    except RequestRejected as rejected:
        print(f"decision: deny (400)\nreason:   {rejected.code}: {rejected.message}")
        return 0
    status = 200 if verdict.allowed else (403 if identity.authenticated else 401)
    print(f"decision: {'allow' if verdict.allowed else 'deny'} ({status})")
    print(f"reason:   {verdict.reason}")
    print(f"policy:   {verdict.policy or '-'}")
    print(f"rule:     {verdict.rule or '-'}")
    print(f"request:  {request.method} {request.host}{request.path}")
    print(f"policies: {', '.join(host.policies) if host else '(none cover this host)'}")
    if verdict.dry_run is not None:
        would = verdict.dry_run
        print(
            f"dry-run:  would {'allow' if would.allowed else 'deny'} ({would.reason} "
            f"{would.policy}{'#' + would.rule if would.rule else ''})"
        )
    return 0


def _apikey_create(args: argparse.Namespace) -> int:
    try:
        key, digest = apikey.generate_key(args.id)
    except ValueError as error:
        return _fail(f"--id: {error}")
    print(f"key (give it to the client, it is not stored): {key}")
    print("keys file entry:")
    print(f"  - id: {args.id}\n    sha256: {digest}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "policy":
        return _policy_check(args) if args.policy_command == "check" else _policy_explain(args)
    if args.command == "apikey":
        return _apikey_create(args)
    if args.command == "audit":
        return audit_commands.run(args)
    return dev_commands.run(args)


if __name__ == "__main__":
    sys.exit(main())
