"""An S3-compatible server on 127.0.0.1 for tests (moto's server mode), and an HTTP proxy in front
of it that counts the bytes the server sends for each object and can answer `503 SlowDown` or cut
a download midway, as a busy or flaky object store does. The proxy measures from outside the
readers, so no reader can count its own downloads wrong."""

from __future__ import annotations

import contextlib
import http.client
import http.server
import os
import threading
from collections import Counter
from collections.abc import Iterator


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """A moto S3 server on loopback, with the AWS_* environment pointing at it inside the block
    (inherited by the processes started there); yields its "host:port"."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    settings = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        yield f"{host}:{port}"
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.stop()


SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


class S3Proxy:
    """Forward every request to `upstream` ("host:port"); `sent[path]` counts the body bytes
    passed on for GETs. With `slow_down_every=k`, every k-th GET of a matching path gets a 503
    SlowDown; with `cut_every=k`, every k-th one stops after half its body; each object is
    faulted at most once."""

    def __init__(self, upstream: str, *, match: str = "shard-", slow_down_every: int = 0, cut_every: int = 0) -> None:
        self.upstream, self.match = upstream, match
        self.slow_down_every, self.cut_every = slow_down_every, cut_every
        self.sent: Counter[str] = Counter()
        self.gets = 0
        self.slowed = self.cut = 0
        self._faulted: set[str] = set()
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                proxy._forward(self)

            do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> S3Proxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def shard_bytes(self) -> int:
        """Body bytes sent for objects whose path matches (`match`)."""
        return sum(count for path, count in self.sent.items() if self.match in path)

    def _fault(self, request: http.server.BaseHTTPRequestHandler) -> str | None:
        if request.command != "GET" or self.match not in request.path:
            return None
        path = request.path.split("?")[0]
        with self._lock:
            self.gets += 1
            if path in self._faulted:  # once an object: a reader's retry then succeeds, so a test is exact
                return None
            if self.slow_down_every and self.gets % self.slow_down_every == 0:
                self.slowed += 1
                self._faulted.add(path)
                return "slow"
            if self.cut_every and self.gets % self.cut_every == 0:
                self.cut += 1
                self._faulted.add(path)
                return "cut"
        return None

    def _forward(self, request: http.server.BaseHTTPRequestHandler) -> None:
        fault = self._fault(request)
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else None
        if fault == "slow":
            request.send_response(503)
            request.send_header("Content-Type", "application/xml")
            request.send_header("Content-Length", str(len(SLOW_DOWN)))
            request.end_headers()
            request.wfile.write(SLOW_DOWN)
            return
        connection = http.client.HTTPConnection(self.upstream, timeout=60)
        try:
            headers = {k: v for k, v in request.headers.items() if k.lower() not in ("connection", "keep-alive")}
            connection.request(request.command, request.path, body=body, headers=headers)
            response = connection.getresponse()
            payload = response.read()
        finally:
            connection.close()
        request.send_response(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() not in (
                "connection",
                "transfer-encoding",
                "keep-alive",
                "content-length",
                "server",
                "date",
            ):
                request.send_header(name, value)
        # A HEAD's length is the object's (its size), not that of the empty body.
        length_header = response.getheader("Content-Length") if request.command == "HEAD" else None
        request.send_header("Content-Length", length_header or str(len(payload)))
        request.end_headers()
        if request.command == "HEAD":
            return
        if fault == "cut":
            half = payload[: len(payload) // 2]
            request.wfile.write(half)
            request.wfile.flush()
            request.close_connection = True
            request.connection.shutdown(2)
            with self._lock:
                self.sent[request.path.split("?")[0]] += len(half)
            return
        request.wfile.write(payload)
        if request.command == "GET":
            with self._lock:
                self.sent[request.path.split("?")[0]] += len(payload)
