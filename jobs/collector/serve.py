"""``lakehouse serve``: the collector app under uvicorn (uvloop and httptools when installed) —
in the foreground, or on a thread of a process that has other work (the live demo, tests)."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from jobs.runtime.errors import ConfigError, InputError
from jobs.runtime.settings import Settings


def _uvicorn() -> Any:
    try:
        import uvicorn
    except ImportError:
        raise ConfigError("the collector needs its extra: pip install 'email-lakehouse[collector]'") from None
    return uvicorn


def serve(settings: Settings, host: str | None = None, port: int | None = None) -> None:
    uvicorn = _uvicorn()
    from jobs.collector.app import create_app

    if port is not None:
        settings = settings.model_copy(update={"collector": settings.collector.model_copy(update={"port": port})})
    config = settings.collector
    app = create_app(settings)  # a credential missing from the environment fails here, before binding
    uvicorn.run(app, host=host or config.host, port=config.port, log_level="warning", access_log=False,
                proxy_headers=False, server_header=False, timeout_graceful_shutdown=10)


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Running:
    """A collector on a thread: its URL, and :meth:`stop` (graceful: open files flushed and rolled)."""

    url: str
    server: Any
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(20)


def serve_in_thread(settings: Settings, port: int, timeout: float = 20) -> Running:
    """The collector on ``127.0.0.1:port``, on a thread of this process (uvicorn installs no
    signal handlers off the main thread: the process keeps its own), once it accepts requests."""
    uvicorn = _uvicorn()
    from jobs.collector.app import create_app

    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                           log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, name="collector", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise InputError(f"the collector could not start on 127.0.0.1:{port} "
                             "(port taken? --set collector.port=...)")
        time.sleep(0.01)
    return Running(f"http://127.0.0.1:{port}", server, thread)
