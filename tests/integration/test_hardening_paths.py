"""Paths sent straight to Tollgate's ports (gRPC and HTTP), where no Envoy normalizes anything
first: control characters, strict and lenient mode. (Through Envoy, see test_envoy_path_bypass.py.)"""

from __future__ import annotations

import pytest

from authz import decision, loader
from authz.dev import checks
from authz.identity import resolve

pytestmark = pytest.mark.envoy

CONTROL = ["/admin\n", "/ad\tmin", "/ad\rmin", "/ad min", "/ad\x7fmin", "/ad\x0bmin", "/public\n/../admin"]


@pytest.mark.parametrize("path", CONTROL, ids=[repr(p) for p in CONTROL])
def test_control_characters_are_refused(hardening, transport: str, path: str) -> None:
    status, reason = hardening.direct(transport, host="deny.test", path=path)
    # Over HTTP most of these break the request line itself: llhttp refuses the bytes.
    allowed = {"path_invalid_character"} | ({"request_parse_error"} if transport == "http" else set())
    assert status == 400 and reason in allowed


STRICT = [
    ("/public/%2e%2e/admin", "path_encoded_dot"),
    ("/public/%252e%252e/admin", "path_double_encoding"),
    ("/public/%25%32%65%25%32%65/admin", "path_double_encoding"),
    ("/public/%c0%ae%c0%ae/admin", "path_invalid_utf8"),
    ("/public/..;/admin", "path_ambiguous_dot_segment"),
    ("/public;x", "path_parameters_ambiguous"),
]


@pytest.mark.parametrize(("path", "reason"), STRICT, ids=[p for p, _ in STRICT])
def test_strict_mode_refuses_what_upstreams_decode_differently(
    hardening, transport: str, path: str, reason: str
) -> None:
    assert hardening.direct(transport, host="allow.test", path=path) == (400, reason)


@pytest.mark.parametrize(
    ("path", "strict", "outcome"),
    [
        ("/public/%2e%2e/admin", False, (401, "default_deny")),  # decoded once: /admin
        ("/public/%252e%252e/x", False, (200, "rule_allow")),  # a literal segment named %252e%252e
        ("/public/%252e%252e/x", True, (400, "path_double_encoding")),
        ("/public/..;/admin", False, (400, "path_ambiguous_dot_segment")),  # in both modes
    ],
)
async def test_lenient_mode_decodes_once(hardening, path: str, strict: bool, outcome: tuple[int, str]) -> None:
    # The running server's configuration (allow.test allows /public and /public/*), decided in-process.
    snapshot = loader.load(hardening.tollgate.config)
    result = await decision.decide_check(
        checks.check_request(host="allow.test", path=path), snapshot, resolve.IdentityResolver(), strict_paths=strict
    )
    assert (result.status, result.reason) == outcome
