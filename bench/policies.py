"""Generate large, realistic policy sets for the benchmarks: N hosts, R rules per host."""

from __future__ import annotations

import pathlib
from typing import Any

import yaml


def write_policies(directory: pathlib.Path, hosts: int, rules_per_host: int, *, provider_issuer: str = "") -> str:
    """Write ``hosts`` AccessPolicies; return the host whose policy allows the benchmark request."""
    directory.mkdir(parents=True, exist_ok=True)
    documents = []
    if provider_issuer:
        documents.append(
            {
                "apiVersion": "tollgate.dev/v1alpha1",
                "kind": "IdentityProvider",
                "metadata": {"name": "bench-idp"},
                "spec": {"type": "jwt", "jwt": {"issuer": provider_issuer, "audiences": ["tollgate-demo"]}},
            }
        )
    for index in range(hosts):
        rules: list[dict[str, Any]] = []
        for rule in range(rules_per_host - 1):
            rules.append(
                {
                    "name": f"r{rule}",
                    "action": "Deny" if rule % 4 == 0 else "Allow",
                    "to": {"methods": ["POST", "DELETE"], "paths": [f"/svc{rule}/*"]},
                    "from": {"groups": [f"team-{rule}"]},
                }
            )
        rules.append(
            {
                "name": "bench",
                "action": "Allow",
                "to": {"methods": ["GET"], "paths": ["/api/*"]},
                **({"from": {"authenticated": True}} if provider_issuer else {}),
            }
        )
        documents.append(
            {
                "apiVersion": "tollgate.dev/v1alpha1",
                "kind": "AccessPolicy",
                "metadata": {"name": f"svc-{index}", "namespace": "bench"},
                "spec": {"hosts": [f"svc-{index}.bench.test"], "rules": rules},
            }
        )
    (directory / "policies.yaml").write_text(yaml.safe_dump_all(documents))
    return f"svc-{hosts // 2}.bench.test"
