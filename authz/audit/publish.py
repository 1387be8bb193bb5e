"""The audit log's read-only HTTP face, for witnesses: the newest signed checkpoints, and
consistency proofs between tree sizes.

    GET /audit/v1/checkpoints                         {"logs": [{"origin": ..., "checkpoint": note}]}
    GET /audit/v1/consistency?origin=O&old=M&new=N    {"proof": [base64 hash, ...]}  (RFC 6962)

Served from the files on disk (:mod:`authz.audit.layout`), so it runs inside ``tollgate serve``
(``--audit-witness-listen``) or beside it on a copy (``tollgate audit publish DIR``). It holds no
secret and changes nothing. Each log is read once, incrementally, into a
:class:`~authz.audit.proof.SessionTree` (the roots of its blocks of 256 records and of the perfect
subtrees above them, as for the audit UI's proof downloads): a proof then reads at most two blocks
and hashes a few thousand nodes, not the whole log again. A log whose first records went by
retention cannot be proven consistent from before them: such a request is answered 409.

Bounded, since it may run inside the server that decides Checks: at most :data:`MAX_CONNECTIONS`
connections at a time (one more is closed at once), and a connection that sends nothing for
:data:`IDLE_SECONDS` is closed.
"""

from __future__ import annotations

import base64
import http.server
import json
import pathlib
import threading
import urllib.parse
from typing import Any

from authz.audit import layout, proof

__all__ = ["LogPublisher"]

_MAX_LOGS = 1000
MAX_CONNECTIONS = 32
IDLE_SECONDS = 10.0


class LogPublisher:
    """A threaded HTTP server publishing the logs under ``directory``; :meth:`stop` ends it."""

    def __init__(
        self,
        directory: pathlib.Path,
        host: str,
        port: int,
        *,
        max_connections: int = MAX_CONNECTIONS,
        idle_seconds: float = IDLE_SECONDS,
    ) -> None:
        self.directory = directory
        self._trees: dict[str, proof.SessionTree] = {}
        self._lock = threading.Lock()
        publisher = self

        class Handler(http.server.BaseHTTPRequestHandler):
            timeout = idle_seconds  # the socket's timeout while a request is read

            def do_GET(self) -> None:
                status, body = publisher.answer(self.path)
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", "no-store")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = _BoundedServer((host, port), Handler, max_connections)
        self.port = int(self._server.server_address[1])
        self._thread: threading.Thread | None = None

    def start(self) -> LogPublisher:
        self._thread = threading.Thread(target=self._server.serve_forever, name="audit-publish", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def answer(self, target: str) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body) for one GET."""
        url = urllib.parse.urlsplit(target)
        if url.path == "/audit/v1/checkpoints":
            return 200, {"logs": self._checkpoints()}
        if url.path == "/audit/v1/consistency":
            query = urllib.parse.parse_qs(url.query)
            try:
                origin = query["origin"][0]
                old, new = int(query["old"][0]), int(query["new"][0])
            except (KeyError, ValueError, IndexError):
                return 400, {"error": "origin, old and new are required; old and new are tree sizes"}
            return self._consistency(origin, old, new)
        return 404, {"error": "not found"}

    def _sessions(self) -> dict[str, pathlib.Path]:
        return {
            layout.origin_for(instance, session.name): session
            for instance, found in layout.sessions(self.directory)
            for session in found
        }

    def _checkpoints(self) -> list[dict[str, str]]:
        logs = []
        for instance, found in layout.sessions(self.directory):
            newest = found[-1]
            entries = layout.checkpoint_entries_newest_first(newest)
            last = next((entry for entry in entries if isinstance(entry.get("note"), str)), None)
            if last is not None:
                logs.append({"origin": layout.origin_for(instance, newest.name), "checkpoint": last["note"]})
        return logs[:_MAX_LOGS]

    def _consistency(self, origin: str, old: int, new: int) -> tuple[int, dict[str, Any]]:
        session = self._sessions().get(origin)
        if session is None:
            return 404, {"error": f"no log {origin!r} here"}
        with self._lock:
            tree = self._trees.get(origin)
            if tree is None:
                tree = self._trees[origin] = proof.SessionTree([self.directory], session.relative_to(self.directory))
        tree.refresh()
        if tree.problem:
            return 409, {"error": tree.problem}
        try:
            nodes = tree.consistency(old, new)
        except proof.ProofError as error:
            return 400, {"error": str(error)}
        return 200, {"proof": [base64.b64encode(node).decode() for node in nodes]}


class _BoundedServer(http.server.ThreadingHTTPServer):
    """A thread per connection, at most ``limit`` of them: one more is closed unanswered."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: Any, limit: int) -> None:
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(limit)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()  # no thread was started to release it
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()
