"""Micro-benchmarks of the hot path, without the network: policy decision, whole decide(), tokens.

Each timing is per call, from ``time.perf_counter_ns`` around one call, over many calls; we report
percentiles. The coroutines here never suspend (no I/O), so they are driven with ``send(None)``
instead of an event loop, which would add its own overhead to every sample.
"""

from __future__ import annotations

import asyncio
import pathlib
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import httptools
import uvloop

from authz import decision, detect, http_request, http_server, ids, loader, loops, metrics, server, service
from authz.audit import log as audit_log
from authz.audit import note, pseudonym, record
from authz.dev import checks, idp
from authz.identity import jwt as jwt_identity
from authz.identity import model, providers, resolve
from authz.policy import compile as compiled
from authz.policy import evaluate
from authz.request import HttpRequest
from bench import policies


def _run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    raise RuntimeError("coroutine suspended: not a pure-CPU path")


def _percentiles(samples: list[int]) -> dict[str, float]:
    ordered = sorted(samples)

    def pick(quantile: float) -> float:
        return ordered[min(len(ordered) - 1, int(quantile * len(ordered)))] / 1000

    return {"p50_us": pick(0.50), "p99_us": pick(0.99), "mean_us": statistics.fmean(ordered) / 1000}


def _time(call: Callable[[], Any], iterations: int) -> dict[str, float]:
    for _ in range(min(2000, iterations)):  # warm caches
        call()
    samples = []
    clock = time.perf_counter_ns
    for _ in range(iterations):
        start = clock()
        call()
        samples.append(clock() - start)
    return _percentiles(samples)


class _Static:
    def __init__(self, identity: model.Identity) -> None:
        self.identity = identity

    def resolve_now(self, request: Any, scope: Any) -> model.Identity | None:
        return self.identity

    async def resolve(self, request: Any, scope: Any) -> model.Identity:
        return self.identity


