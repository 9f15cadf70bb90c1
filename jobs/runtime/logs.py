"""Logging for operators: the ``jobs`` loggers to stderr, as text or one JSON object a line.

``lakehouse -v`` shows INFO (a start and an end line per stage, with the run id, rows and
seconds), ``-vv`` DEBUG, ``-q`` only errors; the default shows warnings. ``--log-format json``
writes each record as a JSON object with its fields (``run_id``, ``stage``, ``status``,
``rows_in``, ``rows_out``, ``rejected``, ``seconds``, …) for a log pipeline. Every message goes
through :func:`jobs.runtime.pii.mask`: no email address or registered secret reaches a log.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from jobs.runtime.pii import mask

LOGGER = "jobs"
FIELDS = ("run_id", "job", "stage", "status", "rows_in", "rows_out", "rejected", "seconds", "spark_jobs",
          "commits", "error")
_handler: logging.Handler | None = None


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in FIELDS if hasattr(record, name)}


def _time(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        return mask(f"{_time(record)} {record.levelname} {record.name}: {record.getMessage()}"
                    + (f" ({extra})" if extra else ""))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        document = {"ts": _time(record), "level": record.levelname, "logger": record.name,
                    "message": record.getMessage(), **_fields(record)}
        return mask(json.dumps(document, sort_keys=True, default=str))


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record comes (a test runner swaps it)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def level(verbose: int, quiet: bool) -> int:
    if quiet:
        return logging.ERROR
    return {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)


def configure(verbose: int = 0, quiet: bool = False, fmt: str = "text") -> None:
    """Send the ``jobs`` loggers to stderr at the chosen level and format (again on every call:
    the last one wins)."""
    global _handler
    logger = logging.getLogger(LOGGER)
    if _handler is not None:
        logger.removeHandler(_handler)
    _handler = _Stderr()
    _handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logger.addHandler(_handler)
    logger.setLevel(level(verbose, quiet))
