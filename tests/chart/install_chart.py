"""Install the chart into the current kube context with the real Helm library and wait for it:
``python install_chart.py CHART VALUES.yaml`` (used by the kind end-to-end test)."""

from __future__ import annotations

import asyncio
import sys

import helm_sdkpy
import yaml


async def main(chart: str, values_file: str) -> None:
    values = yaml.safe_load(open(values_file).read())  # noqa: SIM115
    config = helm_sdkpy.Configuration(namespace="tollgate-system")
    await helm_sdkpy.Install(config).run("tollgate", chart, values=values, wait=True, timeout=600)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
