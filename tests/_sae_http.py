"""A loopback HTTP file server for the download tests: Range support, request log, injected faults."""

from __future__ import annotations

import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


class FileServer:
    """Serves ``files[path] = bytes`` on 127.0.0.1 (port chosen by the OS) and logs ``(path, Range)``.

    Faults: ``cut[path] = n`` sends only the first n body bytes of the next response (after a full
    ``Content-Length``) and drops the connection; ``ignore_range`` answers ranged requests with 200;
    ``fail_status[path] = code`` answers with that HTTP status; ``no_length`` omits ``Content-Length``
    (the body then ends when the connection closes, as HTTP/1.0 allows).
    """

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.cut: dict[str, int] = {}
        self.fail_status: dict[str, int] = {}
        self.ignore_range = False
        self.no_length = False
        self._server = _QuietServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True)

    @property
    def base(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return self.base + path

    def start(self) -> "FileServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):  # clients that hang up early are expected here
        pass


def _handler(owner: FileServer):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output clean
            pass

        def do_GET(self):
            rng = self.headers.get("Range")
            owner.requests.append((self.path, rng))
            if self.path in owner.fail_status:
                self.send_error(owner.fail_status[self.path])
                return
            data = owner.files.get(self.path)
            if data is None:
                self.send_error(404)
                return
            start = 0
            match = re.fullmatch(r"bytes=(\d+)-", rng or "")
            if match and not owner.ignore_range:
                start = int(match.group(1))
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            if not owner.no_length:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            cut = owner.cut.pop(self.path, None)
            if cut is not None:
                self.wfile.write(body[:cut])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

    return Handler


@pytest.fixture
def file_server():
    server = FileServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def online(monkeypatch):
    """Downloads allowed (the test command sets HF_HUB_OFFLINE=1); only loopback is ever contacted."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("SAESTEER_OFFLINE", raising=False)
    for name in ("NO_PROXY", "no_proxy"):  # never route loopback through a configured proxy
        monkeypatch.setenv(name, "127.0.0.1,localhost")
