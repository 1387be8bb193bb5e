"""The hardening stack: one Tollgate, one echo upstream and four real Envoys in front of them —
``normalize`` (normalize_path and merge_slashes on) and ``raw`` (both off), each asking Tollgate
over gRPC and, as ``normalize-http`` and ``raw-http``, over HTTP ext_authz — shared by the
``test_hardening_*`` modules, which attack it as a client would and assert on what the upstream
received. Every test that takes ``mode`` runs through all four.

Two development identity providers issue tokens: ``corp`` (Authorization header or ``session``
cookie) and ``partner``. The policies below give each attack class a host of its own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import pathlib
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc

from authz import envoy_bootstrap
from authz.dev import checks, harness, idp, upstream

HARDENING_CONFIG = """
apiVersion: tollgate.dev/v1alpha1
kind: IdentityProvider
metadata: {{name: corp}}
spec:
  type: jwt
  jwt:
    issuer: "{corp}"
    audiences: [tollgate-demo]
    tokenSources: [{{header: authorization, prefix: "Bearer "}}, {{cookie: session}}]
---
apiVersion: tollgate.dev/v1alpha1
kind: IdentityProvider
metadata: {{name: partner}}
spec: {{type: jwt, jwt: {{issuer: "{partner}", audiences: [tollgate-demo]}}}}
---
# Host class: a locked vault beside an open wildcard.
apiVersion: tollgate.dev/v1alpha1
kind: AccessPolicy
metadata: {{name: vault, namespace: sec}}
spec:
  hosts: [vault.example.com]
  defaultAction: Deny
  rules: [{{name: vault-admins, action: Allow, from: {{groups: [vault-admins]}}}}]
---
apiVersion: tollgate.dev/v1alpha1
kind: AccessPolicy
metadata: {{name: wild, namespace: sec}}
spec:
  hosts: ["*.wild.example.com"]
  defaultAction: Allow
---
# Repeated headers, both directions.
apiVersion: tollgate.dev/v1alpha1
kind: AccessPolicy
metadata: {{name: debug-off, namespace: sec}}
spec:
  hosts: [headers.test]
  defaultAction: Allow
  rules: [{{name: no-debug, action: Deny, when: [{{header: x-debug, values: ["1"]}}]}}]
---
apiVersion: tollgate.dev/v1alpha1
kind: AccessPolicy
metadata: {{name: tenant-only, namespace: sec}}
spec:
  hosts: [tenant.test]
  defaultAction: Deny
  rules: [{{name: acme, action: Allow, when: [{{header: x-tenant, values: [acme]}}]}}]
---
# Identity headers: anyone signed in reaches the upstream, which reads x-tollgate-*.
apiVersion: tollgate.dev/v1alpha1
kind: AccessPolicy
metadata: {{name: app, namespace: sec}}
spec:
  hosts: [app.test]
  defaultAction: Deny
  rules:
    - {{name: public, action: Allow, to: {{paths: [/public]}}}}
    - {{name: signed-in, action: Allow, from: {{authenticated: true}}}}
---
# Method overrides: reads for everyone, deletes for nobody.
apiVersion: tollgate.dev/v1alpha1
kind: AccessPolicy
metadata: {{name: read-only, namespace: sec}}
spec:
  hosts: [methods.test]
  defaultAction: Deny
  rules: [{{name: read-and-post, action: Allow, to: {{methods: [GET, POST]}}}}]
