"""Mutated HTTP check requests at the HTTP ext_authz port (a bounded, seeded run): never an allow for
a denied target, never a traceback, and the port keeps answering. The HTTP twin of
test_hardening_grpc_fuzz.py, on the same seeds and attack classes.

The mutations are byte-level (flips, cuts, splices, repeats of the request's bytes, so llhttp sees
garbage too) and field-level (hosts, paths, methods, headers, Envoy's attribute lines repeated or
spoofed, source addresses).
"""

from __future__ import annotations

import asyncio
import random

import pytest

from authz import http_request
from authz.dev import checks

pytestmark = pytest.mark.envoy

SEEDS = [
    {"host": "vault.example.com", "path": "/"},
    {"host": "headers.test", "path": "/", "headers": [("x-debug", "1")]},
    {"host": "ipallow.test", "path": "/", "source_ip": "198.51.100.7"},
    {"host": "deny.test", "path": "/admin/x"},
    {"method": "DELETE", "host": "methods.test", "path": "/items/1"},
]
HOSTS, PATHS = checks.FUZZ_HOSTS, checks.FUZZ_PATHS  # the same attack classes over both edges
SOURCES = ["", "x", "::ffff:127.0.0.1", "fe80::1%eth0", "198.51.100.7:80", "192.0.2.1,198.51.100.7"]


def _field_mutation(rng: random.Random, seed: dict[str, object]) -> bytes:
    request = dict(seed)
    headers = [("connection", "close"), *request.pop("headers", [])]  # type: ignore[misc]
    choice = rng.randrange(6)
    if choice == 0:
        request["host"] = rng.choice(HOSTS)
    elif choice == 1:
        path = str(request["path"])
        request["path"] = rng.choice(PATHS) if request["host"] != "vault.example.com" else path + rng.choice(PATHS)
    elif choice == 2:
        request["method"] = rng.choice(["get", "GET\n", "", "X" * 40, "BREW"])
    elif choice == 3:
        name = rng.choice(["x-debug", "x-http-method-override", "cookie", "x_tollgate_subject", "host"])
        if name == "x-debug":  # every copy list still holds a "1": still denied on headers.test
            value = rng.choice(["1,1", "0,1", "1, 0", " 1", "1,"]) if headers else "0"
        else:
            value = rng.choice(["DELETE", 'session="' + "\\" * 2000, "a.wild.example.com", "admins"])
        headers.append((name, value))
    elif choice == 4:
        request["source_ip"] = rng.choice(SOURCES)
    else:  # a second, spoofed copy of one of Envoy's attribute lines
        source = str(request.get("source_ip", "127.0.0.1"))
        spoof = rng.choice([(http_request.SOURCE, "192.0.2.1"), (http_request.PEER_URI_SAN, "spiffe://x/admin")])
        request["envoy"] = [(http_request.SOURCE, source), spoof]
    return checks.http_check_request(headers=headers, **request)  # type: ignore[arg-type]


async def _run(port: int) -> tuple[list[bytes], int]:
    rng = random.Random(20261130)
    allowed, answered = [], 0
    for index in range(1500):
        if index % 2:
            data = _field_mutation(rng, SEEDS[index % len(SEEDS)])
        else:
            # Bytes only on seeds no spelling of which is allowed (see the gRPC twin).
            seed = dict(SEEDS[index % 4 // 2 * 2], headers=[("connection", "close")])
            data = checks.mutate_bytes(rng, checks.http_check_request(**seed))  # type: ignore[arg-type]
        # Tollgate closes after answering a request that asked it to (or after bytes it cannot parse);
        # a request that never ends (a mutated content-length) gets no answer in the time given.
        answers = await checks.exchange(port, data + b"\r\n\r\n", answers=8, timeout=0.25)
        answered += bool(answers)
        allowed += [data for answer in answers if answer.status == 200]
    return allowed, answered


def test_mutated_http_check_requests_never_get_an_allow(hardening) -> None:
    allowed, answered = asyncio.run(_run(hardening.tollgate.http_port))
    assert not allowed, f"{len(allowed)} mutated denied requests were allowed, e.g. {allowed[0]!r}"
    # A mutated content-length leaves a body that never ends: no answer for that one.
    assert answered > 1300  # the fuzz reached the decision path, not only the parser
    still = asyncio.run(checks.exchange(hardening.tollgate.http_port, checks.http_check_request(host="app.test")))
    assert still[0].status in (401, 403)
    log = hardening.log_text()
    assert "Traceback" not in log and "authz_error" not in log
