"""The Helm chart, linted and rendered by the real Helm library (helm-sdkpy) against the emulated
Kubernetes API, every rendered object validated with kubernetes-validate (strict, Kubernetes
1.31), and its security-relevant content asserted: RBAC, securityContext, probes, NetworkPolicy."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import kubernetes_validate
import pytest
import yaml

from authz import cli, crds, detect
from authz.dev import apiserver, monitoring

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "tollgate"
SCENARIOS = sorted((CHART / "ci").glob("*-values.yaml"))
RENDER = pathlib.Path(__file__).with_name("render_chart.py")
KUBERNETES = "1.31.0"  # what the emulator reports, and the schemas objects are validated against
# Custom resources: no upstream schema (AccessPolicy is checked by the data plane's own loader).
OUR_KINDS = {"ClusterKopfPeering", "KopfPeering", "AccessPolicy"}
# The Prometheus Operator's kinds: kubernetes-validate has no schema for them either;
# test_the_monitoring_objects checks them with promtool and against what they point at.
PROMETHEUS_OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[apiserver.ApiServerThread, pathlib.Path]]:
    server = apiserver.ApiServerThread().start()
    try:
        for kind in sorted(PROMETHEUS_OPERATOR_KINDS):  # a cluster with the Prometheus Operator
            name = f"monitoring.coreos.com/v1/{kind.lower()}s"
            server.call(lambda emulator, name=name, kind=kind: emulator.declare(name, kind))
        yield server, server.write_kubeconfig(tmp_path_factory.mktemp("helm") / "kubeconfig")
    finally:
        server.stop()


@pytest.fixture(scope="module")
def render(
    api: tuple[apiserver.ApiServerThread, pathlib.Path], tmp_path_factory: pytest.TempPathFactory
) -> Callable[[dict[str, Any] | pathlib.Path | None], dict[str, Any]]:
    """Lint and install the chart with these values; the manifest as parsed documents, or the error."""
    _, kubeconfig = api
    scratch = tmp_path_factory.mktemp("values")

    def run(values: dict[str, Any] | pathlib.Path | None) -> dict[str, Any]:
        if isinstance(values, dict):
            path = scratch / f"v{len(list(scratch.iterdir()))}.yaml"
            path.write_text(yaml.safe_dump(values))
            values = path
        result = subprocess.run(
            [sys.executable, str(RENDER), str(kubeconfig), str(CHART), *([str(values)] if values else [])],
            env={**os.environ, "HELM_DRIVER": "memory"},  # read by Go when the library loads
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        answer: dict[str, Any] = json.loads(result.stdout)
        answer["objects"] = [d for d in yaml.safe_load_all(answer.get("manifest", "")) if d]
        return answer

    return run


def _find(objects: list[dict[str, Any]], kind: str, suffix: str = "") -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"].endswith(suffix)]
    assert len(found) == 1, (kind, suffix, [o["metadata"]["name"] for o in objects if o["kind"] == kind])
    return found[0]


def _containers(pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod_spec.get("initContainers", []), *pod_spec["containers"]]


@pytest.mark.parametrize("scenario", [None, *SCENARIOS], ids=lambda p: p.name if p else "defaults")
def test_lint_finds_nothing_to_warn_about(render: Callable[..., dict[str, Any]], scenario: pathlib.Path | None) -> None:
    lint = render(scenario)["lint"]
    assert lint["Errors"] is None
    assert [m for m in lint["Messages"] if m["Severity"] >= 2] == []  # INFO only (no icon)


def test_every_value_has_a_comment() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    for number, line in enumerate(lines):
        if line.strip() and not line.lstrip().startswith("#"):
            previous = next(p for p in reversed(lines[:number]) if p.strip()) if number else ""
            assert previous.lstrip().startswith("#"), f"values.yaml line {number + 1} has no comment: {line}"


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda p: p.name)
def test_every_scenario_renders_and_every_object_is_valid(
    render: Callable[..., dict[str, Any]], scenario: pathlib.Path
) -> None:
    answer = render(scenario)
    assert "error" not in answer, answer.get("error")
    objects = answer["objects"]
    assert objects
    for obj in objects:
        if obj["kind"] in OUR_KINDS | PROMETHEUS_OPERATOR_KINDS:
            continue
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)
    assert not [o for o in objects if o["kind"] == "CustomResourceDefinition"]  # crds/ are posted, not rendered
    for obj in objects:
        spec = obj.get("spec", {}).get("template", {}).get("spec") or (obj["spec"] if obj["kind"] == "Pod" else None)
        if spec is None:
            continue
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in _containers(spec):
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, container["name"]
            assert context["allowPrivilegeEscalation"] is False and context["capabilities"] == {"drop": ["ALL"]}


def test_the_crds_are_installed_from_crds_as_generated(
    render: Callable[..., dict[str, Any]], api: tuple[apiserver.ApiServerThread, pathlib.Path]
) -> None:
    render(SCENARIOS[0])
    server, _ = api
    for name, definition in {**crds.definitions(), **crds.peering_definitions()}.items():
        posted = server.get("apiextensions.k8s.io/v1/customresourcedefinitions", None, name.removesuffix(".yaml"))
        assert posted is not None and posted["spec"] == definition["spec"], name


def test_minimal_least_privilege_and_probes(render: Callable[..., dict[str, Any]]) -> None:
    objects = render(CHART / "ci" / "minimal-values.yaml")["objects"]
    role = _find(objects, "Role", "-dataplane")
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["configmaps", "secrets"],
            "resourceNames": ["tollgate-config"],
            "verbs": ["get", "list", "watch"],
        }
    ]
    cluster_role = _find(objects, "ClusterRole", "-operator")
    verbs = {verb for rule in cluster_role["rules"] for verb in rule["verbs"]}
    assert "*" not in verbs and not verbs & {"delete", "deletecollection", "update", "escalate", "bind"}
    secrets_rules = [r for r in cluster_role["rules"] if "secrets" in r["resources"]]
    assert [r["verbs"] for r in secrets_rules] == [["list", "watch"]]  # never get, never write, cluster-wide
    operator_role = _find(objects, "Role", "-operator")
    assert all("resourceNames" in r or r["verbs"] == ["create"] for r in operator_role["rules"])
    dataplane = _find(objects, "Deployment", "-dataplane")["spec"]["template"]["spec"]
    [container] = dataplane["containers"]
    assert container["startupProbe"]["grpc"]["port"] == 9001
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    ports = {p["name"]: p["port"] for p in _find(objects, "Service", "-dataplane")["spec"]["ports"]}
    assert ports == {"grpc": 9001, "metrics": 9090}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TOLLGATE_CONFIG"] == "kubernetes:tollgate-system/tollgate-config"
    assert env["TOLLGATE_AUDIT_DIR"] and env["TOLLGATE_DEFAULT_ACTION"] == "Deny"
    assert env["TOLLGATE_GRPC_ENGINE"] == "auto" and env["TOLLGATE_GRPC_THREADS"] == "2"  # the server's defaults
    assert env["TOLLGATE_CPU_AFFINITY"] == "auto"
    operator = _find(objects, "Deployment", "-operator")["spec"]["template"]["spec"]["containers"][0]
    assert operator["livenessProbe"]["httpGet"]["path"] == "/healthz"
    webhook = _find(objects, "ValidatingWebhookConfiguration")
    secret = _find(objects, "Secret", "-webhook-tls")
    for hook in webhook["webhooks"]:
        assert hook["failurePolicy"] == "Ignore" and hook["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
    notes = render(CHART / "ci" / "minimal-values.yaml")["notes"]
    assert "verifier.key" in notes and "tollgate audit verify" in notes  # how an auditor gets the key


def test_high_availability_keeps_audit_evidence_per_pod(render: Callable[..., dict[str, Any]]) -> None:
    objects = render(CHART / "ci" / "ha-persistence-values.yaml")["objects"]
    stateful = _find(objects, "StatefulSet", "-dataplane")
    assert not [o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("-dataplane")]
    assert stateful["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "20Gi"
    assert stateful["spec"]["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}
    [container] = stateful["spec"]["template"]["spec"]["containers"]
    instance = next(e for e in container["env"] if e["name"] == "TOLLGATE_AUDIT_INSTANCE")
    assert instance["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert _find(objects, "PodDisruptionBudget")["spec"]["minAvailable"] == 2
    assert _find(objects, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["kind"] == "StatefulSet"
    policy = _find(objects, "NetworkPolicy")
    rule, metrics_rule = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": 9001, "protocol": "TCP"}]
    assert rule["from"][0]["podSelector"] == {"matchLabels": {"app": "envoy-gateway"}}
    assert metrics_rule == {"ports": [{"port": 9090, "protocol": "TCP"}]}  # scrapes: anyone, unless metricsFrom
    assert "delegations.yaml" in _find(objects, "ConfigMap", "-delegations")["data"]
    assert _find(objects, "Deployment", "-operator")["spec"]["replicas"] == 2
    assert _find(objects, "ClusterKopfPeering")


def test_without_the_operator_the_data_plane_reads_a_mounted_configmap(render: Callable[..., dict[str, Any]]) -> None:
    objects = render(CHART / "ci" / "no-operator-values.yaml")["objects"]
    assert not [o for o in objects if "operator" in o["metadata"]["name"]]
    assert not [o for o in objects if o["kind"] in ("Role", "RoleBinding")]  # it reads nothing from the API
    pod = _find(objects, "Deployment", "-dataplane")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    [volume] = [v for v in pod["volumes"] if v["name"] == "config"]
    assert volume["projected"]["sources"] == [
        {"configMap": {"name": "tollgate-policies"}},
        {"secret": {"name": "tollgate-policy-files"}},
    ]


def test_the_standalone_gateway_is_the_only_caller(render: Callable[..., dict[str, Any]]) -> None:
    objects = render(CHART / "ci" / "standalone-envoy-values.yaml")["objects"]
    gateway = _find(objects, "Deployment", "-gateway")["spec"]["template"]["spec"]
    [init] = gateway["initContainers"]
    command = init["args"][0]
    assert (
        "tollgate envoy-config" in command
        and "--authz tollgate-dataplane.tollgate-system.svc.cluster.local:9001" in command
    )
    policy = _find(objects, "NetworkPolicy")
    labels = policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    assert labels["app.kubernetes.io/component"] == "gateway"


def test_http_ext_authz_and_workers_reach_the_pod_the_service_and_the_gateway(
    render: Callable[..., dict[str, Any]],
) -> None:
    objects = render(CHART / "ci" / "http-workers-values.yaml")["objects"]
    [init] = _find(objects, "Deployment", "-gateway")["spec"]["template"]["spec"]["initContainers"]
    command = init["args"][0]
    assert "--authz tollgate-dataplane.tollgate-system.svc.cluster.local:9002" in command
    assert "--authz-mode http" in command and "--tollgate-workers 2" in command
    pod = _find(objects, "Deployment", "-dataplane")["spec"]["template"]["spec"]
    [server] = [c for c in pod["containers"] if c["name"] == "tollgate"]
    env = {item["name"]: item.get("value") for item in server["env"]}
    assert env["TOLLGATE_HTTP_LISTEN"] == "0.0.0.0:9002" and env["TOLLGATE_WORKERS"] == "2"
    assert env["TOLLGATE_MAX_CONNECTIONS"] == "4096"
    assert env["TOLLGATE_GRPC_ENGINE"] == "threads" and env["TOLLGATE_GRPC_THREADS"] == "32"
    assert {"name": "http-authz", "containerPort": 9002, "protocol": "TCP"} in server["ports"]
    service = _find(objects, "Service", "-dataplane")
    assert [p["port"] for p in service["spec"]["ports"] if p["name"] == "http-authz"] == [9002]
    allowed = _find(objects, "NetworkPolicy")["spec"]["ingress"][0]["ports"]
    assert {"port": 9002, "protocol": "TCP"} in allowed


def test_the_audit_web_view_reads_the_log_and_is_reached_only_through_the_gateway(
    render: Callable[..., dict[str, Any]], tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    objects = render(CHART / "ci" / "audit-ui-values.yaml")["objects"]
    pod = _find(objects, "Deployment", "-dataplane")["spec"]["template"]["spec"]
    (sidecar,) = [c for c in pod["containers"] if c["name"] == "audit-ui"]
    assert sidecar["args"][:3] == ["audit", "ui", "/var/lib/tollgate/audit"]
    assert "--pseudonym-keys=/etc/tollgate/audit-verifier/pseudonyms.yaml" in sidecar["args"]
    assert "--trace-url=https://grafana.corp.example/explore?traceId={trace_id}" in sidecar["args"]
    assert not any(arg.startswith("--local-only") for arg in sidecar["args"])
    mounts = {m["name"]: m for m in sidecar["volumeMounts"]}
    assert mounts["audit"]["readOnly"] is True  # it never writes to the log
    volumes = {v["name"]: v for v in pod["volumes"]}
    keys = [item["key"] for item in volumes["audit-verifier"]["secret"]["items"]]
    assert keys == ["verifier.key", "pseudonyms.yaml"]  # never the signing key
    assert sidecar["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "audit-ui"}
    service = _find(objects, "Service", "-dataplane")
    assert {"name": "audit-ui", "port": 9403, "targetPort": "audit-ui", "protocol": "TCP", "appProtocol": "http"} in (
        service["spec"]["ports"]
    )
    (gateway_rule, _) = _find(objects, "NetworkPolicy")["spec"]["ingress"]
    assert {"port": 9403, "protocol": "TCP"} in gateway_rule["ports"]
    assert gateway_rule["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "gateway"
    # The AccessPolicy admits only the auditors' group, and the data plane's own loader accepts it.
    policy = _find(objects, "AccessPolicy", "-audit-ui")
    assert policy["spec"]["hosts"] == ["audit.corp.example"]
    assert policy["spec"]["rules"] == [
        {"name": "auditors", "action": "Allow", "to": {"methods": ["GET", "HEAD"]}, "from": {"groups": ["compliance"]}}
    ]
    policy["metadata"]["namespace"] = "tollgate-system"
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy))
    assert cli.main(["policy", "check", str(tmp_path / "policy.yaml")]) == 0, capsys.readouterr()
    # Off by default: no sidecar, no port, no policy.
    default = render(None)["objects"]
    assert not [o for o in default if o["kind"] == "AccessPolicy"]
    assert "audit-ui" not in json.dumps(default)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"auditUI": {"enabled": True}, "audit": {"enabled": False}}, "auditUI.enabled: needs audit.enabled=true"),
        (
            {
                "auditUI": {"enabled": True},
                "operator": {"enabled": False},
                "audit": {"existingSecret": "k"},
                "dataplane": {"config": {"source": "configMap", "configMapName": "c"}},
            },
            "auditUI.createPolicy: needs operator.enabled=true",
        ),
        ({"auditUI": {"traceUrl": "https://tracing/no-placeholder"}}, "/auditUI/traceUrl"),
        ({"dataplane": {"replicas": 0}, "audit": {"existingSecret": "k"}}, "/dataplane/replicas"),
        (
            {"dataplane": {"replica": 2}, "audit": {"existingSecret": "k"}},
            "additional properties 'replica' not allowed",
        ),
        ({"dataplane": {"replicas": "two"}, "audit": {"existingSecret": "k"}}, "/dataplane/replicas"),
        ({"dataplane": {"workers": 0}, "audit": {"existingSecret": "k"}}, "/dataplane/workers"),
        ({"dataplane": {"maxConnections": -1}, "audit": {"existingSecret": "k"}}, "/dataplane/maxConnections"),
        ({"dataplane": {"grpcThreads": 0}, "audit": {"existingSecret": "k"}}, "/dataplane/grpcThreads"),
        ({"dataplane": {"grpcEngine": "fast"}, "audit": {"existingSecret": "k"}}, "/dataplane/grpcEngine"),
        ({"dataplane": {"cpuAffinity": "on"}, "audit": {"existingSecret": "k"}}, "/dataplane/cpuAffinity"),
        ({"dataplane": {"grpcThreads": 2048}, "audit": {"existingSecret": "k"}}, "/dataplane/grpcThreads"),
        (
            {"gateway": {"enabled": True, "authzMode": "http"}, "audit": {"existingSecret": "k"}},
            "gateway.authzMode=http needs dataplane.httpPort",
        ),
        ({"dataplane": {"defaultAction": "Maybe"}, "audit": {"existingSecret": "k"}}, "/dataplane/defaultAction"),
        ({"gateway": {"enabled": True, "upstream": "no-port"}, "audit": {"existingSecret": "k"}}, "/gateway/upstream"),
        ({"audit": {"enabled": False}, "dataplane": {"networkPolicy": {"enabled": True}}}, "gatewayPodSelector"),
        ({"audit": {"enabled": False}, "operator": {"enabled": False}}, "dataplane.config.source=operator"),
        (
            {"detection": {"settings": {"detectors": {"tokenReplay": {"addresses": 0}}}}, "audit": {"enabled": False}},
            "/detection/settings/detectors/tokenReplay/addresses",
        ),
        (
            {"detection": {"alertmanagerUrl": "alertmanager:9093"}, "audit": {"enabled": False}},
            "/detection/alertmanagerUrl",
        ),
        (
            {"metrics": {"serviceMonitor": {"interval": "often"}}, "audit": {"enabled": False}},
            "/metrics/serviceMonitor/interval",
        ),
    ],
)
def test_bad_values_are_refused_with_the_reason(
    render: Callable[..., dict[str, Any]], values: dict[str, Any], message: str
) -> None:
    answer = render(values)
    assert "error" in answer and message in answer["error"], answer.get("error")


def test_without_an_existing_secret_the_operator_makes_the_audit_keys_once(
    render: Callable[..., dict[str, Any]],
) -> None:
    answer = render({})  # the defaults
    assert "error" not in answer, answer.get("error")
    objects = answer["objects"]
    pod = _find(objects, "Deployment", "-dataplane")["spec"]["template"]["spec"]
    [keys] = [v for v in pod["volumes"] if v["name"] == "audit-keys"]
    assert keys["secret"]["secretName"] == "tollgate-audit-keys"
    operator = _find(objects, "Deployment", "-operator")["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "TOLLGATE_AUDIT_KEYS_SECRET", "value": "tollgate-audit-keys"} in operator["env"]
    assert "tollgate-audit-keys" in answer["notes"] and "kept on uninstall" in answer["notes"]
    refused = render(
        {"operator": {"enabled": False}, "dataplane": {"config": {"source": "configMap", "configMapName": "p"}}}
    )
    assert "audit.existingSecret: required without the operator" in refused["error"]


def test_the_gateway_examples_point_at_what_the_chart_serves(render: Callable[..., dict[str, Any]]) -> None:
    """Istio's and Envoy Gateway's manifests name the data plane Service and port the chart
    renders, and fail closed. (Their CRDs have no schema kubernetes-validate ships; the Istio
    mesh ConfigMap, a built-in kind, is validated.)"""
    service = _find(render(CHART / "ci" / "minimal-values.yaml")["objects"], "Service", "-dataplane")
    name, port = service["metadata"]["name"], service["spec"]["ports"][0]["port"]
    istio = list(yaml.safe_load_all((ROOT / "examples" / "gateways" / "istio.yaml").read_text()))
    kubernetes_validate.validate(istio[0], KUBERNETES, strict=True)
    [provider] = yaml.safe_load(istio[0]["data"]["mesh"])["extensionProviders"]
    grpc = provider["envoyExtAuthzGrpc"]
    assert grpc["service"] == f"{name}.tollgate-system.svc.cluster.local" and grpc["port"] == port
    assert grpc["failOpen"] is False
    assert istio[1]["spec"]["action"] == "CUSTOM" and istio[1]["spec"]["provider"]["name"] == provider["name"]
    policy, grant = yaml.safe_load_all((ROOT / "examples" / "gateways" / "envoy-gateway.yaml").read_text())
    [backend] = policy["spec"]["extAuth"]["grpc"]["backendRefs"]
    assert (backend["name"], backend["namespace"], backend["port"]) == (name, "tollgate-system", port)
    assert policy["spec"]["extAuth"]["failOpen"] is False
    assert (
        grant["spec"]["to"][0]["name"] == name
        and grant["spec"]["from"][0]["namespace"] == policy["metadata"]["namespace"]
    )


def test_the_monitoring_objects(render: Callable[..., dict[str, Any]], tmp_path: pathlib.Path) -> None:
    """ServiceMonitor, PrometheusRule, dashboard and detector settings, each checked against what it
    names: the rules by promtool, the monitor against the Service, the settings by the data plane's
    own parser."""
    objects = render(CHART / "ci" / "monitoring-values.yaml")["objects"]
    rules = _find(objects, "PrometheusRule")
    assert rules["spec"] == yaml.safe_load((CHART / "files" / "prometheus-rules.yaml").read_text())
    monitor = _find(objects, "ServiceMonitor", "-dataplane")
    service = _find(objects, "Service", "-dataplane")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    dashboard = _find(objects, "ConfigMap", "-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads((CHART / "files" / "grafana-dashboard.json").read_text())
    assert json.loads(dashboard["data"]["tollgate.json"]) == shipped

    settings_map = _find(objects, "ConfigMap", "-detectors")
    (tmp_path / "detectors.yaml").write_text(settings_map["data"]["detectors.yaml"])
    settings = detect.load_settings(tmp_path / "detectors.yaml")
    assert settings.max_keys == 20_000 and settings.rules["auth_failures_by_source"].threshold == 30
    assert not settings.rules["dry_run_denials"].enabled
    pod = _find(objects, "Deployment", "-dataplane")["spec"]["template"]
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["TOLLGATE_ALERTMANAGER_URL"] == "http://alertmanager-operated.monitoring:9093"
    mounts = {m["name"]: m["mountPath"] for m in pod["spec"]["containers"][0]["volumeMounts"]}
    assert env["TOLLGATE_DETECTORS"] == mounts["detectors"] + "/detectors.yaml"
    assert "checksum/detectors" in pod["metadata"]["annotations"]

    notes = render(CHART / "ci" / "monitoring-values.yaml")["notes"]
    assert "Alertmanager at http://alertmanager-operated.monitoring:9093" in notes and "--kind alert" in notes
    policy = _find(objects, "NetworkPolicy")
    metrics_rule = policy["spec"]["ingress"][1]
    assert metrics_rule["ports"] == [{"port": 9090, "protocol": "TCP"}]
    assert metrics_rule["from"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}


@pytest.mark.skipif(
    bool(monitoring.missing(monitoring.PROMTOOL)),
    reason="needs promtool from Debian's prometheus package (make test installs it when run as root)",
)
def test_the_rendered_prometheus_rule_passes_promtool(
    render: Callable[..., dict[str, Any]], tmp_path: pathlib.Path
) -> None:
    rules = _find(render(CHART / "ci" / "monitoring-values.yaml")["objects"], "PrometheusRule")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules["spec"]))
    command = ["promtool", "check", "rules", str(tmp_path / "rules.yaml")]
    checked = subprocess.run(command, capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_detection_off_and_no_monitoring_objects_by_default(render: Callable[..., dict[str, Any]]) -> None:
    objects = render(CHART / "ci" / "minimal-values.yaml")["objects"]
    assert not [o for o in objects if o["kind"] in PROMETHEUS_OPERATOR_KINDS]
    env = _find(objects, "Deployment", "-dataplane")["spec"]["template"]["spec"]["containers"][0]["env"]
    assert "TOLLGATE_DETECTION" not in {e["name"] for e in env}  # on, with the built-in settings
    off = render({"detection": {"enabled": False}, "audit": {"existingSecret": "k"}})["objects"]
    env = _find(off, "Deployment", "-dataplane")["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "TOLLGATE_DETECTION", "value": "off"} in env


def test_the_chart_checks_detector_settings_as_the_data_plane_does() -> None:
    """values.schema.json's detection.settings is the --detectors file's schema: what Helm accepts,
    the data plane accepts (and the other way round)."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["properties"]["detection"]["properties"]["settings"] == detect.SCHEMA
