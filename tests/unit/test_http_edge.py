"""The HTTP ext_authz edge's two pure stages: the adapter (authz.http_request) reads a check request
as the gRPC adapter reads a CheckRequest, and the encoder (authz.http_response) never writes a
header value it was not sure of."""

from __future__ import annotations

import dataclasses

import httptools
import pytest

from authz import canonical, decision, http_request, http_response
from authz.identity import model
from authz.policy import verdict


def _parsed(data: bytes) -> http_request.HttpCheck:
    """Parse as the server does: llhttp's callbacks into one HttpCheck."""
    check = http_request.HttpCheck()

    class Callbacks:
        def on_url(self, url: bytes) -> None:
            check.add_target(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            check.add_header(name, value)

    parser = httptools.HttpRequestParser(Callbacks())
    parser.feed_data(data)
    check.method = parser.get_method()
    return check


def _request(*lines: str, target: str = "/a/b?q=1", method: str = "GET") -> bytes:
    head = [f"{method} {target} HTTP/1.1", "host: App.Test:8443", *lines, "content-length: 0"]
    return ("\r\n".join(head) + "\r\n\r\n").encode()


ENVOY = (
    f"{http_request.SOURCE}: 192.0.2.7",
    f"{http_request.DESTINATION}: 10.0.0.1",
    f"{http_request.PROTOCOL}: HTTP/2",
    f"{http_request.SCHEME}: https",
)


def test_the_adapter_reads_what_the_grpc_adapter_reads() -> None:
    data = _request(
        *ENVOY,
        "x-request-id: r-1",
        "Cookie: a=1",
        "cookie: b=2",
        "x-envoy-internal: true",
        "x-envoy-expected-rq-timeout-ms: 2000",
    )
    request = http_request.from_http_check(_parsed(data))
    assert (request.method, request.host, request.path, request.query) == ("GET", "app.test", "/a/b", "q=1")
    assert (request.source_ip, request.destination, request.protocol) == ("192.0.2.7", "10.0.0.1", "HTTP/2")
    assert request.request_id == "r-1"
    assert request.headers["cookie"] == "a=1,b=2"  # as Envoy joins repeated names
    assert request.headers[":authority"] == "App.Test:8443" and request.headers[":path"] == "/a/b?q=1"
    assert request.headers[":scheme"] == request.scheme == "https"  # Envoy's, as in a CheckRequest
    # An Envoy configured before Tollgate asked for the scheme: none, as before.
    older = http_request.from_http_check(_parsed(_request(*ENVOY[:3])))
    assert ":scheme" not in older.headers and older.scheme == ""
    # Envoy's own client headers and its attribute lines are not the client's request.
    assert not {"content-length", "x-envoy-internal", "x-envoy-expected-rq-timeout-ms", "host"} & set(request.headers)
    assert not [name for name in request.headers if name.startswith(http_request.ENVOY_PREFIX)]


def test_the_principal_is_the_uri_san_else_the_subject() -> None:
    subject = f"{http_request.PEER_SUBJECT}: CN=web,O=shop"
    only_subject = http_request.from_http_check(_parsed(_request(*ENVOY, subject)))
    assert only_subject.source_principal == "CN=web,O=shop"
    both = http_request.from_http_check(
        _parsed(_request(*ENVOY, subject, f"{http_request.PEER_URI_SAN}: spiffe://a/b"))
    )
    assert both.source_principal == "spiffe://a/b"


def test_paths_are_judged_as_over_grpc() -> None:
    with pytest.raises(canonical.RequestRejected) as caught:
        http_request.from_http_check(_parsed(_request(*ENVOY, target="/public/%2e%2e/admin")))
    assert caught.value.code == "path_encoded_dot"
    assert caught.value.request is not None and caught.value.request.raw_path == "/public/%2e%2e/admin"


def test_a_bounded_check_keeps_nothing_past_its_bounds() -> None:
    check = http_request.HttpCheck()
    for index in range(1000):
        check.add_header(b"x-h%d" % index, b"v" * 100)
    assert check.too_large and len(check.lines) <= http_request.MAX_HEADER_COUNT
    assert sum(len(n) + len(v) for n, v in check.lines) <= http_request.MAX_HEADER_BYTES


def _decision(**fields: object) -> decision.Decision:
    values: dict[str, object] = {"decision_id": "01a22c45-8ba5-7b33-8f46-184c18ff3099", "revision": "r"}
    return decision.Decision(**(values | fields))  # type: ignore[arg-type]


def _parse_answer(data: bytes) -> tuple[int, dict[str, str], bytes]:
    result: dict[str, object] = {"headers": {}, "body": b""}

    class Callbacks:
        def on_header(self, name: bytes, value: bytes) -> None:
            result["headers"][name.decode()] = value.decode()  # type: ignore[index]

        def on_body(self, body: bytes) -> None:
            result["body"] += body  # type: ignore[operator]

    parser = httptools.HttpResponseParser(Callbacks())
    parser.feed_data(data)
    return parser.get_status_code(), result["headers"], result["body"]  # type: ignore[return-value]


def test_configuration_names_cannot_break_a_header() -> None:
    dry = verdict.DryRunVerdict(allowed=False, policy="ns/p\r\nx-tollgate-subject: admin", rule="r", reason="rule_deny")
    allowed = _decision(
        allowed=True,
        status=200,
        reason="rule_allow",
        policy="ns/p",
        rule="r\r\nx: 1",
        dry_run=dry,
        identity=model.Identity(subject="alice", method="jwt", authenticated=True),
    )
    status, headers, _ = _parse_answer(http_response.encode(allowed))
    assert status == 200
    assert headers["x-tollgate-rule"] == "r%0D%0Ax%3A%201"
    assert headers["x-tollgate-dry-run-decision"] == "deny" and "\r" not in headers["x-tollgate-dry-run-rule"]
    assert headers["x-tollgate-subject"] == "alice" and "x" not in headers


def test_error_denials_travel_as_403_with_their_reason() -> None:
    for status, reason in ((500, "authz_error"), (503, "audit_unavailable"), (503, "identity_unavailable")):
        sent, headers, body = _parse_answer(http_response.encode(_decision(status=status, reason=reason)))
        assert sent == 403 and reason in body.decode() and headers["x-tollgate-reason"] == reason


def test_an_answer_that_cannot_be_built_falls_back_to_a_fixed_deny() -> None:
    broken = _decision(allowed=True, status=200, reason="rule_allow")
    broken.identity = dataclasses.replace(model.ANONYMOUS, authenticated=True, subject="bad\nvalue")
    with pytest.raises(ValueError):
        http_response.encode(broken)
    status, _, body = _parse_answer(http_response.encode_failed(broken))
    assert status == 403 and b"authz_error" in body


def test_allow_answers_from_one_template_differ_only_in_id_and_removals() -> None:
    identity = model.Identity(subject="alice", method="jwt", groups=("staff",), authenticated=True)
    plain = _decision(allowed=True, status=200, reason="rule_allow", policy="ns/p", rule="r", identity=identity)
    check = _parsed(_request(*ENVOY, "x_tollgate_subject: mallory", "X-Tollgate-Roles: admin"))
    other = dataclasses.replace(
        plain, decision_id="01a22c45-8ba5-7b33-8f46-184c18ff3000", request=http_request.from_http_check(check)
    )
    _, first, _ = _parse_answer(http_response.encode(plain))
    _, second, _ = _parse_answer(http_response.encode(other))
    assert first["x-tollgate-decision-id"] != second["x-tollgate-decision-id"] == other.decision_id
    assert first["x-tollgate-groups"] == second["x-tollgate-groups"] == '"staff"'
    removed = second[http_response.REMOVE].split(",")
    assert removed[: len(first[http_response.REMOVE].split(","))] == first[http_response.REMOVE].split(",")
    # The client's spellings of reserved names go too; x-tollgate-roles is removed (alice has none).
    assert "x_tollgate_subject" in removed and "x-tollgate-roles" in removed
    assert "x_tollgate_subject" not in first[http_response.REMOVE]
