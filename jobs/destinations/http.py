"""HTTP calls with the rules every destination shares.

- 5xx answers, timeouts and dropped connections are retried with exponential back-off and
  jitter; a 429 or 503 waits ``Retry-After`` (seconds or an HTTP date) when the server gives one,
  up to ``retry.max_retry_after_seconds`` — asked to wait longer, the request fails now and the
  next run sends the batch again. All attempts of one request, waits included, stay within
  ``retry.deadline_seconds``; an answer body larger than ``retry.max_response_bytes`` is a failure.
- Redirects are never followed: credentials go to the configured origin only, and a 3xx answer
  is returned like a final 4xx (the batch's rows are recorded refused and sent again next run).
- Other 4xx answers are final and returned to the caller, who records the rows as refused —
  except refused credentials (401/403, after the caller's one token refresh), which stop the sync:
  :func:`check_credentials`.

A request still failing after the last attempt raises :class:`DeliveryFailed`, which stops the
sync before its state advances. Every attempt can pass through a rate limiter's slot.
"""

from __future__ import annotations

import contextlib
import email.utils
import http.client
import math
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from jobs.runtime.errors import LakehouseError
from jobs.runtime.settings import RetrySettings

CREDENTIALS_REFUSED = (401, 403)
WAIT_STATUSES = (429, 503)


class DeliveryFailed(LakehouseError):
    """The endpoint kept failing or refused the credentials; the batch was not acknowledged, the
    sync state did not advance, and a rerun sends it again. Exit code 1."""

    exit_code = 1


class CredentialsRefused(DeliveryFailed):
    """The destination refused the configured credentials: nothing more is sent this run."""


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    attempts: int

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Every 3xx comes back as an HTTPError: a redirect is never followed with our headers."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` value asks for (delay-seconds or an HTTP date), at least 0;
    ``inf`` for a value too large to be a real delay; None when absent or unreadable."""
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # an HTTP date is GMT
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds):
        return None
    return max(0.0, seconds)


def _read(stream: Any, limit: int) -> bytes:
    body = stream.read(limit + 1) if stream is not None else b""
    if len(body) > limit:
        raise DeliveryFailed(f"the answer is larger than retry.max_response_bytes ({limit} bytes)")
    return body


def request(
    method: str, url: str, body: bytes | None, headers: Mapping[str, str], retry: RetrySettings,
    sleep: Callable[[float], None] = time.sleep, rng: random.Random | None = None,
    throttle: Callable[[], AbstractContextManager[object]] | None = None,
    final: Callable[[int, bytes], bool] | None = None, clock: Callable[[], float] = time.monotonic,
) -> Response:
    """One HTTP call, retried by the shared rules; 2xx, 3xx and final 4xx answers are returned, and so
    are 5xx answers that ``final`` recognises as the server refusing the request (a SOAP client fault)."""
    rng = rng or random.Random()
    where = f"{method} {url.split('?')[0]}"
    deadline = clock() + retry.deadline_seconds
    for attempt in range(1, retry.max_attempts + 1):
        backoff = retry.backoff_seconds * (2 ** (attempt - 1)) * (0.5 + rng.random())
        call = urllib.request.Request(url, data=body, headers=dict(headers), method=method)
        timeout = max(0.001, min(retry.timeout_seconds, deadline - clock()))
        try:
            with (throttle() if throttle else contextlib.nullcontext(),
                  _OPENER.open(call, timeout=timeout) as answer):
                return Response(answer.status, _read(answer, retry.max_response_bytes), attempt)
        except urllib.error.HTTPError as error:
            answer_body = _read(error, retry.max_response_bytes)
            if error.code in WAIT_STATUSES:
                wait = retry_after(error.headers.get("Retry-After") if error.headers else None)
                if wait is not None and wait > retry.max_retry_after_seconds:
                    raise DeliveryFailed(
                        f"{where} answered {error.code} asking to wait {_seconds(wait)}, longer than "
                        f"retry.max_retry_after_seconds ({retry.max_retry_after_seconds:g} s); "
                        "the next run sends it again") from None
                backoff = backoff if wait is None else wait
                reason = f"HTTP {error.code}"
            elif error.code >= 500:
                if final and final(error.code, answer_body):
                    return Response(error.code, answer_body, attempt)
                reason = f"HTTP {error.code}"
            else:  # 3xx (not followed) and 4xx: final
                return Response(error.code, answer_body, attempt)
        except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as error:
            reason = type(error).__name__
        if attempt < retry.max_attempts:
            if clock() + backoff > deadline:
                raise DeliveryFailed(f"{where} still failing at retry.deadline_seconds "
                                     f"({retry.deadline_seconds:g} s; last: {reason})")
            sleep(backoff)
    raise DeliveryFailed(f"{where} failed {retry.max_attempts} times (last: {reason})")


def _seconds(wait: float) -> str:
    return "forever" if math.isinf(wait) else f"{wait:.0f} s"


def check_credentials(destination: str, answer: Response) -> Response:
    """``answer``, unless it says the credentials were refused: then the sync stops here."""
    if answer.status in CREDENTIALS_REFUSED:
        raise CredentialsRefused(
            f"destination {destination}: credentials refused (HTTP {answer.status}); nothing more was sent "
            "and its sync state did not advance: check the configured key")
    return answer


def post(
    url: str, body: bytes, headers: Mapping[str, str], retry: RetrySettings,
    sleep: Callable[[float], None] = time.sleep, rng: random.Random | None = None,
) -> Response:
    return request("POST", url, body, headers, retry, sleep, rng)
