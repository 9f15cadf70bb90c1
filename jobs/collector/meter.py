"""Counters, a latency histogram (Prometheus text format) and per-key rate limits."""

from __future__ import annotations

import math
import time
from collections import defaultdict

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self) -> None:
        self.accepted: dict[str, int] = defaultdict(int)  # by key name
        self.refused: dict[str, int] = defaultdict(int)  # by reason
        self.requests: dict[tuple[str, int], int] = defaultdict(int)  # by route and status
        self.buckets = [0] * len(BUCKETS)
        self.count = 0
        self.total = 0.0

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.requests[(route, status)] += 1
        self.count += 1
        self.total += seconds
        for index, bound in enumerate(BUCKETS):
            if seconds <= bound:
                self.buckets[index] += 1

    def text(self) -> str:
        lines = ["# HELP collector_events_accepted_total Events written to a landing file, by key.",
                 "# TYPE collector_events_accepted_total counter"]
        lines += [f'collector_events_accepted_total{{key="{k}"}} {v}' for k, v in sorted(self.accepted.items())]
        lines += ["# HELP collector_events_refused_total Events or requests refused, by reason.",
                  "# TYPE collector_events_refused_total counter"]
        lines += [f'collector_events_refused_total{{reason="{k}"}} {v}' for k, v in sorted(self.refused.items())]
        lines += ["# HELP collector_requests_total Requests answered, by route and status.",
                  "# TYPE collector_requests_total counter"]
        lines += [f'collector_requests_total{{route="{r}",status="{s}"}} {v}'
                  for (r, s), v in sorted(self.requests.items())]
        lines += ["# HELP collector_request_seconds Time to answer a request (the fsync included).",
                  "# TYPE collector_request_seconds histogram"]
        lines += [f'collector_request_seconds_bucket{{le="{bound}"}} {n}' for bound, n in zip(BUCKETS, self.buckets,
                                                                                               strict=True)]
        lines += [f'collector_request_seconds_bucket{{le="+Inf"}} {self.count}',
                  f"collector_request_seconds_sum {self.total:.6f}", f"collector_request_seconds_count {self.count}"]
        return "\n".join(lines) + "\n"


class RateLimiter:
    """A token bucket per key: ``rate`` events a second sustained, ``burst`` at once."""

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = rate, burst
        self.buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str, cost: int, now: float | None = None) -> float:
        """0 if ``cost`` events may pass now (and takes them), else the seconds to wait."""
        now = time.monotonic() if now is None else now
        tokens, since = self.buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - since) * self.rate)
        need = min(cost, self.burst)  # a batch larger than the burst passes on a full bucket, into debt
        if need <= tokens:
            self.buckets[key] = (tokens - cost, now)
            return 0.0
        self.buckets[key] = (tokens, now)
        return max(1.0, math.ceil((need - tokens) / self.rate))
