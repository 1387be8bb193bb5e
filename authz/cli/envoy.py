"""``tollgate envoy-config``: a complete Envoy bootstrap wired to Tollgate, on standard output.

Built by :mod:`authz.envoy_bootstrap` (envoy-data-plane's typed classes) — the same builder the
tests and the demo run Envoy with. What it sets and why is in docs/operations.md ("Envoy"):
ext_authz over gRPC/HTTP/2 (or, with ``--authz-mode http``, Envoy's HTTP ext_authz with the
headers Tollgate needs from Envoy and no others believed) with ``failure_mode_allow: false``
(Tollgate unreachable: deny), a Check timeout, the peer certificate sent, request bodies off unless asked for, path
normalization and merged slashes before ext_authz and routing, tracing when a collector is named.
Hosts may be DNS names (Kubernetes Services): Envoy resolves them (STRICT_DNS).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import yaml

from authz.cli import common

__all__ = ["add_parser"]

# With several workers (docs/operations.md): checks per HTTP/2 connection, and a connection's life.
_STREAMS_PER_CONNECTION = 8
_CONNECTION_SECONDS = 30.0


def add_parser(commands: Any) -> None:
    command = commands.add_parser(
        "envoy-config",
        help="print an Envoy bootstrap wired to Tollgate",
        description="Print a complete Envoy bootstrap (YAML, or JSON) whose ext_authz filter asks Tollgate "
        "and whose route sends allowed requests upstream. Check it with envoy --mode validate -c FILE.",
    )
    command.add_argument(
        "--authz",
        required=True,
        metavar="HOST:PORT",
        help="Tollgate's address: its --listen (grpc) or --http-listen (http)",
    )
    command.add_argument(
        "--authz-mode",
        choices=("grpc", "http"),
        default="grpc",
        help="how Envoy asks Tollgate: grpc (grpc_service, the default) or http (http_service)",
    )
    command.add_argument(
        "--tollgate-workers",
        default="1",
        metavar="N",
        help="Tollgate runs with --workers N: spread the checks over them (grpc: at most 8 checks per "
        "HTTP/2 connection, so Envoy opens several; both modes: connections renewed every 30 s)",
    )
    command.add_argument("--upstream", required=True, metavar="HOST:PORT", help="where allowed requests go")
    command.add_argument("--listen", default="0.0.0.0:10000", metavar="HOST:PORT", help="Envoy's listener")
    command.add_argument("--admin", default="127.0.0.1:9901", metavar="HOST:PORT", help="Envoy's admin listener")
    command.add_argument(
        "--timeout", default="2", metavar="SECONDS", help="how long Envoy waits for a Check before it denies"
    )
    command.add_argument(
        "--request-body-bytes", default="", metavar="N", help="buffer request bodies up to N bytes for Tollgate"
    )
    command.add_argument("--tracing", default="", metavar="HOST:PORT", help="an OTLP/gRPC collector for Envoy's spans")
    command.add_argument("--access-log", action="store_true", help="one stdout line per request with the decision")
    command.add_argument("--format", choices=("yaml", "json"), default="yaml", help="output format")
    command.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # envoy-data-plane's typed classes take a second to import: only this command loads them.
    from authz import envoy_bootstrap  # noqa: PLC0415

    authz_host, authz_port = common.listen_on("--authz", args.authz)
    upstream_host, upstream_port = common.listen_on("--upstream", args.upstream)
    listen_host, listen_port = common.listen_on("--listen", args.listen)
    admin_host, admin_port = common.listen_on("--admin", args.admin)
    tracing_host, tracing_port = common.listen_on("--tracing", args.tracing) if args.tracing else ("", None)
    timeout = common.number("--timeout", args.timeout, minimum=0.001, maximum=60)
    body = (
        int(common.number("--request-body-bytes", args.request_body_bytes, 1, 8 << 20))
        if args.request_body_bytes
        else None
    )
    spread = int(common.number("--tollgate-workers", args.tollgate_workers, 1, 64)) > 1
    options = envoy_bootstrap.EnvoyOptions(
        listen_port=listen_port,
        admin_port=admin_port,
        authz_port=authz_port,
        upstream_port=upstream_port,
        authz_timeout=timeout,
        authz_mode=args.authz_mode,
        authz_streams=_STREAMS_PER_CONNECTION if spread and args.authz_mode == "grpc" else None,
        authz_connection_seconds=_CONNECTION_SECONDS if spread else None,
        request_body_bytes=body,
        tracing_port=tracing_port,
        access_log=args.access_log,
        authz_host=authz_host,
        upstream_host=upstream_host,
        tracing_host=tracing_host,
        listen_host=listen_host,
        admin_host=admin_host,
    )
    config = envoy_bootstrap.bootstrap(options)
    if args.format == "json":
        json.dump(config, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(yaml.safe_dump(config, sort_keys=False))
    return 0
