"""Render the chart with the real Helm library: ``python render_chart.py KUBECONFIG CHART [VALUES.yaml]``.

Helm-sdkpy's ``Install`` against the Kubernetes API at KUBECONFIG (the test's emulator), with the
``memory`` storage driver, which Go reads from the environment when the library loads — so this
runs as its own process, started with ``HELM_DRIVER=memory``. Prints one JSON object: the lint
result and the manifest, or the error.
"""

from __future__ import annotations

import asyncio
import json
import sys

import helm_sdkpy
import yaml


async def main(kubeconfig: str, chart: str, values_file: str | None) -> dict[str, object]:
    values = yaml.safe_load(open(values_file).read()) if values_file else {}  # noqa: SIM115
    config = helm_sdkpy.Configuration(namespace="tollgate-system", kubeconfig=kubeconfig)
    lint = await helm_sdkpy.Lint(config).run(chart)
    try:
        release = await helm_sdkpy.Install(config).run("tollgate", chart, values=values or {}, wait=False, timeout=60)
    except helm_sdkpy.HelmError as error:
        return {"lint": lint, "error": str(error)}
    return {"lint": lint, "manifest": release["manifest"], "notes": release.get("info", {}).get("notes", "")}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None))))
