"""The Envoy bootstrap builder: every combination of options is a configuration real Envoy accepts
(``envoy --mode validate``), and it says what the data path relies on."""

from __future__ import annotations

import json
import pathlib
import subprocess

import pytest

from authz import envoy_bootstrap
from authz.dev import harness, pki


def _validate(config: dict[str, object], directory: pathlib.Path) -> subprocess.CompletedProcess[str]:
    path = directory / "envoy.json"
    path.write_text(json.dumps(config))
    return subprocess.run(
        [harness.envoy_binary(), "--mode", "validate", "-c", str(path), "--use-dynamic-base-id", "-l", "error"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    "options",
    [
        {"authz_port": 9001, "upstream_port": 8080},
        {"authz_port": None, "upstream_port": None},
        {"authz_port": 9001, "upstream_port": 8080, "normalize_path": False, "merge_slashes": False},
        {
            "authz_port": 9001,
            "upstream_port": None,
            "access_log": True,
            "tracing_port": 4317,
            "request_body_bytes": 1024,
        },
        {"authz_port": 9001, "upstream_port": 8080, "tls": True, "authz_timeout": 0.25},
        {"authz_port": 9001, "upstream_port": 8080, "authz_mode": "http", "access_log": True, "tls": True},
        {"authz_port": 9001, "upstream_port": 8080, "authz_streams": 4, "authz_connection_seconds": 30},
        {"authz_port": 9001, "upstream_port": 8080, "authz_mode": "http", "authz_connection_seconds": 1.5},
    ],
)
def test_envoy_accepts_the_bootstrap(tmp_path: pathlib.Path, options: dict[str, object]) -> None:
    if options.pop("tls", False):
        ca = pki.DevCA(tmp_path / "pki")
        cert, key = ca.issue("envoy", dns="localhost")
        options["tls"] = {"cert": str(cert), "key": str(key), "client_ca": str(ca.ca_file)}
    config = envoy_bootstrap.bootstrap(envoy_bootstrap.EnvoyOptions(listen_port=10000, admin_port=10001, **options))  # type: ignore[arg-type]
    result = _validate(config, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ext_authz_fails_closed_and_goes_first() -> None:
    config = envoy_bootstrap.bootstrap(
        envoy_bootstrap.EnvoyOptions(listen_port=1, admin_port=2, authz_port=3, upstream_port=4)
    )
    [listener] = config["staticResources"]["listeners"]
    manager = listener["filterChains"][0]["filters"][0]["typedConfig"]
    names = [item["name"] for item in manager["httpFilters"]]
    assert names == ["envoy.filters.http.ext_authz", "envoy.filters.http.router"]
    ext_authz = manager["httpFilters"][0]["typedConfig"]
    # failure_mode_allow is false by default and proto3 JSON leaves defaults out: it must not be true.
    assert ext_authz.get("failureModeAllow", False) is False
    assert ext_authz["grpcService"] == {"envoyGrpc": {"clusterName": "tollgate"}, "timeout": "2s"}
    assert manager["normalizePath"] is True
