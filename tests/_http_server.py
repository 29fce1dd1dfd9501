"""A small real HTTP server on 127.0.0.1 for download tests.

It serves in-memory files (GET and POST), answers ``Range`` requests with 206, records every request, and can
misbehave on purpose: drop the connection after N bytes (once), announce more bytes than it sends, wait before
answering, or return an error status.

    with FileServer() as server:
        server.add("/x.zip", data, drop_after=1000)
        url = server.url("/x.zip")
"""
from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Served:
    data: bytes
    status: int = 200  # anything >= 400 is returned as an error with a JSON body
    error_message: str = "not available"
    drop_after: int | None = None  # close the connection after this many body bytes, once
    extra_length: int = 0  # announce this many bytes more than the file has (every time)
    delay_s: float = 0.0  # wait before answering
    ranges: bool = True  # honour Range requests
    content_type: str = "application/zip"


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes = b""

    def json(self):
        return json.loads(self.body)


@dataclass
class FileServer:
    files: dict[str, Served] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    def add(self, path: str, data: bytes, **behaviour) -> Served:
        served = Served(data, **behaviour)
        self.files[path] = served
        return served

    def url(self, path: str = "") -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}{path}"

    def requests_for(self, path: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def start(self) -> FileServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # one request per connection: a dropped body is a closed socket

            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:
                self._serve(b"")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self._serve(self.rfile.read(length))

            def _serve(self, body: bytes) -> None:
                with server._lock:
                    server.requests.append(Request(self.command, self.path, dict(self.headers.items()), body))
                    served = server.files.get(self.path)
                if served is None:
                    return self._error(404, "no such file")
                if served.delay_s:
                    time.sleep(served.delay_s)
                if served.status >= 400:
                    return self._error(served.status, served.error_message)
                size = len(served.data) + served.extra_length
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", "")) if served.ranges else None
                if match:
                    start = int(match.group(1))
                    if start >= size:
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{size}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
                else:
                    self.send_response(200)
                self.send_header("Content-Type", served.content_type)
                self.send_header("Content-Length", str(size - start))
                self.send_header("Accept-Ranges", "bytes" if served.ranges else "none")
                self.end_headers()
                payload = served.data[start:]
                with server._lock:
                    cut, served.drop_after = served.drop_after, None
                if cut is not None:
                    payload = payload[:cut]
                self.wfile.write(payload)
                self.wfile.flush()

            def _error(self, status: int, message: str) -> None:
                payload = json.dumps({"detail": message}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> FileServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
