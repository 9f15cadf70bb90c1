"""What the collector accepts, validated with pydantic, and the line it writes for it.

The line is the ``collector`` source's record (``conf/sources/collector.yaml``): its fields are
the bronze event columns (:data:`transforms.bronze.EVENT_COLUMNS`) plus ``properties``, so the
bronze mapping takes each one 1:1; what the server adds about the request (``_received_at``,
``_client_ip``, ``_key``) lands in ``_rescued_data``. Unknown fields a client sends are kept
there too: the collector refuses what is wrong, never what is new.
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from transforms.bronze import EVENT_COLUMNS

MAX_TEXT = 512
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)


def uuid7(now_ms: int | None = None) -> str:
    """A time-ordered UUID (RFC 9562 version 7): 48 bits of Unix milliseconds, then random bits."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    value = (ms & ((1 << 48) - 1)) << 80 | int.from_bytes(os.urandom(10), "big")
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # variant
    return str(uuid.UUID(int=value))


def parse_timestamp(value: str | int | float) -> datetime:
    """ISO 8601 (``Z``, an offset, or a trailing `` UTC``; none means UTC) or epoch milliseconds —
    the forms silver understands."""
    if isinstance(value, bool):
        raise ValueError("expected an ISO 8601 timestamp or epoch milliseconds")
    if isinstance(value, int | float):
        parsed = datetime.fromtimestamp(value / 1000, UTC)
    else:
        text = value.strip()
        if text.isdigit():
            return parse_timestamp(int(text))
        if text.upper().endswith(" UTC"):
            text = text[:-4]
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise ValueError("expected an ISO 8601 timestamp (2026-11-30T12:00:00Z) or epoch milliseconds") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
    if parsed < EARLIEST:
        raise ValueError("is before 2000-01-01")
    return parsed


Text = str | None


def _readable(value: str | int | float) -> str | int | float:
    parse_timestamp(value)
    return value


class Landed(BaseModel):
    """What the collector writes a line for: the client's fields (unknown ones kept), an id, and
    what the server knows of the request."""

    model_config = ConfigDict(extra="allow", str_strip_whitespace=True)
    sink: ClassVar[str]

    def line(self, received_at: str, user_agent: str | None, client_ip: str | None, key: str) -> dict[str, Any]:
        record = self.model_dump(exclude_none=True)
        record.setdefault("event_id", uuid7())
        record.update(self._from_request(user_agent, client_ip), _received_at=received_at, _key=key)
        return record

    def _from_request(self, user_agent: str | None, client_ip: str | None) -> dict[str, str]:
        return {}


class Event(Landed):
    """One event as a client sends it."""

    sink: ClassVar[str] = "events"

    event_id: Text = Field(default=None, max_length=128, description="Client's id (default: a UUIDv7); "
                           "a repeat of an id is the same event.")
    customer_id: Text = Field(default=None, max_length=MAX_TEXT)
    anonymous_id: Text = Field(default=None, max_length=MAX_TEXT)
    session_id: Text = Field(default=None, max_length=MAX_TEXT)
    event_type: str = Field(min_length=1, max_length=64, description="page_view, add_to_cart, … or a synonym.")
    timestamp: str | int | float = Field(description="ISO 8601 or epoch milliseconds.")
    product_id: Text = Field(default=None, max_length=MAX_TEXT)
    url: Text = Field(default=None, max_length=4096)
    user_agent: Text = Field(default=None, max_length=1024, description="The shopper's browser; from a browser "
                             "(collector.js, the pixel) the request's User-Agent when absent.")
    properties: dict[str, Any] = Field(default_factory=dict)

    _readable_time = field_validator("timestamp")(classmethod(lambda cls, value: _readable(value)))

    @model_validator(mode="after")
    def _someone(self) -> Event:
        if not (self.customer_id or self.anonymous_id):
            raise ValueError("needs customer_id or anonymous_id")
        return self

    def _from_request(self, user_agent: str | None, client_ip: str | None) -> dict[str, str]:
        extra = {"user_agent": user_agent} if user_agent and not self.user_agent else {}
        return {**extra, **({"_client_ip": client_ip} if client_ip else {})}


_MODEL_COLUMNS = tuple(name for name in Event.model_fields if name != "properties")
if _MODEL_COLUMNS != EVENT_COLUMNS:  # the line must map 1:1 onto bronze
    raise ImportError(f"collector Event fields {_MODEL_COLUMNS} drifted from bronze's {EVENT_COLUMNS}")


class ProfileCall(dict):
    """A payload for :class:`Profile` rather than :class:`Event` (a Segment ``identify``)."""


class Profile(Landed):
    """A profile update (partial: only the fields it carries change), as the ``collector_profiles``
    source lands it in ``bronze.crm``: the CRM columns, ``updated_at`` when it happened."""

    sink: ClassVar[str] = "profiles"

    event_id: Text = Field(default=None, max_length=128, description="The call's id (Segment messageId).")
    customer_id: str = Field(min_length=1, max_length=MAX_TEXT, description="Whose profile (Segment userId).")
    email: Text = Field(default=None, max_length=320)
    first_name: Text = Field(default=None, max_length=MAX_TEXT)
    last_name: Text = Field(default=None, max_length=MAX_TEXT)
    birth_date: Text = Field(default=None, max_length=32)
    city: Text = Field(default=None, max_length=MAX_TEXT)
    country: Text = Field(default=None, max_length=MAX_TEXT)
    email_consent: Text = Field(default=None, max_length=32)
    updated_at: str | int | float

    _readable_time = field_validator("updated_at")(classmethod(lambda cls, value: _readable(value)))


def validate_events(items: list[Any], prefix: str) -> tuple[list[tuple[int, Event | Profile]], list[dict[str, Any]]]:
    """(index, event or profile) of every valid item, and one refusal per invalid one naming its
    field paths."""
    valid: list[tuple[int, Event | Profile]] = []
    refused = []
    for index, item in enumerate(items):
        where = f"{prefix}[{index}]" if prefix else ""
        try:
            valid.append((index, (Profile if isinstance(item, ProfileCall) else Event).model_validate(item)))
        except ValidationError as exc:
            refused.append({"index": index, "status": "refused", "errors": [
                {"loc": ".".join(p for p in [where, *(str(part) for part in error["loc"])] if p) or "(event)",
                 "msg": error["msg"].removeprefix("Value error, ")}
                for error in exc.errors(include_url=False)]})
    return valid, refused