---
# Paths: a deny-list and an allow-list.
apiVersion: tollgate.dev/v1alpha1
kind: AccessPolicy
metadata: {{name: deny-list, namespace: sec}}
spec:
  hosts: [deny.test]
  defaultAction: Allow
  rules: [{{name: no-admin, action: Deny, to: {{paths: [/admin, /admin/*]}}}}]
---
apiVersion: tollgate.dev/v1alpha1
kind: AccessPolicy
metadata: {{name: allow-list, namespace: sec}}
spec:
  hosts: [allow.test]
  defaultAction: Deny
  rules: [{{name: public, action: Allow, to: {{paths: [/public, /public/*]}}}}]
---
# Source addresses: a deny-list, a deny of everything outside a block, and an allow-list.
apiVersion: tollgate.dev/v1alpha1
kind: AccessPolicy
metadata: {{name: no-loopback, namespace: sec}}
spec:
  hosts: [ipdeny.test]
  defaultAction: Allow
  rules: [{{name: loopback, action: Deny, from: {{ipBlocks: [127.0.0.0/8]}}}}]
---
apiVersion: tollgate.dev/v1alpha1
kind: AccessPolicy
metadata: {{name: only-doc-net, namespace: sec}}
spec:
  hosts: [ipnot.test]
  defaultAction: Allow
  rules: [{{name: outsiders, action: Deny, from: {{notIpBlocks: [192.0.2.0/24]}}}}]
---
apiVersion: tollgate.dev/v1alpha1
kind: AccessPolicy
metadata: {{name: doc-net, namespace: sec}}
spec:
  hosts: [ipallow.test]
  defaultAction: Deny
  rules: [{{name: doc-net, action: Allow, from: {{ipBlocks: [192.0.2.0/24]}}}}]
---
# Provider scope: corp only on corp.scope.test, whatever the broader *.scope.test policy says.
apiVersion: tollgate.dev/v1alpha1
kind: AccessPolicy
metadata: {{name: corp-only, namespace: sec}}
spec:
  hosts: [corp.scope.test]
  identity: {{providers: [corp]}}
  rules: [{{name: signed-in, action: Allow, from: {{authenticated: true}}}}]
---
apiVersion: tollgate.dev/v1alpha1
kind: AccessPolicy
metadata: {{name: everything-scope, namespace: sec}}
spec:
  hosts: ["*.scope.test"]
  identity: {{providers: [corp, partner]}}
  defaultAction: Deny
---
apiVersion: tollgate.dev/v1alpha1
kind: AccessPolicy
metadata: {{name: partner-portal, namespace: sec}}
spec:
  hosts: [portal.scope.test]
  rules: [{{name: signed-in, action: Allow, from: {{authenticated: true}}}}]
"""


@dataclasses.dataclass
class Answer:
    """What the client got, and what the upstream received (None: the request never reached it)."""

    status: int
    headers: dict[str, str]
    body: bytes
    upstream: dict[str, Any] | None

    @property
    def reason(self) -> str:
        """The deny reason from Tollgate's JSON body ("" for an allowed or non-Tollgate answer)."""
        if self.upstream is not None:
            return ""
        try:
            return str(json.loads(self.body).get("reason", ""))
        except ValueError:
            return ""

    def received(self, name: str) -> list[str]:
        """Every copy of header ``name`` the upstream received."""
        assert self.upstream is not None
        return list(self.upstream["headers"].get(name.lower(), []))


@dataclasses.dataclass
class HardeningStack:
    """The running stack; :meth:`send` goes through one of the two Envoys."""

    http: Callable[..., Any]  # tests/conftest.py's send(): the request exactly as given
    corp: idp.DevIdentityProvider
    partner: idp.DevIdentityProvider
    tollgate: harness.TollgateProcess
    proxies: dict[str, harness.Envoy]
    log: pathlib.Path
    logs: tuple[pathlib.Path, ...] = ()  # every server's log (log: the default engine's)

    def send(
        self,
        mode: str,
        method: str,
        target: str,
        host: str | None,
        headers: Sequence[tuple[str, str]] = (),
        **options: Any,
    ) -> Answer:
        """Send these exact header lines (after ``Host: host``, if given) through one Envoy. A 200
        whose body is the echo upstream's JSON is a request that reached the upstream."""
        lines = ([("Host", host)] if host is not None else []) + list(headers)
        reply = self.http(self.proxies[mode].port, method, target, host=None, headers=lines, **options)
        upstream_saw = None
        if reply.status == 200 and reply.headers.get("content-type") == "application/json":
            echoed = json.loads(reply.body)
            if isinstance(echoed, dict) and {"method", "path", "headers"} <= echoed.keys():
                upstream_saw = echoed
        return Answer(reply.status, reply.headers, reply.body, upstream_saw)

    def decided_status(self, mode: str, status: int) -> int:
        """The status a client receives through ``mode`` for a deny Tollgate decided as ``status``:
        over HTTP ext_authz, Tollgate sends its 500 and 503 denials as 403 (authz.http_response)."""
        return 403 if mode.endswith("-http") and status >= 500 else status

    def check(self, message: external_auth_pb2.CheckRequest) -> external_auth_pb2.CheckResponse:
        """One Check straight to Tollgate's gRPC port, on a real channel, as a non-Envoy client."""
        with grpc.insecure_channel(f"127.0.0.1:{self.tollgate.port}") as channel:
            reply: external_auth_pb2.CheckResponse = external_auth_pb2_grpc.AuthorizationStub(channel).Check(
                message, timeout=5
            )
        return reply

    def direct(self, transport: str, *, host: str, path: str, method: str = "GET") -> tuple[int, str]:
        """(status, reason) of one check sent straight to Tollgate's port for ``transport``, as a
        client that is not Envoy: nothing normalizes or refuses anything first."""
        if transport == envoy_bootstrap.GRPC_MODE:
            reply = self.check(checks.check_request(method=method, host=host, path=path))
            if reply.status.code == 0:
                return 200, ""
            return reply.denied_response.status.code, str(json.loads(reply.denied_response.body)["reason"])
        assert self.tollgate.http_port is not None
        data = checks.http_check_request(method=method, host=host, path=path)
        answers = asyncio.run(checks.exchange(self.tollgate.http_port, data))  # a CR LF may make it two
        return answers[0].status, answers[0].headers.get("x-tollgate-reason", "")

    def bearer(self, subject: str = "alice", **claims: Any) -> tuple[str, str]:
        return ("Authorization", "Bearer " + self.corp.token(subject, **claims))

    def log_text(self) -> str:
        return "".join(path.read_text(errors="replace") for path in (self.log, *self.logs) if path.exists())


# Envoy with normalize_path/merge_slashes on and off, asking over gRPC (--grpc-engine aio, the server
# that also has the HTTP edge, and --grpc-engine threads: a second server) and over HTTP (the HTTP
# edge on uvloop, as auto runs it, and on the threads engine's locked asyncio loop).
MODES = [
    "normalize",
    "raw",
    "normalize-threads",
    "raw-threads",
    "normalize-http",
    "raw-http",
    "normalize-threads-http",
    "raw-threads-http",
]


@pytest.fixture(scope="session")
def hardening(tmp_path_factory: pytest.TempPathFactory, http: Callable[..., Any]) -> Iterator[HardeningStack]:
    directory = tmp_path_factory.mktemp("hardening")
    corp = idp.DevIdentityProvider(directory / "corp").start()
    partner = idp.DevIdentityProvider(directory / "partner").start()
    config = directory / "config.yaml"
    config.write_text(HARDENING_CONFIG.format(corp=corp.issuer, partner=partner.issuer))
    echo = upstream.EchoUpstream().start()
    log = directory / "tollgate.log"
    tollgate = harness.TollgateProcess(config, extra=["--grpc-engine", "aio"], log_to=log, http=True)
    threads_log = directory / "tollgate-threads.log"
    threaded = harness.TollgateProcess(config, extra=["--grpc-engine", "threads"], log_to=threads_log, http=True)
    proxies = {}
    for server, transport, suffix in (
        (tollgate, envoy_bootstrap.GRPC_MODE, ""),
        (threaded, envoy_bootstrap.GRPC_MODE, "-threads"),
        (tollgate, envoy_bootstrap.HTTP_MODE, "-http"),
        (threaded, envoy_bootstrap.HTTP_MODE, "-threads-http"),
    ):
        for paths, normalize in (("normalize", True), ("raw", False)):
            proxies[paths + suffix] = harness.Envoy(
                authz_port=server.authz_port(transport),
                upstream_port=echo.port,
                normalize_path=normalize,
                merge_slashes=normalize,
                authz_mode=transport,
                log_to=directory / f"envoy-{paths}{suffix}.log",
            )
    with harness.running(corp, partner, echo, tollgate, threaded, *proxies.values()):
        stack = HardeningStack(http, corp, partner, tollgate, proxies, log, (threads_log,))
        _wait_for_keys(stack)
        yield stack


def _wait_for_keys(stack: HardeningStack) -> None:
    """Both providers' keys are fetched in the background at start: wait until tokens verify."""
    deadline = time.monotonic() + 15
    for server in ("normalize", "normalize-threads"):  # each server fetches them itself
        while time.monotonic() < deadline:
            corp = stack.send(server, "GET", "/x", "app.test", [stack.bearer()])
            partner = stack.send(
                server, "GET", "/x", "app.test", [("Authorization", "Bearer " + stack.partner.token("p"))]
            )
            if corp.status == 200 and partner.status == 200:
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"the identity providers' keys never arrived ({server})")


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    """Each test runs through every Envoy: normalize_path/merge_slashes on and off, over gRPC (on
    each engine) and HTTP (on each)."""
    return str(request.param)
