"""A client-side rate limiter: at most ``count`` calls per ``seconds``, for every limit given.

Each key (an endpoint) keeps the times its recent calls *finished*. A call waits until every
window has room, and its slot is stamped when the call returns, so the server, which sees each
request arrive after it was sent and before it was answered, never counts more than the limit
in any window of that length.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class Limit:
    count: int
    seconds: float

    @classmethod
    def parse(cls, text: str) -> Limit:
        """``"10/s"``, ``"150/m"``, ``"150/d"`` as in Klaviyo's ``x-klaviyo-ratelimit``."""
        count, unit = text.split("/")
        return cls(int(count), {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}[unit])


class RateLimiter:
    def __init__(self, limits: dict[str, tuple[Limit, ...]], clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.limits = limits
        self.clock, self.sleep = clock, sleep
        self._done: dict[str, deque[float]] = {key: deque() for key in limits}
        self._lock = threading.Lock()

    def _wait_needed(self, key: str) -> float:
        now, done, wait = self.clock(), self._done[key], 0.0
        longest = max(limit.seconds for limit in self.limits[key])
        while done and done[0] <= now - longest:
            done.popleft()
        for limit in self.limits[key]:
            recent = [t for t in done if t > now - limit.seconds]
            if len(recent) >= limit.count:
                wait = max(wait, recent[-limit.count] + limit.seconds - now)
        return wait

    @contextmanager
    def slot(self, key: str) -> Iterator[None]:
        with self._lock:
            while (wait := self._wait_needed(key)) > 0:
                self.sleep(wait)
            try:
                yield
            finally:
                self._done[key].append(self.clock())
