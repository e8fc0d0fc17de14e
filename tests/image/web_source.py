"""A real HTTP server on loopback for the web-download tests to import from."""

from __future__ import annotations

import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Source:
    """An HTTP server whose paths answer what the test put in ``routes``:
    ``(status, headers, body)``; a body shorter than a Content-Length in the headers is
    a body cut off in the middle. A ``slow`` route sends 64 KiB every 0.2 s for a minute
    (no Content-Length), and notes in ``cut`` when its client hangs up. ``seen`` lists
    every path asked for."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self.seen: list[str] = []
        self.cut = threading.Event()
        routes, seen, cut = self.routes, self.seen, self.cut

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                seen.append(self.path)
                if self.path == "/slow":
                    self.send_response(200)
                    self.end_headers()
                    deadline = time.monotonic() + 60
                    try:
                        while time.monotonic() < deadline:
                            self.wfile.write(os.urandom(64 * 1024))
                            self.wfile.flush()
                            time.sleep(0.2)
                    except OSError:
                        cut.set()
                    return
                status, headers, body = routes.get(self.path, (404, {}, b"no such image"))
                self.send_response(status)
                headers = {"Content-Length": str(len(body)), **headers}
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str, port: int | None = None) -> str:
        return f"http://127.0.0.1:{port or self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
