"""``tollgate dev ...``: development-only helpers (a local identity provider and its tokens).

Everything these commands print or serve is marked development-only: the provider signs any
claims it is asked for.
"""

from __future__ import annotations

import argparse
import contextlib
import pathlib
import sys
from typing import Any

from authz.cli import common
from authz.dev import idp

__all__ = ["add_parser"]

_DEFAULT_STATE = ".tollgate-dev"


def add_parser(commands: Any) -> None:
    dev = commands.add_parser("dev", help="development-only tools (never use in production)")
    dev.set_defaults(run=_run)
    sub = dev.add_subparsers(dest="dev_command", required=True)
    token = sub.add_parser("token", help="print a development-only signed token")
    token.add_argument("--state", default=_DEFAULT_STATE, help="the dev identity provider's state directory")
    token.add_argument("--sub", required=True, help="the subject claim")
    token.add_argument("--groups", default="", help="comma-separated")
    token.add_argument("--roles", default="", help="comma-separated")
    token.add_argument("--email", default="", help="the email claim")
    token.add_argument("--mfa", action="store_true", help="amr includes mfa")
    token.add_argument("--audience", default="tollgate-demo", help="the aud claim")
    token.add_argument("--lifetime", type=int, default=3600, help="seconds")
    serve = sub.add_parser("idp", help="serve a development-only OIDC discovery + JWKS endpoint")
    serve.add_argument("--state", default=_DEFAULT_STATE, help="where its keys are kept")
    serve.add_argument("--listen", default="127.0.0.1:9400", metavar="HOST:PORT", help="where it serves")


def _split(text: str) -> list[str]:
    return [item for item in text.split(",") if item]


def _run(args: argparse.Namespace) -> int:
    state_dir = pathlib.Path(args.state)
    if args.dev_command == "token":
        if not (state_dir / "idp.json").exists():
            print(
                f"tollgate: no dev identity provider state in {state_dir}; run 'tollgate dev idp' first",
                file=sys.stderr,
            )
            return 1
        state = idp.load_state(state_dir)
        if "issuer" not in state:
            print("tollgate: the dev identity provider has never run; run 'tollgate dev idp' first", file=sys.stderr)
            return 1
        print("# DEVELOPMENT ONLY: signed by the local test identity provider", file=sys.stderr)
        print(
            idp.sign_token(
                state,
                args.sub,
                groups=_split(args.groups),
                roles=_split(args.roles),
                mfa=args.mfa,
                email=args.email,
                audience=args.audience,
                lifetime=args.lifetime,
            )
        )
        return 0
    host, port = common.listen_on("--listen", args.listen)
    provider = idp.DevIdentityProvider(state_dir, host=host, port=port).start()
    print(f"DEVELOPMENT ONLY identity provider: issuer {provider.issuer}, keys in {state_dir}", flush=True)
    stop = common.stop_event()
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()
    provider.stop()
    return 0
