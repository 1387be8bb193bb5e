"""Path-confusion attacks through a real Envoy, with normalize_path and merge_slashes on and off,
Envoy asking Tollgate over gRPC and over HTTP.

Two hosts guard one protected area in the two ways users write policies:

- ``deny.test``  (deny-list): default Allow, Deny ``/admin`` and ``/admin/*``;
- ``allow.test`` (allow-list): default Deny, Allow ``/public`` and ``/public/*``.

The invariant checked for every attack, host and Envoy setting is about what the *upstream*
received, read the ways real servers read paths (not only Tollgate's way): Tomcat and Spring
(parameters dropped), Go, nginx, Express and Python (parameters kept, escapes decoded once), and a
server that decodes twice. A request that got through must name a path the policy allows in every
one of those readings. Zero bypasses means no allowed request ever reaches ``/admin``
(deny-list) or anything outside ``/public`` (allow-list), whichever server is behind Envoy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from authz.dev import harness, upstream
from authz.dev.checks import upstream_path_readings

pytestmark = pytest.mark.envoy

POLICIES = """
apiVersion: tollgate.dev/v1alpha1
kind: AccessPolicy
metadata: {name: deny-list}
spec:
  hosts: [deny.test]
  defaultAction: Allow
  rules: [{name: no-admin, action: Deny, to: {paths: [/admin, /admin/*]}}]
---
apiVersion: tollgate.dev/v1alpha1
kind: AccessPolicy
metadata: {name: allow-list}
spec:
  hosts: [allow.test]
  defaultAction: Deny
  rules: [{name: public, action: Allow, to: {paths: [/public, /public/*]}}]
"""

ATTACKS = [
    "/admin",
    "/admin/",
    "/admin/users",
    "/admin/../public",
    "/public/../admin",
    "//admin",
    "///admin//users",
    "/%2e%2e/admin",
    "/public/%2e%2e/admin",
    "/public/.%2e/admin",
    "/ADMIN",
    "/Admin/users",
    "/admin;x",
    "/admin;jsessionid=1/users",
    "/public/..;/admin",
    "/admin%2Fx",
    "/public%2F..%2Fadmin",
    "/public/..%5Cadmin",
    "/admin%00",
    "/admin?x=/public",
    "/public?x=/admin",
    "/%61dmin",
    "/./admin",
    "/public/./../admin",
    "/public//../admin",
    "/%252e%252e/admin",
    "/public/%252e%252e/admin",
    "/admin%",
    "/admin%zz",
    "/public/..",
    "/public",
    "/public/x",
    "/admin/..;/public",
    "/public/..;/admin",
    "/public/%2e%2e;/admin",
    "/public;/../admin",
    "/public;x",
    "/public;x/../../admin",
    "/admin;x/../public",
    "/%2561dmin",
    "/public/%252e%252e/admin",
    "/public/%25%32%65%25%32%65/admin",
    "/public/%c0%ae%c0%ae/admin",
    "/public/%2e%2e%2fadmin",
    "/public/.%2E/admin",
    "/public/%2E./admin",
]


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root + "/")


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[harness.TollgateProcess, int]]:
    directory = tmp_path_factory.mktemp("bypass")
    (directory / "policies.yaml").write_text(POLICIES)
    echo = upstream.EchoUpstream().start()
    tollgate = harness.TollgateProcess(
        directory / "policies.yaml", log_to=directory / "tollgate.log", http=True
    ).start()
    yield tollgate, echo.port
    tollgate.stop()
    echo.stop()


@pytest.mark.parametrize("merge_slashes", [True, False], ids=["merge", "no-merge"])
@pytest.mark.parametrize("normalize_path", [True, False], ids=["normalize", "no-normalize"])
def test_no_path_bypass(
    backend: tuple[harness.TollgateProcess, int],
    envoy: Callable[..., harness.Envoy],
    http: Callable[..., Any],
    transport: str,
    normalize_path: bool,
    merge_slashes: bool,
) -> None:
    tollgate, upstream_port = backend
    proxy = envoy(
        authz_port=tollgate.authz_port(transport),
        upstream_port=upstream_port,
        normalize_path=normalize_path,
        merge_slashes=merge_slashes,
        authz_mode=transport,
    )
    outcomes = {}
    for host in ("deny.test", "allow.test"):
        for attack in ATTACKS:
            reply = http(proxy.port, "GET", attack, host=host)
            if reply.status != 200:
                assert reply.status in (400, 401, 403, 404), (host, attack, reply.status)
                outcomes[(host, attack)] = reply.status
                continue
            received = reply.json()["path"]
            for reading in upstream_path_readings(received):
                if host == "deny.test":
                    assert not _under(reading, "/admin"), f"BYPASS {host} {attack} -> upstream {received} ({reading})"
                else:
                    assert _under(reading, "/public"), f"BYPASS {host} {attack} -> upstream {received} ({reading})"
            outcomes[(host, attack)] = 200
    # The attacks are real: the plain forms are decided as the policy says, so the test can fail.
    assert outcomes[("deny.test", "/admin")] == 401
    assert outcomes[("deny.test", "/public/../admin")] in (400, 401)
    assert outcomes[("deny.test", "/admin?x=/public")] == 401
    assert outcomes[("deny.test", "/admin%2Fx")] == 400
    assert outcomes[("allow.test", "/public/x")] == 200
    assert outcomes[("allow.test", "/public?x=/admin")] == 200
    assert outcomes[("allow.test", "/ADMIN")] == 401
    # Paths are case-sensitive (docs/policy.md): a deny-list on /admin does not cover /ADMIN.
    assert outcomes[("deny.test", "/ADMIN")] == 200
    # Readings that disagree are refused, never judged on one of them.
    assert outcomes[("deny.test", "/admin;x")] == 400
    assert outcomes[("allow.test", "/public;x")] == 400
    if not normalize_path:  # with normalize_path on, Envoy resolves these before Tollgate sees them
        assert outcomes[("allow.test", "/public/..;/admin")] == 400
        assert outcomes[("allow.test", "/public/%252e%252e/admin")] == 400
        assert outcomes[("deny.test", "/public/%25%32%65%25%32%65/admin")] == 400
