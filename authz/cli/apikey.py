"""``tollgate apikey create``: a new API key, and the line of the keys file that stores its hash."""

from __future__ import annotations

import argparse
from typing import Any

from authz.cli import common
from authz.identity import apikey

__all__ = ["add_parser"]


def add_parser(commands: Any) -> None:
    keys = commands.add_parser("apikey", help="API keys").add_subparsers(dest="apikey_command", required=True)
    create = keys.add_parser("create", help="print a new key and the hash line for the keys file")
    create.add_argument("--id", required=True, help="the key's id: lower-case letters, digits and '-'")
    create.set_defaults(run=_create)


def _create(args: argparse.Namespace) -> int:
    try:
        key, digest = apikey.generate_key(args.id)
    except ValueError as error:
        return common.fail(f"--id {args.id!r}: {error}")
    print(f"key (give it to the client, it is not stored): {key}")
    print("keys file entry:")
    print(f"  - id: {args.id}\n    sha256: {digest}")
    return 0
