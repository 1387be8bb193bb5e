"""The invariant behind every hardening fix, checked on generated requests through both Envoys:

    allowed ⇒ the upstream receives a request that the same policy, evaluated on what the
    upstream received, also allows — under every reading a server behind Envoy may make of it.

Hypothesis generates hosts, paths, headers (repeated, reserved, overrides) and credentials from
the shapes the attack classes use. For each request that reached the echo upstream, the request
the upstream received is rebuilt as a CheckRequest and decided again in-process with the same
configuration and the same identity providers; its path is also read the ways Tomcat, Go/nginx
and a decode-twice server read it. Derandomized, so a run is repeatable.
"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from authz import decision, loader
from authz.dev import checks
from authz.identity import resolve

pytestmark = pytest.mark.envoy

HOSTS = [
    "vault.example.com",
    "a.wild.example.com",
    "headers.test",
    "tenant.test",
    "app.test",
    "methods.test",
    "deny.test",
    "allow.test",
    "corp.scope.test",
    "portal.scope.test",
    "ipdeny.test",
    "nowhere.test",
]
SEGMENTS = [
    "admin",
    "public",
    "x",
    ".",
    "..",
    "",
    "..;x",
    ";x",
    "admin;y",
    "public;",
    "%2e",
    "%2e%2e",
    "%252e",
    "%2F",
    "%61dmin",
    "%25%32%65",
    "a%20b",
    "%c0%ae",
    "ADMIN",
    "internal",
]
HEADER_NAMES = [
    "x-debug",
    "X-Debug",
    "x-tenant",
    "x-tenant",
    "x-http-method-override",
    "x_tollgate_subject",
    "X-Tollgate-Groups",
]
HEADER_VALUES = ["1", "0", "acme", "evil", "acme,evil", "DELETE", "GET", "admins", ""]


@st.composite
def hosts(draw: st.DrawFn) -> str:
    host = draw(st.sampled_from(HOSTS))
    if draw(st.booleans()):
        host = host.upper()
    # Mostly valid spellings, so that many requests get through and their reading is checked.
    if draw(st.integers(0, 4)) == 0:
        return host + draw(st.sampled_from([",a.wild.example.com", "@a.wild.example.com", ":x"]))
    return host + draw(st.sampled_from(["", ".", ":8080"]))


# Half the segments come from plain names: hostile ones are mixed in, not the whole path.
segments = st.one_of(st.sampled_from(["public", "x", "admin", "orders", ""]), st.sampled_from(SEGMENTS))
paths = st.lists(segments, min_size=1, max_size=5).map(lambda parts: "/" + "/".join(parts))
header_lines = st.lists(st.tuples(st.sampled_from(HEADER_NAMES), st.sampled_from(HEADER_VALUES)), max_size=4)


@pytest.fixture(scope="module")
def judge(hardening, tmp_path_factory: pytest.TempPathFactory):
    """Decides a rebuilt CheckRequest with the running server's configuration and key sets."""
    snapshot = loader.load(hardening.tollgate.config)
    resolver = resolve.IdentityResolver()
    resolver.update(snapshot.providers)
    loop = asyncio.new_event_loop()
    for verifier in resolver.jwt_verifiers.values():
        loop.run_until_complete(verifier.keys.fetch_once())

    def decide(method: str, host: str, path: str, headers: dict[str, str]) -> decision.Decision:
        message = checks.check_request(method=method, host=host, path=path, headers=headers)
        return loop.run_until_complete(decision.decide_check(message, snapshot, resolver))

    yield decide
    loop.run_until_complete(resolver.close())
    loop.close()


@settings(
    max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    method=st.sampled_from(["GET", "POST", "DELETE"]),
    host=hosts(),
    path=paths,
    lines=header_lines,
    signed_in=st.sampled_from([None, "staff", "vault-admins"]),
)
# The original bypasses, always among the examples.
@example(method="GET", host="headers.test", path="/x", lines=[("x-debug", "0"), ("x-debug", "1")], signed_in=None)
@example(method="GET", host="tenant.test", path="/", lines=[("x-tenant", "acme"), ("x-tenant", "evil")], signed_in=None)
@example(method="GET", host="deny.test", path="/admin;x", lines=[], signed_in=None)
@example(method="GET", host="allow.test", path="/public/..;/admin", lines=[], signed_in=None)
@example(method="POST", host="methods.test", path="/", lines=[("x-http-method-override", "DELETE")], signed_in=None)
def test_allowed_requests_stay_allowed_as_the_upstream_reads_them(
    hardening, judge, mode: str, method: str, host: str, path: str, lines: list[tuple[str, str]], signed_in: str | None
) -> None:
    if signed_in:
        lines = [*lines, hardening.bearer("alice", groups=[signed_in])]
    answer = hardening.send(mode, method, path, host, lines)
    event("reached the upstream" if answer.upstream is not None else f"refused: {answer.status} {answer.reason}")
    if answer.upstream is None:
        return
    received = answer.upstream
    headers = {name: ",".join(values) for name, values in received["headers"].items()}
    # Nothing in the reserved namespace but Tollgate's own values.
    for name, values in received["headers"].items():
        if name.replace("_", "-").startswith("x-tollgate-"):
            assert "_" not in name and "admins" not in values and "" not in values, (name, values)
    for reading_path, reading_headers in _readings(received["path"], received["headers"]):
        again = judge(received["method"], reading_headers["host"], reading_path, reading_headers)
        assert again.allowed, (
            f"{method} {host}{path} {lines} was allowed, but the upstream received "
            f"{received['method']} {headers['host']}{received['path']} {received['headers']}, which read as "
            f"{reading_path!r} {reading_headers} is {again.status} {again.reason}"
        )


def _readings(path: str, received: dict[str, list[str]]) -> list[tuple[str, dict[str, str]]]:
    """The request as servers may read it: each path reading, and each copy of a repeated header
    on its own (a server may read only the first, or only the last, or split a list)."""
    joined = {name: ",".join(values) for name, values in received.items()}
    out = []
    for reading in sorted(checks.upstream_path_readings(path)):
        if reading != path and ("%" in reading or " " in reading):
            continue  # decoded characters a request line cannot carry: judged as received instead
        out.append((reading, joined))
    for name, values in received.items():
        copies = [item.strip() for value in values for item in value.split(",")]
        if len(copies) > 1 and name != "authorization":
            out.extend((path, {**joined, name: copy}) for copy in copies)
    return out
