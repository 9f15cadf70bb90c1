"""Segment's HTTP tracking API (``/v1/track``, ``/v1/page``, ``/v1/screen``, ``/v1/identify``,
``/v1/batch``) mapped onto our events, so a site already running a Segment-style SDK can point
it at the collector.

=================  ===========================================================================
Segment            event line
=================  ===========================================================================
messageId          event_id (a retry carries the same one)
userId             customer_id
anonymousId        anonymous_id
timestamp          timestamp (else originalTimestamp, sentAt, receivedAt)
track ``event``    event_type as sent ("Product Added"); silver maps it through
                   ``rules/event_types.yaml`` like every feed's names
page / screen      event_type ``page_view``; url from properties.url or context.page.url;
                   name and category as properties page_name, page_category
identify           a profile update under ``{landing.root}/crm/collector/`` (the
                   ``collector_profiles`` source, partial: silver keeps what it does not carry):
                   userId, email, firstName, lastName, birthday, address.city/country,
                   email_consent (or unsubscribed), timestamp as updated_at
properties         properties (product_id, price, quantity, currency, category, order_id, …)
context.userAgent  user_agent; context.page.url: url
=================  ===========================================================================
"""

from __future__ import annotations

from typing import Any

from jobs.collector.models import ProfileCall

PAGE_TYPES = {"page", "screen"}
TIME_FIELDS = ("timestamp", "originalTimestamp", "sentAt", "receivedAt")  # the first one present


def to_event(call: Any) -> Any:
    """One Segment call -> an event payload for :class:`jobs.collector.models.Event` (an input
    that is not a call is handed on as it is, to be refused by validation with its path)."""
    if not isinstance(call, dict):
        return call
    kind = call.get("type")
    context = call.get("context") if isinstance(call.get("context"), dict) else {}
    page = context.get("page") if isinstance(context.get("page"), dict) else {}
    properties = dict(call.get("properties") or {}) if isinstance(call.get("properties"), dict) else {}
    if kind == "identify":
        return to_profile(call)
    event: dict[str, Any] = {
        "event_id": call.get("messageId"),
        "customer_id": call.get("userId"),
        "anonymous_id": call.get("anonymousId"),
        "session_id": properties.pop("session_id", None) or context.get("session_id"),
        "event_type": "page_view" if kind in PAGE_TYPES else call.get("event"),
        "timestamp": _first(call, *TIME_FIELDS),
        "product_id": properties.get("product_id") or properties.get("sku"),
        "url": properties.get("url") or page.get("url"),
        "user_agent": context.get("userAgent"),
        "properties": properties,
    }
    if kind not in ("track", *PAGE_TYPES):
        event["event_type"] = None  # refused: names the call type below
        event["properties"] = {**properties, "segment_type": kind}
    if kind in PAGE_TYPES:
        for field in ("name", "category"):
            if call.get(field):
                event["properties"][f"page_{field}"] = call[field]
    return {key: value for key, value in event.items() if value is not None}


def _first(mapping: dict[str, Any], *names: str) -> Any:
    return next((mapping[name] for name in names if mapping.get(name) not in (None, "")), None)


def to_profile(call: dict[str, Any]) -> ProfileCall:
    """An ``identify`` call -> a partial profile update: only the traits it carries."""
    traits = call.get("traits") if isinstance(call.get("traits"), dict) else {}
    address = traits.get("address") if isinstance(traits.get("address"), dict) else {}
    consent = _first(traits, "email_consent", "emailConsent")
    if consent is None and isinstance(traits.get("unsubscribed"), bool):
        consent = "no" if traits["unsubscribed"] else "yes"
    profile = {
        "event_id": call.get("messageId"),
        "customer_id": call.get("userId"),
        "email": _first(traits, "email"),
        "first_name": _first(traits, "firstName", "first_name"),
        "last_name": _first(traits, "lastName", "last_name"),
        "birth_date": _first(traits, "birthday", "birth_date"),
        "city": _first(address, "city") or _first(traits, "city"),
        "country": _first(address, "country") or _first(traits, "country"),
        "email_consent": None if consent is None else str(consent).lower(),
        "updated_at": _first(call, *TIME_FIELDS),
        "anonymous_id": call.get("anonymousId"),
        "traits": traits or None,
    }
    return ProfileCall({key: value for key, value in profile.items() if value is not None})
