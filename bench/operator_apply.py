"""Apply → enforced: how long after ``kubectl apply`` of an AccessPolicy Envoy acts on it.

``python bench/operator_apply.py [CHANGES]`` (default 60). The whole path runs for real on
loopback: the emulated Kubernetes API (:mod:`authz.dev.apiserver`), ``tollgate operator`` (kopf),
``tollgate serve --config kubernetes:...`` following the published ConfigMap and Secret through
the API, a real Envoy and an echo upstream. Each change patches one policy to allow a new path
only; the clock runs from just before the PATCH until the first request for that path that
Envoy lets through (polled every 5 ms). Results: bench/results/operator-apply.json.
"""

from __future__ import annotations

import json
import pathlib
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightkube import Client, KubeConfig  # noqa: E402
from lightkube.generic_resource import create_namespaced_resource  # noqa: E402
from lightkube.models.meta_v1 import ObjectMeta  # noqa: E402

from authz.dev import apiserver, harness, upstream  # noqa: E402

AccessPolicy = create_namespaced_resource("tollgate.dev", "v1alpha1", "AccessPolicy", "accesspolicies")


def _allowed(port: int, path: str) -> bool:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Host": "app.test"})
    try:
        with urllib.request.urlopen(request, timeout=2) as reply:
            return bool(reply.status == 200)
    except urllib.error.HTTPError:
        return False


def _rules(path: str) -> list[dict[str, object]]:
    return [{"name": "one", "action": "Allow", "to": {"paths": [path]}}]


def measure(changes: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="tollgate-apply-") as scratch:
        work = pathlib.Path(scratch)
        api = apiserver.ApiServerThread().start()
        kubeconfig = api.write_kubeconfig(work / "kubeconfig")
        echo = upstream.EchoUpstream().start()
        operator = harness.OperatorProcess(
            kubeconfig, extra=["--peering", "", "--webhook-configuration", ""], log_to=work / "operator.log"
        )
        authz = harness.TollgateProcess(
            "kubernetes:tollgate-system/tollgate-config",
            env={"KUBECONFIG": str(kubeconfig)},
            log_to=work / "tollgate.log",
        )
        kube = Client(config=KubeConfig.from_file(kubeconfig), field_manager="bench")
        try:
            operator.start()
            authz.start()
            proxy = harness.Envoy(authz_port=authz.port, upstream_port=echo.port, log_to=work / "envoy.log").start()
            spec = {"hosts": ["app.test"], "rules": _rules("/warmup")}
            kube.create(AccessPolicy(metadata=ObjectMeta(name="app", namespace="shop"), spec=spec))
            deadline = time.monotonic() + 30
            while not _allowed(proxy.port, "/warmup") and time.monotonic() < deadline:
                time.sleep(0.01)
            latencies = []
            for index in range(changes):
                path = f"/v{index}"
                started = time.perf_counter()
                kube.patch(AccessPolicy, "app", {"spec": {"rules": _rules(path)}}, namespace="shop")
                while not _allowed(proxy.port, path):
                    if time.perf_counter() - started > 30:
                        raise TimeoutError(f"change {index} not enforced after 30 s")
                    time.sleep(0.005)
                latencies.append(time.perf_counter() - started)
            proxy.stop()
        finally:
            kube.close()
            authz.stop()
            operator.stop()
            echo.stop()
            api.stop()
    ordered = sorted(latencies)
    return {
        "command": f"python bench/operator_apply.py {changes}",
        "changes": changes,
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 1),
    }


def main() -> int:
    changes = int(sys.argv[1]) if len(sys.argv) > 1 else 60
    result = measure(changes)
    out = ROOT / "bench" / "results" / "operator-apply.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"apply → enforced over {result['changes']} changes: p50 {result['p50_ms']} ms, "
        f"p99 {result['p99_ms']} ms, max {result['max_ms']} ms ({out.relative_to(ROOT)})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
