"""Method override headers: many frameworks act on ``X-HTTP-Method-Override`` (and
``X-HTTP-Method``, ``X-Method-Override``) instead of the request's method, so Tollgate judges every
method named as well as the request's own, and the first denied one decides. The headers still
reach the upstream (the request is judged as the upstream may act on it).

``methods.test`` allows GET and POST only.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.envoy

# (method, header lines, reaches the upstream, reason when not)
CASES = [
    ("POST", [], True, ""),
    ("DELETE", [], False, "default_deny"),
    ("POST", [("X-HTTP-Method-Override", "DELETE")], False, "default_deny"),
    ("POST", [("X-HTTP-Method", "DELETE")], False, "default_deny"),
    ("POST", [("X-Method-Override", "PUT")], False, "default_deny"),
    ("GET", [("x-http-method-override", "DELETE")], False, "default_deny"),
    ("POST", [("X-HTTP-Method-Override", "GET"), ("X-HTTP-Method-Override", "DELETE")], False, "default_deny"),
    ("POST", [("X-HTTP-Method-Override", "GET, DELETE")], False, "default_deny"),
    ("POST", [("X-HTTP-Method-Override", "GET")], True, ""),
    ("POST", [("X-HTTP-Method-Override", "POST")], True, ""),
    ("POST", [("X-HTTP-Method-Override", "delete")], False, "request_method_override_invalid"),
    ("POST", [("X-HTTP-Method-Override", "")], False, "request_method_override_invalid"),
    ("POST", [("X-HTTP-Method-Override", "GET DELETE")], False, "request_method_override_invalid"),
]


@pytest.mark.parametrize(("method", "lines", "reaches", "reason"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_every_method_the_upstream_may_act_on_is_judged(
    hardening, mode: str, method: str, lines: list[tuple[str, str]], reaches: bool, reason: str
) -> None:
    answer = hardening.send(mode, method, "/items/1", "methods.test", lines)
    if reaches:
        assert answer.upstream is not None, (answer.status, answer.body)
        assert answer.upstream["method"] == method
        named = [m.strip() for _, value in lines for m in value.split(",")]
        assert set(named) <= {"GET", "POST"}
    else:
        assert answer.upstream is None
        assert answer.reason == reason
        assert answer.status == (400 if reason.startswith("request_") else 401)
