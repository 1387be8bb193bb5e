"""End to end on a kind cluster: the image, the chart, the operator, the data plane and a real
Envoy gateway, driven as a user would (``make e2e``).

Needs ``kind``, ``kubectl`` and a container engine that can run containers (``docker``, or
``podman``); without them every test here is skipped and the reason names what is missing. The
cluster is created from ``kind-config.yaml`` and deleted afterwards.
"""

# ruff: noqa: E501 - the manifests below read best unwrapped

from __future__ import annotations

import base64
import json
import pathlib
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
import yaml

pytestmark = pytest.mark.kind

ROOT = pathlib.Path(__file__).resolve().parents[2]
CLUSTER = "tollgate"
NAMESPACE = "tollgate-system"
IMAGE = "tollgate:e2e"
GATEWAY = "http://127.0.0.1:30080"
SECRET = "e2e-hmac-secret-of-at-least-32-bytes!!"


def _engine() -> str | None:
    """A container engine that can run containers here (None if there is none)."""
    for engine in ("docker", "podman"):
        if shutil.which(engine) is None:
            continue
        probe = subprocess.run([engine, "info"], capture_output=True, text=True, check=False, timeout=60)
        if probe.returncode == 0:
            return engine
    return None


def _missing() -> str:
    missing = [tool for tool in ("kind", "kubectl") if shutil.which(tool) is None]
    if _engine() is None:
        missing.append("a container engine that can run containers (docker or podman)")
    return ", ".join(missing)


def _run(*args: str, stdin: str | None = None, timeout: float = 600) -> str:
    result = subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, f"{' '.join(args)}: {result.stderr[-3000:]}"
    return result.stdout


def _kubectl(*args: str, stdin: str | None = None) -> str:
    return _run("kubectl", "--context", f"kind-{CLUSTER}", *args, stdin=stdin)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pathlib.Path]:
    missing = _missing()
    if missing:
        pytest.skip(f"kind end-to-end tests need {missing}")
    engine = _engine()
    assert engine is not None
    work = tmp_path_factory.mktemp("kind")
    _run("kind", "create", "cluster", "--name", CLUSTER, "--config", str(ROOT / "kind-config.yaml"), "--wait", "120s")
    try:
        _run(engine, "build", "-t", IMAGE, str(ROOT), timeout=1800)
        _run("kind", "load", "docker-image", IMAGE, "--name", CLUSTER)
        _kubectl("create", "namespace", NAMESPACE)
        keys = work / "keys"
        _run(sys.executable, "-m", "authz", "audit", "keygen", "--name", "tollgate.dev/audit/e2e", "--out", str(keys))
        _run(
            sys.executable,
            "-m",
            "authz",
            "audit",
            "pseudonym-key",
            "--file",
            str(keys / "pseudonyms.yaml"),
            "--id",
            "k1",
        )
        _kubectl(
            "-n", NAMESPACE, "create", "secret", "generic", "tollgate-audit-keys",
            f"--from-file=signing.key={keys / 'signing.key'}",
            f"--from-file=verifier.key={keys / 'verifier.key'}",
            f"--from-file=pseudonyms.yaml={keys / 'pseudonyms.yaml'}",
        )  # fmt: skip
        _kubectl("apply", "-f", "-", stdin=_UPSTREAM)
        values = {
            "image": {"repository": "tollgate", "tag": "e2e", "pullPolicy": "Never"},
            "audit": {"existingSecret": "tollgate-audit-keys"},
            "dataplane": {"replicas": 1, "networkPolicy": {"enabled": True}},
            "gateway": {
                "enabled": True,
                "upstream": f"echo.{NAMESPACE}.svc.cluster.local:8080",
                "serviceType": "NodePort",
                "nodePort": 30080,
            },
        }
        (work / "values.yaml").write_text(yaml.safe_dump(values))
        _run(
            sys.executable,
            str(ROOT / "tests" / "chart" / "install_chart.py"),
            str(ROOT / "charts" / "tollgate"),
            str(work / "values.yaml"),
        )
        yield work
    finally:
        _run("kind", "delete", "cluster", "--name", CLUSTER)


