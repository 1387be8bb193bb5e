"""Baselines for the HTTP ext_authz edge: do-nothing servers that allow everything over HTTP/1.1.

    python noop_http.py PORT protocol   asyncio.Protocol + httptools (llhttp) on uvloop: the stack
                                        authz.http_server is built on, with nothing else
    python noop_http.py PORT uvicorn    uvicorn (httptools, uvloop) and a raw ASGI app: the same
                                        parser under a maintained server

The measured pair behind the choice of Tollgate's HTTP server (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

import httptools
import uvloop

_OK = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"


class _AllowAll(asyncio.Protocol):
    def __init__(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._parser.feed_data(data)

    def on_message_complete(self) -> None:
        self._transport.write(_OK)


async def _protocol(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_AllowAll, "127.0.0.1", port)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    server.close()


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})


def main() -> None:
    port, kind = int(sys.argv[1]), sys.argv[2]
    if kind == "uvicorn":
        import uvicorn  # noqa: PLC0415

        uvicorn.run(
            _app,
            host="127.0.0.1",
            port=port,
            loop="uvloop",
            http="httptools",
            log_level="warning",
            access_log=False,
            lifespan="off",
        )
    else:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(_protocol(port))


if __name__ == "__main__":
    main()
