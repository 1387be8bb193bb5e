"""``tollgate policy check`` and ``tollgate policy explain``.

``check`` loads configuration as the server would and lists every problem of every file, each
with file, document and field (exit 1 if there is one). ``explain`` decides one request the way
the server does — the same canonical request (:mod:`authz.check_request`), the same identity stage for
API keys and client certificates, the same claim mapping for tokens
(:func:`authz.identity.jwt.identity_from_claims`), the same :func:`authz.decision.decide` — and then
says why each rule on the host did or did not match. With ``--exit-code`` a deny exits 1, so it
can gate a CI pipeline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import sys
from collections.abc import Mapping
from typing import Any

from authz import configuration, decision, loader
from authz import request as request_model
from authz.cli import common
from authz.dev import checks
from authz.errors import ConfigError
from authz.identity import jwt, providers, resolve
from authz.identity import model as identity_model
from authz.policy import compile as compiled
from authz.policy import evaluate

__all__ = ["add_parser"]


def add_parser(commands: Any) -> None:
    policy = commands.add_parser("policy", help="check and explain policies").add_subparsers(
        dest="policy_command", required=True
    )
    check = policy.add_parser("check", help="validate configuration files or directories (exit 1 on error)")
    check.add_argument("paths", nargs="+", metavar="PATH", help="a YAML file or a directory of them")
    check.set_defaults(run=_check)

    explain = policy.add_parser("explain", help="show the decision for one request and why")
    explain.add_argument("--config", required=True, metavar="PATH", help="YAML file or directory, as for serve")
    explain.add_argument("--method", default="GET", help="the request's method")
    explain.add_argument("--host", required=True, help="the request's host (authority)")
    explain.add_argument("--path", required=True, help="the request target, path and query, as sent")
    explain.add_argument(
        "--claims", metavar="JSON", help="a verified token's claims to assume, as a JSON object (a JWT caller)"
    )
    explain.add_argument(
        "--provider",
        metavar="NAME",
        help="the jwt IdentityProvider that issued --claims (needed when several could have)",
    )
    explain.add_argument("--principal", default="", help="the mTLS peer principal (SPIFFE id) to assume")
    explain.add_argument("--source-ip", default="127.0.0.1", help="the client's address")
    explain.add_argument(
        "--header", action="append", default=[], metavar="NAME=VALUE", help="a request header; repeatable"
    )
    explain.add_argument(
        "--default-action", choices=["Allow", "Deny"], default="Deny", help="as for serve: hosts no policy covers"
    )
    explain.add_argument("--path-mode", choices=["strict", "lenient"], default="strict", help="as for serve")
    explain.add_argument("--exit-code", action="store_true", help="exit 1 when the request is denied")
    explain.set_defaults(run=_explain)


def _check(args: argparse.Namespace) -> int:
    errors: list[str] = []
    summaries: list[str] = []
    for path in args.paths:
        try:
            snapshot = loader.load(pathlib.Path(path))
        except ConfigError as error:
            errors.append(str(error))
            continue
        summaries.extend(f"warning: {conflict.host}: {conflict.message}" for conflict in snapshot.conflicts)
        summaries.append(
            f"ok: {path}: {len(snapshot.policies)} AccessPolicy, {len(snapshot.providers)} IdentityProvider "
            f"(revision {snapshot.revision})"
        )
    for line in summaries:
        print(line)
    for text in errors:
        print(text, file=sys.stderr)
    return 1 if errors else 0


def _explain(args: argparse.Namespace) -> int:
    try:
        snapshot = loader.load(pathlib.Path(args.config))
    except ConfigError as error:
        return common.fail(f"--config: invalid configuration:\n{error}", 2)
    headers = _headers(args.header)
    message = checks.check_request(
        method=args.method,
        host=args.host,
        path=args.path,
        headers=headers,
        source_ip=args.source_ip,
        principal=args.principal,
        request_id="explain",
    )
    stage = _AssumedIdentity(snapshot, _claims(args.claims), args.provider)
    if stage.problem:
        raise configuration.UsageError(stage.problem)
    made = asyncio.run(
        decision.decide_check(
            message,
            snapshot,
            stage,
            default_allow=args.default_action == "Allow",
            strict_paths=args.path_mode == "strict",
        )
    )
    if stage.problem:
        raise configuration.UsageError(stage.problem)
    _print(made, snapshot)
    return 1 if args.exit_code and not made.allowed else 0


def _headers(items: list[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for item in items:
        name, equals, value = item.partition("=")
        name = name.strip().lower()
        if not equals or not name:
            raise configuration.UsageError(f"--header {item!r}: must be NAME=VALUE")
        # Repeated --header flags are joined as Envoy joins repeated headers.
        headers[name] = headers[name] + "," + value.strip() if name in headers else value.strip()
    return headers


def _claims(text: str | None) -> Mapping[str, Any] | None:
    if text is None:
        return None
    try:
        claims = json.loads(text)
    except ValueError:
        raise configuration.UsageError("--claims: not valid JSON") from None
    if not isinstance(claims, dict):
        raise configuration.UsageError("--claims: must be a JSON object")
    return claims


class _AssumedIdentity:
    """The identity stage ``explain`` runs in place of token verification: the server's own
    resolver for API keys and client certificates, and for ``--claims`` the provider's claim
    mapping, within the providers the host accepts. What it cannot answer offline (a token that
    would need its provider's keys) is left in ``problem`` for a usage error."""

    def __init__(self, snapshot: loader.Snapshot, claims: Mapping[str, Any] | None, provider: str | None) -> None:
        self._resolver = resolve.IdentityResolver()
        self._resolver.update(snapshot.providers)  # not started: nothing is fetched
        self._jwt = {spec.name: spec.jwt for spec in snapshot.providers if spec.jwt is not None}
        self._claims = claims
        self._provider = provider
        self.problem = ""
        if provider is not None and provider not in self._jwt:
            self.problem = f"--provider {provider!r}: no jwt IdentityProvider of that name in --config"

    def resolve_now(
        self, request: request_model.HttpRequest, scope: frozenset[str] | None
    ) -> identity_model.Identity | None:
        if self.problem:
            raise identity_model.IdentityFailure("explain_unusable", self.problem)
        if self._claims is None:
            return self._resolver.resolve_now(request, scope)  # None: a token only its provider can verify
        name, settings = self._issuer(scope)
        mapping = settings.claims if settings is not None else providers.ClaimMapping()
        issuer = settings.issuer.rstrip("/") if settings is not None else ""
        identity = jwt.identity_from_claims(self._claims, mapping, provider=name, issuer=issuer)
        return self._resolver.complete(identity, request, scope)

    async def resolve(
        self, request: request_model.HttpRequest, scope: frozenset[str] | None
    ) -> identity_model.Identity:
        self.problem = (
            "the request carries a token only its provider can verify; "
            "give the token's claims with --claims instead of the token"
        )
        raise identity_model.IdentityFailure("explain_unusable", self.problem)

    def _issuer(self, scope: frozenset[str] | None) -> tuple[str, providers.JwtSettings | None]:
        """The provider ``--claims`` came from: named, or the only jwt provider the host accepts."""
        if self._provider is not None:
            if scope is not None and self._provider not in scope:
                raise identity_model.IdentityFailure(
                    "token_unknown_issuer", f"provider {self._provider!r} is not accepted on this host"
                )
            return self._provider, self._jwt[self._provider]
        candidates = sorted(name for name in self._jwt if scope is None or name in scope)
        if len(candidates) == 1:
            return candidates[0], self._jwt[candidates[0]]
        if not self._jwt:
            return "", None  # no jwt provider configured: the default claim names
        if not candidates:
            raise identity_model.IdentityFailure("token_unknown_issuer", "no jwt provider is accepted on this host")
        self.problem = f"--claims: {', '.join(candidates)} could have issued them; name one with --provider"
        raise identity_model.IdentityFailure("explain_unusable", self.problem)


def _print(made: decision.Decision, snapshot: loader.Snapshot) -> None:
    print(f"decision: {'allow' if made.allowed else 'deny'} ({made.status})")
    print(f"reason:   {made.reason}{': ' + made.message if made.message else ''}")
    print(f"policy:   {made.policy or '-'}")
    print(f"rule:     {made.rule or '-'}")
    request = made.request
    if request is None or made.status == 400:
        if request is not None:
            print(f"request:  {request.method} {request.host} {request.raw_path} (as sent; not judged)")
        return
    print(f"request:  {request.method} {request.host}{request.path}")
    identity = made.identity
    if made.reason.startswith(("token_", "mtls_", "apikey_", "identity_")):
        print("caller:   (not identified)")
    elif identity.authenticated:
        details = [f"{identity.method} {identity.subject}"]
        if identity.provider:
            details.append(f"provider {identity.provider}")
        if identity.groups:
            details.append(f"groups {', '.join(identity.groups)}")
        if identity.roles:
            details.append(f"roles {', '.join(identity.roles)}")
        details.append(f"mfa {'yes' if identity.mfa else 'no'}")
        print(f"caller:   {'; '.join(details)}")
    else:
        print("caller:   anonymous")
    host = snapshot.index.lookup(request.host)
    print(f"policies: {', '.join(host.policies) if host else '(none cover this host)'}")
    if made.dry_run is not None:
        would = made.dry_run
        print(
            f"dry-run:  would {'allow' if would.allowed else 'deny'} ({would.reason} "
            f"{would.policy}{'#' + would.rule if would.rule else ''})"
        )
    traces = evaluate.explain(host, compiled.Context(request, identity))
    if traces:
        print("rules (Deny rules first, then Allow, then the default):")
    for trace in sorted(traces, key=lambda t: t.action != "Deny"):
        mark = " (DryRun)" if trace.dry_run else ""
        outcome = "matches" if not trace.unmet else "not met: " + "; ".join(trace.unmet)
        print(f"  {trace.action:5} {trace.policy}#{trace.rule}{mark}: {outcome}")
    if host is not None and host.enforced:
        default = host.default_verdict
        print(f"  default: {'allow' if default.allowed else 'deny'} ({default.policy})")
