"""Class 5, the subject: an authenticated caller always has a non-empty string subject.

A token whose subject is empty or not a string is ``token_invalid_claims`` (401) and never
reaches the upstream, even where ``from: {authenticated: true}`` would let any caller in.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.envoy

SUBJECTS = [
    ("", "token_invalid_claims"),
    (123, "token_invalid_claims"),
    (["alice"], "token_invalid_claims"),
    ({"id": "alice"}, "token_invalid_claims"),
    (True, "token_invalid_claims"),
    (None, "token_invalid_claims"),
]


@pytest.mark.parametrize(("subject", "reason"), SUBJECTS, ids=[repr(s) for s, _ in SUBJECTS])
def test_no_subject_no_access(hardening, mode: str, subject: object, reason: str) -> None:
    answer = hardening.send(mode, "GET", "/x", "app.test", [hardening.bearer("placeholder", extra={"sub": subject})])
    assert answer.upstream is None
    assert (answer.status, answer.reason) == (401, reason)


def test_a_plain_subject_still_gets_in(hardening, mode: str) -> None:
    answer = hardening.send(mode, "GET", "/x", "app.test", [hardening.bearer("alice")])
    assert answer.upstream is not None and answer.received("x-tollgate-subject") == ["alice"]
