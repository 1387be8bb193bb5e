"""Class 2, repeated headers: Envoy joins copies with commas for the check but forwards every
copy, and the upstream may act on any of them. So a Deny rule's header condition matches when
*any* copy matches, an Allow rule's only when *every* copy does (docs/policy.md).

``headers.test`` denies ``x-debug: 1``; ``tenant.test`` allows only ``x-tenant: acme``.
"""

from __future__ import annotations

import pytest

from authz.dev import checks

pytestmark = pytest.mark.envoy

# (host, header lines, reaches the upstream)
CASES = [
    ("headers.test", [], True),
    ("headers.test", [("x-debug", "0")], True),
    ("headers.test", [("x-debug", "1")], False),
    ("headers.test", [("x-debug", "1"), ("x-debug", "1")], False),  # the original bypass
    ("headers.test", [("x-debug", "0"), ("x-debug", "1")], False),
    ("headers.test", [("x-debug", "1"), ("x-debug", "0")], False),
    ("headers.test", [("x-debug", "0, 1")], False),  # one line that lists two values
    ("headers.test", [("X-Debug", "0"), ("x-DEBUG", " 1 ")], False),
    ("headers.test", [("x-debug", "0"), ("x-debug", "0")], True),
    ("tenant.test", [], False),
    ("tenant.test", [("x-tenant", "acme")], True),
    ("tenant.test", [("x-tenant", "acme"), ("x-tenant", "acme")], True),
    ("tenant.test", [("x-tenant", "acme"), ("x-tenant", "evil")], False),
    ("tenant.test", [("x-tenant", "evil"), ("x-tenant", "acme")], False),
    ("tenant.test", [("x-tenant", "acme,evil")], False),
    ("tenant.test", [("x-tenant", "acme"), ("x-tenant", "")], True),  # an empty copy lists nothing
]


@pytest.mark.parametrize(("host", "lines", "reaches"), CASES, ids=[f"{h}-{lines}" for h, lines, _ in CASES])
def test_every_copy_is_judged(hardening, mode: str, host: str, lines: list[tuple[str, str]], reaches: bool) -> None:
    answer = hardening.send(mode, "GET", "/", host, lines)
    if not reaches:
        assert answer.upstream is None and answer.status == 401, (answer.status, answer.body)
        return
    assert answer.upstream is not None, (answer.status, answer.body)
    # What the upstream received satisfies the policy in every copy it could read.
    for name in ("x-debug", "x-tenant"):
        values = [v.strip() for copy in answer.received(name) for v in copy.split(",")]
        if host == "headers.test":
            assert "1" not in values
        elif name == "x-tenant":
            assert values and all(v in ("acme", "") for v in values)


def test_raw_header_maps_join_repeated_names_like_envoy(hardening) -> None:
    # With encode_raw_headers Envoy sends one entry per header line; they are joined the same way.
    message = checks.check_request(host="headers.test", path="/")
    http = message.attributes.request.http
    for name, value in [(":method", "GET"), (":path", "/"), (":authority", "headers.test"), ("x-debug", "0")]:
        http.header_map.headers.add(key=name, raw_value=value.encode())
    http.header_map.headers.add(key="x-debug", raw_value=b"1")
    http.ClearField("headers")
    http.ClearField("method")
    http.ClearField("path")
    http.ClearField("host")
    reply = hardening.check(message)
    assert reply.denied_response.status.code == 401 and '"rule_deny"' in reply.denied_response.body
