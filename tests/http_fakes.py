"""A local HTTP server that records what it is sent, for tests that stand in for somebody else's HTTP API.

`RecordingServer` listens on 127.0.0.1 (a free port) in a daemon thread, records every request as a
`Request` (method, path, headers, body, receive time) and answers each one with, in order of preference:
the next reply queued with `answer(...)`, else what its handler returns for the request, else 200 "ok".

A reply is one of:
- `(status, headers, body)`: body as bytes, text, or a dict/list sent as JSON (with a JSON Content-Type
  unless the headers name one); Content-Length is always set by the server;
- `"hang"`: no answer; the connection is held until `release` is set (or `hang_timeout`), then dropped;
- `"garbage"`: bytes that are not HTTP, then the connection is closed.

Handlers run one at a time, under `lock`, and must not block: return "hang" to hold a request instead.
The server speaks HTTP/1.1, so clients keep their connections open between requests.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Reply = tuple[int, dict[str, str], Any] | str
DEFAULT_REPLY: Reply = (200, {}, b"ok")
NOT_HTTP = b"this is not HTTP at all\r\n\r\n"


@dataclass
class Request:
    method: str  # GET, POST, ...
    path: str  # with the query string, as sent
    headers: dict[str, str]
    body: bytes
    received_at: float  # time.monotonic() when the server had read the request
    client: tuple[str, int]  # the client's (address, port): one per connection

    def json(self) -> Any:
        return json.loads(self.body)


class RecordingServer:
    """Records each request and answers from a queue, then a handler, then 200 "ok" (see the module doc)."""

    def __init__(self, handler: Callable[[Request], Reply | None] | None = None, *, hang_timeout: float = 60.0):
        self.handler = handler
        self.hang_timeout = hang_timeout
        self.requests: list[Request] = []
        self.replies: deque[Reply] = deque()
        self.release = threading.Event()  # lets "hang" requests go
        self.lock = threading.Lock()
        self._arrived = threading.Condition(self.lock)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def url(self) -> str:
        """http://127.0.0.1:<port>, without a trailing slash."""
        return f"http://127.0.0.1:{self.port}"

    def answer(self, *replies: Reply) -> None:
        """Queue replies for the next requests, in order, ahead of the handler."""
        with self.lock:
            self.replies.extend(replies)

    def wait_for(self, count: int, timeout: float) -> bool:
        """Wait until at least `count` requests have arrived; False if the timeout came first."""
        with self._arrived:
            return self._arrived.wait_for(lambda: len(self.requests) >= count, timeout)

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()

    def __enter__(self) -> RecordingServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _record(self, request: Request) -> Reply:
        with self._arrived:
            self.requests.append(request)
            reply = self.replies.popleft() if self.replies else None
            if reply is None and self.handler is not None:
                reply = self.handler(request)
            self._arrived.notify_all()
        return DEFAULT_REPLY if reply is None else reply

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                reply = server._record(Request(self.command, self.path, dict(self.headers), body, time.monotonic(),
                                               self.client_address))
                if reply == "hang":
                    server.release.wait(server.hang_timeout)
                    self.close_connection = True
                    return
                if reply == "garbage":
                    self.wfile.write(NOT_HTTP)
                    self.close_connection = True
                    return
                status, headers, payload = reply
                if isinstance(payload, dict | list):
                    payload = json.dumps(payload).encode()
                    if not any(k.lower() == "content-type" for k in headers):
                        headers = {"Content-Type": "application/json; charset=utf-8", **headers}
                elif isinstance(payload, str):
                    payload = payload.encode()
                self.send_response(status)
                for key, value in headers.items():
                    if key.lower() != "content-length":
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _any

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


def closed_port() -> int:
    """A loopback port nothing listens on: connecting is refused, as when the other side is down."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
