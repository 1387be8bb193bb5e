"""The ``tollgate`` command: one module per command group, all wired here.

    tollgate serve --config PATH [--listen HOST:PORT] ...   run the ext_authz server   (cli.serve)
    tollgate operator [--publish NS/NAME] ...                run the Kubernetes operator (cli.operator)
    tollgate envoy-config --authz H:P --upstream H:P        an Envoy bootstrap wired to Tollgate (cli.envoy)
    tollgate policy check PATH...                            validate configuration     (cli.policy)
    tollgate policy explain --config PATH --host H --path P  the decision for one request, and why
    tollgate apikey create --id ID                           a new API key and its hash (cli.apikey)
    tollgate audit verify|prove|query|report|keygen ...      the audit trail            (cli.audit)
    tollgate dev idp|token ...                               development-only tools     (cli.dev)

Exit status: 0 done; 1 the answer is "no" (invalid configuration, a failed verification, a denied
request with ``--exit-code``); 2 the command cannot be carried out as given (a bad flag, variable,
file or value), with one line naming it on standard error — never a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from authz import configuration
from authz.cli import apikey, audit, common, dev, envoy, operator, policy, serve

__all__ = ["main", "parser"]


def parser() -> common.Parser:
    """The whole command line, as ``--help`` shows it."""
    root = common.Parser(prog="tollgate", description="Identity-aware access layer for Envoy.")
    root.add_argument("--version", action="version", version=f"tollgate {common.version()}")
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (serve, operator, envoy, policy, apikey, audit, dev):
        module.add_parser(commands)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # serve --workers starts copies of itself
    try:
        code: int = args.run(args)
    except configuration.UsageError as error:
        return common.fail(str(error), 2)
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
