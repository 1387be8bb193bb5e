"""``spec.identity.providers`` limits which providers' credentials count on a policy's hosts."""

from __future__ import annotations

import pathlib

from authz import decision, loader
from authz.dev import checks, idp
from authz.identity import resolve

CONFIG = """
apiVersion: tollgate.dev/v1alpha1
kind: IdentityProvider
metadata: {{name: corp}}
spec: {{type: jwt, jwt: {{issuer: "{corp}", audiences: [tollgate-demo]}}}}
---
apiVersion: tollgate.dev/v1alpha1
kind: IdentityProvider
metadata: {{name: partners}}
spec: {{type: jwt, jwt: {{issuer: "{partners}", audiences: [tollgate-demo]}}}}
---
apiVersion: tollgate.dev/v1alpha1
kind: AccessPolicy
metadata: {{name: internal}}
spec:
  hosts: [internal.test]
  identity: {{providers: [corp]}}
  rules: [{{name: staff, action: Allow, from: {{authenticated: true}}}}]
---
apiVersion: tollgate.dev/v1alpha1
kind: AccessPolicy
metadata: {{name: portal}}
spec:
  hosts: [portal.test]
  rules: [{{name: anyone-signed-in, action: Allow, from: {{authenticated: true}}}}]
"""


async def test_provider_scope(tmp_path: pathlib.Path) -> None:
    corp = idp.DevIdentityProvider(tmp_path / "corp").start()
    partners = idp.DevIdentityProvider(tmp_path / "partners").start()
    try:
        path = tmp_path / "config.yaml"
        path.write_text(CONFIG.format(corp=corp.issuer, partners=partners.issuer))
        snapshot = loader.load(path)
        resolver = resolve.IdentityResolver()
        resolver.update(snapshot.providers)
        for verifier in resolver.jwt_verifiers.values():
            await verifier.keys.fetch_once()

        async def outcome(host: str, token: str) -> tuple[int, str]:
            request = checks.check_request(host=host, headers={"authorization": f"Bearer {token}"})
            result = await decision.decide_check(request, snapshot, resolver)
            return result.status, result.reason

        assert await outcome("internal.test", corp.token("alice")) == (200, "rule_allow")
        assert await outcome("internal.test", partners.token("eve")) == (401, "token_unknown_issuer")
        assert await outcome("portal.test", partners.token("eve")) == (200, "rule_allow")
        assert await outcome("portal.test", corp.token("alice")) == (200, "rule_allow")
    finally:
        corp.stop()
        partners.stop()
