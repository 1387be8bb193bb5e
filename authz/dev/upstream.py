"""A demo upstream that echoes what it received (method, path, headers) as JSON.

Used behind Envoy by ``make demo`` and the integration tests: it shows exactly which identity
headers reached the upstream, and that client-sent copies did not.
"""

from __future__ import annotations

import http.server
import json
import threading
from typing import Any

__all__ = ["EchoUpstream"]


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _echo(self) -> None:
        self.server.count()  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        headers: dict[str, list[str]] = {}
        for name, value in self.headers.items():
            headers.setdefault(name.lower(), []).append(value)
        body = json.dumps({"method": self.command, "path": self.path, "headers": headers}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _echo

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # the listen backlog (socketserver's default, 5, drops Envoy's connects under load)
    served = 0  # requests answered: what reached the upstream at all
    _lock = threading.Lock()

    def count(self) -> None:
        with self._lock:
            self.served += 1


class EchoUpstream:
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = _Server((host, port), _Handler)
        self.port = self._server.server_address[1]
        self._thread: threading.Thread | None = None

    @property
    def served(self) -> int:
        """Requests the upstream has answered since it started."""
        return self._server.served

    def start(self) -> EchoUpstream:
        self._thread = threading.Thread(target=self._server.serve_forever, name="echo-upstream", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
