"""A loopback HTTP/1.1 proxy that loses answers on purpose: the first ``drop`` requests reach the
server and are applied, but their answer is thrown away and the client's connection closed — what
a client sees when a load balancer or the network fails after the server did its work."""

from __future__ import annotations

import socket
import threading


def _read_message(sock: socket.socket, buffer: bytes) -> tuple[bytes, bytes] | None:
    """One HTTP message (headers and a Content-Length body) from ``sock``; the rest stays buffered."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buffer += chunk
    head, _, rest = buffer.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        rest += chunk
    return head + b"\r\n\r\n" + rest[:length], rest[length:]


class DroppingProxy:
    def __init__(self, upstream_port: int, drop: int = 1):
        self.upstream_port, self.drop = upstream_port, drop
        self.dropped = 0
        self.forwarded = 0
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with client, socket.create_connection(("127.0.0.1", self.upstream_port)) as upstream:
            pending = b""
            while True:
                request = _read_message(client, pending)
                if request is None:
                    return
                message, pending = request
                upstream.sendall(message)
                response = _read_message(upstream, b"")
                if response is None:
                    return
                with self.lock:
                    lose = self.dropped < self.drop
                    self.dropped += lose
                    self.forwarded += 1
                if lose:
                    return  # the server applied it; the client never hears
                client.sendall(response[0])

    def close(self) -> None:
        self.listener.close()
