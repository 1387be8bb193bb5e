"""Class 6, hostile token JSON: a token under 8 KiB that nests arrays thousands deep is refused
as ``token_malformed`` (401), with no traceback and no 500, before any JSON parser recurses.
"""

from __future__ import annotations

import json

import pytest

from authz.dev import idp

pytestmark = pytest.mark.envoy


def _token(header: bytes, payload: bytes) -> str:
    return f"{idp.b64url(header)}.{idp.b64url(payload)}.c2ln"


NESTED = b"[" * 2000 + b"]" * 2000
HOSTILE = [
    ("nested-header", lambda iss: _token(b'{"alg":"RS256","x":' + NESTED + b"}", json.dumps({"iss": iss}).encode())),
    ("nested-payload", lambda iss: _token(b'{"alg":"RS256"}', b'{"iss":"' + iss.encode() + b'","x":' + NESTED + b"}")),
    (
        "nested-objects",
        lambda iss: _token(
            b'{"alg":"RS256"}', b'{"iss":"' + iss.encode() + b'","x":' + b'{"a":' * 1000 + b"1" + b"}" * 1001
        ),
    ),
    (
        "depth-33",
        lambda iss: _token(b'{"alg":"RS256"}', b'{"iss":"' + iss.encode() + b'","x":' + b"[" * 33 + b"]" * 33 + b"}"),
    ),
    ("nan", lambda iss: _token(b'{"alg":"RS256"}', b'{"iss":"' + iss.encode() + b'","exp":NaN}')),
]


@pytest.mark.parametrize(("name", "make"), HOSTILE, ids=[name for name, _ in HOSTILE])
def test_hostile_json_is_malformed_not_a_crash(hardening, mode: str, name: str, make: object) -> None:
    token = make(hardening.corp.issuer)  # type: ignore[operator]
    assert len(token) < 8192
    answer = hardening.send(mode, "GET", "/x", "app.test", [("Authorization", "Bearer " + token)])
    assert answer.upstream is None
    assert (answer.status, answer.reason) == (401, "token_malformed")
    assert "Traceback" not in hardening.log_text() and "RecursionError" not in hardening.log_text()


def test_ordinary_nesting_is_still_a_token(hardening, mode: str) -> None:
    # Depth 32 is allowed: real tokens nest a few levels (realm_access.roles).
    claims = {"realm_access": {"roles": ["staff"]}, "deep": json.loads("[" * 30 + "]" * 30)}
    answer = hardening.send(mode, "GET", "/x", "app.test", [hardening.bearer("alice", extra=claims)])
    assert answer.upstream is not None
