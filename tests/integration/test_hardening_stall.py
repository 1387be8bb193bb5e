"""Class 7, stalls: no request may hold the event loop for long. One ~54 KB Cookie header once kept
every Check waiting for seconds (the standard library's cookie parser is quadratic on some
inputs), so Envoy's ext_authz client timed out unrelated requests.

Hostile requests are sent alongside benign ones through a real Envoy (ext_authz timeout 2 s);
every benign request must be answered by Tollgate and reach the upstream, and no check may time
out or fail in Envoy's ext_authz client.
"""

from __future__ import annotations

import concurrent.futures

import pytest

pytestmark = pytest.mark.envoy

# The worst inputs found for the cookie parser and the token path; each just under Envoy's 60 KiB.
HOSTILE_COOKIES = [
    'session="' + "\\" * 54_000 + '"',  # quadratic unquoting in http.cookies
    'session="' + "\\\\" * 27_000 + '"',
    "session=" + "a;" * 27_000,
    "; " * 27_000 + "session=x",
    "session=" + "=" * 54_000,
    "session=" + ("a" * 50 + ".") * 1_000,  # many tokens' worth of dots: one token, too large
]


def test_hostile_cookies_do_not_stall_benign_requests(hardening, mode: str) -> None:
    proxy = hardening.proxies[mode]
    before = proxy.stats("http.ingress.ext_authz")
    bearer = hardening.bearer("alice")

    def hostile(cookie: str) -> int:
        return hardening.send(mode, "GET", "/x", "app.test", [("Cookie", cookie)], timeout=30).status

    def benign(index: int) -> int:
        answer = hardening.send(mode, "GET", f"/x/{index}", "app.test", [bearer], timeout=30)
        return answer.status if answer.upstream is not None else -answer.status

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        attacks = [pool.submit(hostile, cookie) for cookie in HOSTILE_COOKIES * 5]
        normal = [pool.submit(benign, index) for index in range(60)]
        statuses = [future.result() for future in normal]
        attack_statuses = [future.result() for future in attacks]
    assert statuses == [200] * 60
    # Each hostile request got Tollgate's own answer (401 or 400), not a timeout or a 5xx.
    assert set(attack_statuses) <= {400, 401, 431}, attack_statuses
    after = proxy.stats("http.ingress.ext_authz")
    for counter in ("http.ingress.ext_authz.error", "http.ingress.ext_authz.failure_mode_allowed"):
        assert after.get(counter, 0) == before.get(counter, 0), (counter, after)
