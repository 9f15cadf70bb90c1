"""A loopback HTTP server that can fail on purpose: the base of the vendor fakes.

Subclasses answer requests (``dispatch``) and may refuse them before any fault is drawn
(``admit``: auth, rate limits). At ``fault_rate`` a request instead gets one of ``faults``:
``429`` (with ``Retry-After``), ``429-bare`` (without), ``500``, ``slow`` (answered after
``slow_seconds``, longer than the client waits), ``drop`` (connection closed unanswered) and
``drop-after`` (the request is applied, then the connection closed unanswered).
"""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FAULTS = ("429", "429-bare", "500", "slow", "drop", "drop-after")


@dataclass
class Call:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    arrived: float = field(default_factory=time.monotonic)

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Answer:
    status: int
    payload: Any = None
    headers: dict[str, str] = field(default_factory=dict)


class FaultyServer:
    content_type = "application/json"

    def __init__(self, fault_rate: float = 0.0, faults: tuple[str, ...] = FAULTS, seed: int = 7,
                 slow_seconds: float = 1.5, retry_after: str = "1"):
        self.fault_rate, self.faults, self.slow_seconds, self.retry_after = fault_rate, faults, slow_seconds, retry_after
        self.random = random.Random(seed)
        self.lock = threading.RLock()
        self.calls: list[Call] = []
        self.injected: list[str] = []
        self.violations: list[str] = []
        self._server: ThreadingHTTPServer | None = None

    # -- to override -------------------------------------------------------------------------
    def admit(self, call: Call) -> Answer | None:
        """A refusal that comes before any fault (bad credentials, rate limit), or None."""
        return None

    def dispatch(self, call: Call) -> Answer:
        raise NotImplementedError

    # -- running -----------------------------------------------------------------------------
    def violation(self, message: str) -> None:
        with self.lock:
            self.violations.append(message)

    def _fault(self) -> str | None:
        with self.lock:
            if self.fault_rate and self.random.random() < self.fault_rate:
                kind = self.random.choice(self.faults)
                self.injected.append(kind)
                return kind
        return None

    def handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        split = urllib.parse.urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        call = Call(method, split.path, dict(urllib.parse.parse_qsl(split.query)),
                    {k.lower(): v for k, v in handler.headers.items()}, handler.rfile.read(length))
        with self.lock:
            self.calls.append(call)
        answer = self.admit(call)
        fault = None if answer else self._fault()
        if fault == "drop":
            return self._drop(handler)
        if fault == "500":
            answer = Answer(500, {"errors": [{"id": "x", "code": "error", "title": "Server error", "detail": "boom"}]})
        elif fault in ("429", "429-bare"):
            answer = Answer(429, {"errors": [{"id": "x", "code": "throttled", "title": "Throttled",
                                              "detail": "Request was throttled."}]},
                            {"Retry-After": self.retry_after} if fault == "429" else {})
        if answer is None:
            with self.lock:
                answer = self.dispatch(call)
        if fault == "slow":
            time.sleep(self.slow_seconds)
        if fault == "drop-after":
            return self._drop(handler)
        body = (b"" if answer.payload is None else answer.payload if isinstance(answer.payload, bytes)
                else json.dumps(answer.payload).encode())
        try:
            handler.send_response(answer.status)
            for name, value in answer.headers.items():
                handler.send_header(name, value)
            if body and "Content-Type" not in answer.headers:
                handler.send_header("Content-Type", self.content_type)
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up waiting (a slow answer)

    @staticmethod
    def _drop(handler: BaseHTTPRequestHandler) -> None:
        handler.close_connection = True
        handler.connection.shutdown(2)

    def start(self) -> str:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server.handle(self, "GET")

            def do_POST(self) -> None:
                server.handle(self, "POST")

            def do_PUT(self) -> None:
                server.handle(self, "PUT")

            def do_DELETE(self) -> None:
                server.handle(self, "DELETE")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self._server.server_port}"

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> FaultyServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