_UPSTREAM = f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: echo, namespace: {NAMESPACE}}}
spec:
  selector: {{matchLabels: {{app: echo}}}}
  template:
    metadata: {{labels: {{app: echo}}}}
    spec:
      containers:
        - name: echo
          image: {IMAGE}
          imagePullPolicy: Never
          command: [python, -c]
          args:
            - "import time; from authz.dev import upstream; upstream.EchoUpstream('0.0.0.0', 8080).start(); time.sleep(1e9)"
---
apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: {NAMESPACE}}}
spec: {{selector: {{app: echo}}, ports: [{{port: 8080}}]}}
"""


def _resources(paths: list[str], mode: str = "Enforce") -> str:
    return f"""
apiVersion: v1
kind: Secret
metadata: {{name: hmac, namespace: shop, labels: {{tollgate.dev/credentials: "true"}}}}
stringData: {{secret: "{SECRET}"}}
---
apiVersion: tollgate.dev/v1alpha1
kind: IdentityProvider
metadata: {{name: corp, namespace: shop}}
spec:
  type: jwt
  jwt: {{issuer: "https://sso.e2e.test", algorithms: [HS256], hmacSecretRef: {{name: hmac, key: secret}}}}
---
apiVersion: tollgate.dev/v1alpha1
kind: AccessPolicy
metadata: {{name: orders, namespace: shop}}
spec:
  hosts: [orders.e2e.test]
  mode: {mode}
  rules:
    - {{name: staff, action: Allow, from: {{groups: [staff]}}, to: {{paths: {json.dumps(paths)}}}}}
"""


def _token(groups: list[str]) -> str:
    claims = {"iss": "https://sso.e2e.test", "sub": "alice", "groups": groups, "exp": int(time.time()) + 600}
    return jwt.encode(claims, SECRET, algorithm="HS256")


def _call(path: str, token: str | None) -> tuple[int, dict[str, Any] | None]:
    headers = {"Host": "orders.e2e.test", **({"Authorization": f"Bearer {token}"} if token else {})}
    request = urllib.request.Request(GATEWAY + path, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, json.load(reply)
    except urllib.error.HTTPError as error:
        return error.code, None


def _eventually(check: Any, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(1)


def test_policies_applied_as_resources_decide_through_the_gateway(cluster: pathlib.Path) -> None:
    _kubectl("create", "namespace", "shop")
    _kubectl("apply", "-f", "-", stdin=_resources(["/orders"]))
    _kubectl("-n", "shop", "wait", "--for=condition=Ready", "accesspolicy/orders", "--timeout=120s")
    _eventually(lambda: _call("/orders", _token(["staff"]))[0] == 200)
    status, echoed = _call("/orders", _token(["staff"]))
    assert status == 200 and echoed is not None and echoed["headers"]["x-tollgate-subject"] == ["alice"]
    assert _call("/orders", None)[0] == 401
    assert _call("/orders", _token(["guests"]))[0] == 403
    # A change is enforced; DryRun denies nothing.
    _kubectl("apply", "-f", "-", stdin=_resources(["/invoices"]))
    _eventually(lambda: _call("/invoices", _token(["staff"]))[0] == 200)
    assert _call("/orders", _token(["staff"]))[0] == 403
    _kubectl("apply", "-f", "-", stdin=_resources(["/invoices"], mode="DryRun"))
    _eventually(lambda: _call("/orders", _token(["guests"]))[0] == 200)
    # An invalid change is refused at once by the webhook.
    refused = subprocess.run(
        ["kubectl", "--context", f"kind-{CLUSTER}", "apply", "-f", "-"],
        input=_resources(["/a*b"]),
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode != 0 and "spec.rules[0].to.paths[0]" in refused.stderr


def test_the_pods_audit_log_verifies(cluster: pathlib.Path) -> None:
    pod = _kubectl("-n", NAMESPACE, "get", "pods", "-l", "app.kubernetes.io/component=dataplane", "-o", "name")
    name = pod.split()[0].removeprefix("pod/")
    target = cluster / "audit"
    _kubectl("-n", NAMESPACE, "cp", f"{name}:/var/lib/tollgate/audit", str(target))
    secret = json.loads(_kubectl("-n", NAMESPACE, "get", "secret", "tollgate-audit-keys", "-o", "json"))
    (cluster / "verifier.key").write_bytes(base64.b64decode(secret["data"]["verifier.key"]))
    _run(sys.executable, "-m", "authz", "audit", "verify", str(target), "--key", str(cluster / "verifier.key"))
