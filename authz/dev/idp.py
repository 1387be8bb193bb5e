"""A development-only OIDC identity provider: discovery + JWKS over HTTP on loopback, and token signing.

DEVELOPMENT ONLY. It signs whatever claims it is asked for. Used by ``make demo``,
``tollgate dev idp`` / ``tollgate dev token`` and the tests, which also use its fault modes to make
a real JWKS endpoint go down, return garbage or return an oversized body.

Its signing keys live in a state directory (``idp.json``), so a separate ``tollgate dev token``
process signs with the key the running provider serves.
"""

from __future__ import annotations

import base64
import http.server
import json
import pathlib
import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

__all__ = ["DevIdentityProvider", "b64url", "load_state", "sign_token", "unsigned_token"]

AUDIENCE = "tollgate-demo"


def _new_key() -> dict[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return {"kid": "dev-" + secrets.token_hex(4), "pem": pem}


def load_state(state_dir: pathlib.Path, issuer: str = "") -> dict[str, Any]:
    """Read (or create) the provider's keys; ``issuer`` is recorded when given."""
    path = state_dir / "idp.json"
    state: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"keys": [_new_key()]}
    if issuer:
        state["issuer"] = issuer
    state_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(state))
    path.chmod(0o600)
    return state


def _public_jwk(entry: Mapping[str, str]) -> dict[str, Any]:
    private = serialization.load_pem_private_key(entry["pem"].encode(), password=None)
    jwk: dict[str, Any] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))  # type: ignore[arg-type]
    jwk.update(kid=entry["kid"], use="sig", alg="RS256")
    return jwk


def sign_token(
    state: Mapping[str, Any],
    subject: str,
    *,
    groups: Sequence[str] = (),
    roles: Sequence[str] = (),
    mfa: bool = False,
    email: str = "",
    audience: str = AUDIENCE,
    lifetime: int = 3600,
    extra: Mapping[str, Any] | None = None,
    headers: Mapping[str, Any] | None = None,
) -> str:
    """A signed RS256 token with the current key (the first one in the state)."""
    entry = state["keys"][0]
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": state["issuer"],
        "sub": subject,
        "aud": audience,
        "iat": now,
        "nbf": now,
        "exp": now + lifetime,
        "groups": list(groups),
        "roles": list(roles),
        "amr": ["pwd", "mfa"] if mfa else ["pwd"],
    }
    if email:
        claims["email"] = email
    claims.update(extra or {})
    return jwt.encode(claims, entry["pem"], algorithm="RS256", headers={"kid": entry["kid"], **(headers or {})})


def b64url(data: bytes) -> str:
    """Base64url without padding, as JWT segments are written."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_token(header: Mapping[str, Any], claims: Mapping[str, Any]) -> str:
    """``header.claims`` of a token, unsigned: what the attack tests forge signatures onto."""
    return f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"


class DevIdentityProvider:
    """Serves ``/.well-known/openid-configuration`` and ``/jwks.json`` on 127.0.0.1."""

    def __init__(self, state_dir: pathlib.Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.state_dir = state_dir
        self.mode = "ok"  # "ok" | "garbage" | "oversized" | "error" — fault injection for tests
        self.delay = 0.0  # seconds to wait before answering (a slow provider)
        self.extra_keys: list[dict[str, Any]] = []  # further public JWKs to publish (e.g. of another type)
        self.discovery_issuer = ""  # overrides the issuer the discovery document claims
        self.max_age = 300
        self.requests = 0
        provider = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                provider.requests += 1
                if provider.delay:
                    time.sleep(provider.delay)
                if self.path == "/.well-known/openid-configuration":
                    body = json.dumps(
                        {
                            "issuer": provider.discovery_issuer or provider.issuer,
                            "jwks_uri": provider.issuer + "/jwks.json",
                            "id_token_signing_alg_values_supported": ["RS256"],
                        }
                    ).encode()
                elif self.path == "/jwks.json":
                    body = provider._jwks_body()
                else:
                    self.send_error(404)
                    return
                if provider.mode == "error":
                    self.send_error(503)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", f"max-age={provider.max_age}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.issuer = f"http://{host}:{self.port}"
        self.state = load_state(state_dir, self.issuer)
        self._thread: threading.Thread | None = None

    def _jwks_body(self) -> bytes:
        if self.mode == "garbage":
            return b"<html>this is not a key set</html>"
        if self.mode == "oversized":
            return b'{"keys": [' + b'{"kty": "oct", "k": "' + b"A" * 2_000_000 + b'"}]}'
        return json.dumps({"keys": [_public_jwk(k) for k in self.state["keys"]] + self.extra_keys}).encode()

    def rotate(self, *, keep_old: bool = True) -> None:
        """Put a new key first (it signs from now on); keep or drop the old ones."""
        self.state["keys"] = [_new_key(), *(self.state["keys"] if keep_old else [])]
        (self.state_dir / "idp.json").write_text(json.dumps(self.state))

    def provider_config(self, name: str = "dev", *, cookie: str = "") -> str:
        """This provider as an IdentityProvider document; with ``cookie``, tokens are also read from
        that cookie (as a browser sends them), besides the Authorization header."""
        sources = (
            f', tokenSources: [{{header: authorization, prefix: "Bearer "}}, {{cookie: {cookie}}}]' if cookie else ""
        )
        return (
            f"apiVersion: tollgate.dev/v1alpha1\nkind: IdentityProvider\nmetadata: {{name: {name}}}\n"
            f'spec: {{type: jwt, jwt: {{issuer: "{self.issuer}", audiences: [tollgate-demo]{sources}}}}}\n'
        )

    def app_config(self, *rules: str, namespace: str = "", cookie: str = "") -> str:
        """A configuration most tests start from: this provider as IdentityProvider ``dev`` (see
        :meth:`provider_config` for ``cookie``), and one AccessPolicy ``app`` (in ``namespace``, if
        given) on host ``app.test`` with ``rules`` (each one rule in YAML flow style)."""
        where = f", namespace: {namespace}" if namespace else ""
        listed = "".join(f"\n    - {rule}" for rule in rules)
        return (
            self.provider_config(cookie=cookie)
            + "---\n"
            + f"apiVersion: tollgate.dev/v1alpha1\nkind: AccessPolicy\nmetadata: {{name: app{where}}}\n"
            + f"spec:\n  hosts: [app.test]\n  rules:{listed}\n"
        )

    def token(self, subject: str, **kwargs: Any) -> str:
        return sign_token(self.state, subject, **kwargs)

    def start(self) -> DevIdentityProvider:
        self._thread = threading.Thread(target=self._server.serve_forever, name="dev-idp", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
