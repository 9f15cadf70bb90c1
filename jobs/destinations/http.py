"""HTTP calls with the retry rules every destination shares.

5xx answers, timeouts and dropped connections are retried with exponential back-off and
jitter; a 429 waits ``Retry-After`` when the server gives it, else backs off the same way;
other 4xx answers are final and returned to the caller, who records the rows as failed. A
request still failing after the last attempt raises :class:`DeliveryFailed`, which stops the
sync before its state advances. Every attempt can pass through a rate limiter's slot.
"""

from __future__ import annotations

import contextlib
import http.client
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

from jobs.runtime.errors import LakehouseError
from jobs.runtime.settings import RetrySettings


class DeliveryFailed(LakehouseError):
    """The endpoint kept failing or refused the credentials; the batch was not acknowledged, the
    sync state did not advance, and a rerun sends it again. Exit code 1."""

    exit_code = 1


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    attempts: int


def _retry_after(error: urllib.error.HTTPError) -> float | None:
    value = error.headers.get("Retry-After") if error.headers else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def request(
    method: str, url: str, body: bytes | None, headers: dict[str, str], retry: RetrySettings,
    sleep: Callable[[float], None] = time.sleep, rng: random.Random | None = None,
    throttle: Callable[[], AbstractContextManager[object]] | None = None,
    final: Callable[[int, bytes], bool] | None = None,
) -> Response:
    """One HTTP call, retried by the shared rules; 2xx and final 4xx answers are returned, and so are
    5xx answers that ``final`` recognises as the server refusing the request (a SOAP client fault)."""
    rng = rng or random.Random()
    for attempt in range(1, retry.max_attempts + 1):
        backoff = retry.backoff_seconds * (2 ** (attempt - 1)) * (0.5 + rng.random())
        call = urllib.request.Request(url, data=body, headers=headers, method=method)
        try:
            with (throttle() if throttle else contextlib.nullcontext(),
                  urllib.request.urlopen(call, timeout=retry.timeout_seconds) as answer):
                return Response(answer.status, answer.read(), attempt)
        except urllib.error.HTTPError as error:
            if error.code == 429:
                wait = _retry_after(error)
                reason = "429 Too Many Requests"
                backoff = backoff if wait is None else wait
            elif error.code >= 500:
                answer_body = error.read()
                if final and final(error.code, answer_body):
                    return Response(error.code, answer_body, attempt)
                reason = f"HTTP {error.code}"
            else:
                return Response(error.code, error.read(), attempt)
        except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as error:
            reason = type(error).__name__
        if attempt < retry.max_attempts:
            sleep(backoff)
    raise DeliveryFailed(f"{method} {url.split('?')[0]} failed {retry.max_attempts} times (last: {reason})")


def post(
    url: str, body: bytes, headers: dict[str, str], retry: RetrySettings,
    sleep: Callable[[float], None] = time.sleep, rng: random.Random | None = None,
) -> Response:
    return request("POST", url, body, headers, retry, sleep, rng)