def engine(iterations: int = 200_000) -> dict[str, dict[str, float]]:
    """10,000 rules over 1,000 hosts: lookup + evaluate, decide() from a CheckRequest, a whole Check."""
    with tempfile.TemporaryDirectory() as directory:
        policies.write_policies(pathlib.Path(directory), hosts=1000, rules_per_host=10)
        snapshot = loader.load(pathlib.Path(directory))
    rules = sum(len(p.rules) for p in snapshot.policies)
    assert rules == 10_000, rules
    rng = random.Random(7)
    identity = model.Identity(authenticated=True, method="jwt", subject="alice", groups=("team-3", "staff"))
    requests = [
        HttpRequest(
            method=rng.choice(["GET", "POST"]),
            host=f"svc-{rng.randrange(1000)}.bench.test",
            path=rng.choice(["/api/orders", "/svc3/x", "/svc8/y/z", "/other"]),
            source_ip="10.0.0.1",
        )
        for _ in range(1024)
    ]
    position = [0]

    def decide_policy() -> None:
        request = requests[position[0] & 1023]
        position[0] += 1
        evaluate.evaluate(
            snapshot.index.lookup(request.host), compiled.Context(request, identity), server_default_allow=False
        )

    protos = [checks.check_request(method=r.method, host=r.host, path=r.path) for r in requests]
    stage = _Static(identity)

    def decide_full() -> None:
        proto = protos[position[0] & 1023]
        position[0] += 1
        _run(decision.decide_check(proto, snapshot, stage))

    # What gRPC runs per Check, from the request's bytes to the answer's bytes (anonymous caller,
    # no tracing, no audit): the handler and deserializer exactly as registered with the server.
    # grpc.aio (the default engine) awaits the coroutine; the threads engine calls its handler on
    # a thread of its own while the loop runs on another.
    runtime = server.Runtime(snapshot, default_allow=False)
    handler = service.AuthorizationService(runtime).method_handlers()["Check"]
    parse, answer = handler.request_deserializer, handler.unary_unary
    assert parse is not None and answer is not None
    wire = [p.SerializeToString() for p in protos]

    def check_bytes() -> None:
        data = wire[position[0] & 1023]
        position[0] += 1
        _run(answer(parse(data), None))  # type: ignore[arg-type]  # no context: nothing reads it here

    loop = loops.new_event_loop()
    looping = threading.Thread(target=loop.run_forever, name="loop")
    looping.start()
    try:
        on_thread = service.AuthorizationService(runtime).method_handlers(loop)["Check"].unary_unary
        assert on_thread is not None

        def check_bytes_on_thread() -> None:
            data = wire[position[0] & 1023]
            position[0] += 1
            on_thread(parse(data), None)  # type: ignore[arg-type]  # no context: only a Check that waits reads it

        return {
            "policy_decision_10k_rules": _time(decide_policy, iterations),
            "decide_from_checkrequest_10k_rules": _time(decide_full, iterations // 2),
            "check_bytes_to_bytes_10k_rules": _time(check_bytes, iterations // 2),
            "check_bytes_on_a_grpc_thread_10k_rules": _time(check_bytes_on_thread, iterations // 2),
        }
    finally:
        loop.call_soon_threadsafe(loop.stop)
        looping.join()
        loop.close()


def tokens(iterations: int = 100_000) -> dict[str, dict[str, float]]:
    """RS256 bearer tokens: verification from the cache, and cold (signature checked every time)."""
    with tempfile.TemporaryDirectory() as directory:
        provider = idp.DevIdentityProvider(pathlib.Path(directory)).start()
        try:
            resolver = resolve.IdentityResolver()
            resolver.update([_provider_spec(provider.issuer)])
            verifier = resolver.jwt_verifiers["bench"]
            asyncio.run(verifier.keys.fetch_once())
            token = provider.token("alice", groups=["staff"])
            request = HttpRequest(method="GET", host="a", path="/", headers={"authorization": f"Bearer {token}"})
            _run(resolver.resolve(request, None))  # verified once, now in the resolver's cache

            def cached() -> None:  # what a Check with a known token runs: no coroutine at all
                resolver.resolve_now(request, None)

            def cold() -> None:
                _run(jwt_identity.verify_token(token, [verifier], jwt_identity.TokenCache()))

            return {"token_cached": _time(cached, iterations), "token_cold_rs256": _time(cold, iterations // 20)}
        finally:
            provider.stop()


def _provider_spec(issuer: str) -> Any:
    return providers.parse_provider(
        {
            "metadata": {"name": "bench"},
            "spec": {
                "type": "jwt",
                "jwt": {"issuer": issuer, "audiences": ["tollgate-demo"], "jwksUri": issuer + "/jwks.json"},
            },
        }
    )


def observers() -> dict[str, dict[str, float]]:
    """What a Check adds when metrics and detection are on: one observe() each, per decision kind."""
    tally = metrics.CheckMetrics()
    detection = detect.Detection(detect.Settings())
    token = model.Identity(authenticated=True, method="jwt", subject="alice", token_hash="ab" * 16)
    request = HttpRequest("GET", "app.example.com", "/orders", source_ip="198.51.100.7")

    def made(**fields: Any) -> decision.Decision:
        return decision.Decision(decision_id="d", revision="r", request=request, duration_ns=180_000, **fields)

    anonymous_allow = made(allowed=True, status=200, reason="rule_allow", policy="shop/orders")
    token_allow = made(allowed=True, status=200, reason="rule_allow", policy="shop/orders", identity=token)
    failure = made(status=401, reason="token_invalid")
    return {
        "metrics observe (allow)": _time(lambda: tally.observe(anonymous_allow), 100_000),
        "detection observe (allow, no token)": _time(lambda: detection.observe(anonymous_allow), 100_000),
        "detection observe (allow, token)": _time(lambda: detection.observe(token_allow), 100_000),
        "detection observe (401)": _time(lambda: detection.observe(failure), 100_000),
    }


class _AnsweringEdge:
    """The server side of an HTTP edge connection, answering every check at once: what is left is
    the edge's own work (parse, callbacks, task, answer in order). Keeps the last check it was given."""

    def __init__(self) -> None:
        self.connections: set[Any] = set()
        self.draining = False
        self.last: http_request.HttpCheck | None = None

    async def check(self, message: http_request.HttpCheck | None) -> bytes:
        self.last = message
        return b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"


class _Sink:
    def get_extra_info(self, name: str) -> None:
        return None

    def write(self, data: bytes) -> None:
        pass


def http_edge(iterations: int = 100_000) -> dict[str, dict[str, float]]:
    """The HTTP edge before the decision, on one check request as Envoy sends it (10 header lines,
    an RS256-sized bearer token): llhttp alone (no Python callbacks, as the do-nothing server runs
    it), the edge's connection with a check that answers at once, and the adapter."""
    token = "eyJ" + "a" * 780
    raw = checks.http_check_request(
        host="svc-17.bench.test",
        path="/api/orders",
        headers=[
            ("authorization", f"Bearer {token}"),
            ("x-forwarded-proto", "http"),
            ("x-envoy-expected-rq-timeout-ms", "15000"),
            ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ],
        envoy=[
            (http_request.SOURCE, "10.0.0.1"),
            (http_request.DESTINATION, "10.0.0.2"),
            (http_request.PROTOCOL, "HTTP/1.1"),
        ],
    )
    bare = httptools.HttpRequestParser(object())

    answering = _AnsweringEdge()

    async def through_connection() -> dict[str, float]:
        connection = http_server._Connection(answering)  # type: ignore[arg-type]
        connection.connection_made(_Sink())
        return _time(lambda: connection.data_received(raw), iterations)

    loop = uvloop.new_event_loop()
    try:
        edge = loop.run_until_complete(through_connection())
    finally:
        loop.close()
    message = answering.last  # the check as the edge parsed it
    assert message is not None
    return {
        "http: llhttp alone, one check request": _time(lambda: bare.feed_data(raw), iterations),
        "http: edge connection, check answered at once": edge,
        "http: adapter (from_http_check)": _time(lambda: http_request.from_http_check(message), iterations),
    }


def audit_records(iterations: int = 50_000) -> dict[str, dict[str, float]]:
    """One decision's audit record: the record (a dict, pseudonyms), and the record appended to the
    log (canonical JSON, the hash chain, the Merkle tree, a buffered write)."""
    with tempfile.TemporaryDirectory() as directory:
        root = pathlib.Path(directory)
        signing, _ = note.generate("tollgate.dev/audit/bench")
        log = audit_log.AuditLog(
            root / "audit", note.Signer.from_skey(signing), instance="bench", settings=audit_log.LogSettings()
        )
        log.open()
        pseudonym.generate_key_file(root / "pseudonyms.yaml", "bench")
        pseudonyms = pseudonym.load_keys(root / "pseudonyms.yaml")
        request = HttpRequest(
            "GET",
            "svc-17.bench.test",
            "/api/orders",
            headers={"user-agent": "wrk", "x-request-id": "4f1c"},
            source_ip="10.0.0.1",
            protocol="HTTP/1.1",
            destination="10.0.0.2",
        )
        identity = model.Identity(
            authenticated=True, method="jwt", subject="alice", email="alice@example.com", groups=("staff",)
        )
        made = decision.Decision(
            decision_id=ids.new_id(),
            revision="r",
            request=request,
            identity=identity,
            allowed=True,
            status=200,
            reason="rule_allow",
            policy="shop/orders",
            rule="read",
            duration_ns=180_000,
        )
        now = time.time_ns() // 1_000_000
        try:
            return {
                "audit: record": _time(lambda: record.decision_record(made, now, pseudonyms), iterations),
                "audit: record, appended": _time(
                    lambda: log.append(record.decision_record(made, now, pseudonyms)), iterations
                ),
            }
        finally:
            log.close()


def run() -> dict[str, dict[str, float]]:
    return {**engine(), **tokens(), **observers(), **http_edge(), **audit_records()}


if __name__ == "__main__":
    for name, numbers in run().items():
        print(f"{name:40} p50 {numbers['p50_us']:8.2f} µs   p99 {numbers['p99_us']:8.2f} µs")
