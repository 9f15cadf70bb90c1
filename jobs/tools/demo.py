"""Demo data: a realistic, deterministic landing zone with every kind of dirt at a known count.

``generate(out, ...)`` writes

- ``out/events/events-YYYYMMDD.json`` -- newline-delimited JSON in the event API's shape, one
  file per day (late events land in the next day's file, future ones in the last);
- ``out/crm/customers-000.csv`` (the full export) and ``customers-001.csv`` (later updates,
  including stale records older than the export that must not win);
- ``out/catalog/products-000.csv`` (every product the events mention, with names, images, stock,
  and two records the catalog cleanse must turn away) and ``products-001.csv`` (later price and
  stock changes, one of them stale: older than the record it would replace);
- ``out/manifest.json`` -- the exact count of every kind of record written.

The kinds of dirt never overlap: a duplicated event is otherwise clean, a bot event is not also
a double-load, and so on, so each later layer's accounting can be checked against the manifest
exactly. Clean events of one identity are at least 3 s apart, so no clean pair looks like a
pixel double-load (2 s window), and no clean session reaches the bot rate (60 a minute).
Same seed and end time, same bytes.
"""

from __future__ import annotations

import csv
import io
import json
import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

CATEGORIES: dict[str, tuple[float, float]] = {
    "electronics.smartphone": (120, 1200),
    "electronics.audio.headphone": (15, 350),
    "electronics.video.tv": (180, 2200),
    "electronics.clocks": (25, 600),
    "computers.notebook": (300, 2600),
    "computers.peripherals.mouse": (8, 120),
    "appliances.kitchen.refrigerators": (350, 2400),
    "appliances.environment.vacuum": (60, 700),
    "apparel.shoes": (25, 260),
    "apparel.shirt": (12, 90),
    "furniture.living_room.sofa": (250, 2100),
    "kids.toys": (5, 120),
    "sport.bicycle": (150, 1600),
    "construction.tools.drill": (30, 400),
}
PRODUCTS_PER_CATEGORY = 18

FIRST_NAMES = [
    "Olivia", "Liam", "Emma", "Noah", "Ava", "Elijah", "Sophia", "James", "Isabella", "Lucas",
    "Mia", "Mateo", "Amelia", "Ethan", "Harper", "Aiden", "Evelyn", "Jackson", "Priya", "Wei",
    "Fatima", "Diego", "Yuki", "Omar", "Chloe", "Samuel", "Grace", "Daniel", "Zoe", "Leo",
]
LAST_NAMES = [
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez",
    "Martinez", "Hernandez", "Lopez", "Nguyen", "Kim", "Patel", "Chen", "Okafor", "Cohen",
    "Rossi", "Novak", "Silva", "Schmidt", "Ivanova", "Haddad",
]
EMAIL_DOMAINS = ["gmail.com", "yahoo.com", "outlook.com", "icloud.com", "proton.me"]
# (canonical city, spellings seen in CRM exports, weight, country spellings)
CITIES: list[tuple[str, list[str], int, list[str]]] = [
    ("New York", ["New York", "NYC", "new york", "New York City", " NYC ", "NEW YORK"], 30, ["US", "USA"]),
    ("Los Angeles", ["Los Angeles", "LA", "los angeles"], 12, ["US"]),
    ("Chicago", ["Chicago", "chicago"], 10, ["US"]),
    ("San Francisco", ["San Francisco", "SF", "san francisco"], 8, ["US", "United States"]),
    ("Boston", ["Boston"], 6, ["US"]),
    ("Austin", ["Austin", "austin"], 6, ["US"]),
    ("Miami", ["Miami"], 5, ["US"]),
    ("Seattle", ["Seattle"], 5, ["US"]),
    ("London", ["London", "london"], 8, ["GB", "UK"]),
    ("Berlin", ["Berlin"], 5, ["DE"]),
    ("Toronto", ["Toronto"], 5, ["CA"]),
]
CONSENT_YES = ["true", "TRUE", "yes", "1", "Y"]
CONSENT_NO = ["false", "FALSE", "no", "0", "N"]

BROWSER_AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.0 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.0 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:131.0) Gecko/20100101 Firefox/131.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36 Edg/130.0.0.0",
]
BOT_AGENTS = [
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
    "python-requests/2.32.3",
    "curl/8.10.1",
    "Scrapy/2.11.2 (+https://scrapy.org)",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/130.0.0.0 Safari/537.36",
    "Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)",
]
# Synonyms real feeds send; rules/event_types.yaml maps them to the canonical types.
SYNONYMS: dict[str, list[str]] = {
    "page_view": ["pageview", "PageView", "page"],
    "product_view": ["view", "ProductViewed", "product_viewed"],
    "product_click": ["click", "ProductClicked"],
    "add_to_cart": ["cart", "AddToCart", "add-to-cart"],
    "remove_from_cart": ["RemoveFromCart", "remove_from_cart"],
    "checkout_started": ["begin_checkout", "CheckoutStarted"],
    "purchase": ["order_completed", "Purchase", "OrderCompleted"],
    "cart_abandonment": ["cart_abandoned", "CartAbandoned"],
}
UNKNOWN_TYPES = ["wishlist_add", "video_play", "newsletter_signup", "hover", "scroll_depth"]
INVALID_TIMESTAMPS = ["not-a-date", "2026-13-45T99:00:00Z", "yesterday", "", "31/02/2026 25:61"]

DIRTY_KINDS = ("unknown_type", "future", "invalid_timestamp", "missing_identity", "negative_price")
MIN_GAP_S = 3  # between two events of one identity: wider than the 2 s double-load window
SESSION_GAP_S = 600
# Sessions start by 19:00 of their day, so even the last day's events (and
# abandonments an hour and a half later) are before the demo's end time.
LATEST_SESSION_START_H = 19


@dataclass
class Customer:
    customer_id: str
    anonymous_id: str
    first_name: str
    last_name: str
    email: str
    birth_date: date
    city: str
    city_spelling: str
    country: str
    consent: bool
    updated_at: datetime
    user_agent: str
    preferred: list[str]


@dataclass
class Counts:
    exact_duplicates: int = 0
    double_loads: int = 0
    bot_user_agent_events: int = 0
    bot_rate_events: int = 0
    malformed_lines: int = 0
    unknown_types: int = 0
    future_events: int = 0
    invalid_timestamps: int = 0
    missing_identity: int = 0
    negative_prices: int = 0
    late_events: int = 0
    without_event_id: int = 0
    synonym_types: int = 0
    by_type: dict[str, int] = field(default_factory=dict)


@dataclass
class Event:
    """One generated event; ``line`` is set once it is serialised."""

    ts: datetime
    body: dict[str, Any]
    day: int
    kind: str = "valid"  # valid | unknown_type | future | invalid_timestamp | missing_identity | negative_price | bot_ua | bot_rate
    line: str = ""


def _iso_ms(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def _format_ts(rng: random.Random, ts: datetime) -> str | int:
    """The timestamp formats real feeds mix: ISO with Z, with an offset, ' UTC', epoch millis."""
    roll = rng.random()
    if roll < 0.55:
        return _iso_ms(ts)
    if roll < 0.70:
        offset = timedelta(hours=rng.choice([-8, -5, -4, 1, 2, 5.5, 9]))
        return ts.astimezone(timezone(offset)).isoformat(timespec="seconds")
    if roll < 0.85:
        return int(ts.timestamp() * 1000)
    return ts.strftime("%Y-%m-%d %H:%M:%S UTC")


class Generator:
    def __init__(self, seed: int, customers: int, days: int, events_per_day: int, end: datetime):
        self.rng = random.Random(seed)
        self.seed = seed
        self.days = days
        self.events_per_day = events_per_day
        self.end = end
        self.start = end - timedelta(days=days)
        self.counts = Counts()
        self.products = self._catalog()
        self.customers = [self._customer(i) for i in range(1, customers + 1)]
        self.anonymous_visitors = [self._uuid_hex("a-") for _ in range(max(10, customers // 3))]
        self.busy_until: dict[str, datetime] = {}
        self.dirty_events = 0

    # -- reference data -------------------------------------------------------------------
    def _uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _uuid_hex(self, prefix: str) -> str:
        return prefix + uuid.UUID(int=self.rng.getrandbits(128), version=4).hex[:16]

    def _catalog(self) -> dict[str, list[tuple[str, float]]]:
        catalog = {}
        for c, (category, (low, high)) in enumerate(CATEGORIES.items(), start=1):
            catalog[category] = [
                (f"P{c:02d}{i:03d}", round(self.rng.uniform(low, high), 2))
                for i in range(1, PRODUCTS_PER_CATEGORY + 1)
            ]
        return catalog

    def _customer(self, index: int) -> Customer:
        rng = self.rng
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        email = f"{first}.{last}{index}@{rng.choice(EMAIL_DOMAINS)}".lower()
        if rng.random() < 0.15:
            email = rng.choice([email.upper(), f"  {email} ", email.capitalize()])
        city, spellings, _, countries = rng.choices(CITIES, weights=[c[2] for c in CITIES])[0]
        age_days = rng.randint(18 * 365, 75 * 365)
        return Customer(
            customer_id=f"C{index:06d}",
            anonymous_id=self._uuid_hex("a-"),
            first_name=first,
            last_name=last,
            email=email,
            birth_date=(self.end - timedelta(days=age_days)).date(),
            city=city,
            city_spelling=rng.choice(spellings),
            country=rng.choice(countries),
            consent=rng.random() < 0.8,
            updated_at=self.start - timedelta(days=rng.randint(1, 400), seconds=rng.randint(0, 86399)),
            user_agent=rng.choice(BROWSER_AGENTS),
            preferred=rng.sample(list(CATEGORIES), 2),
        )

    # -- events -----------------------------------------------------------------------------
    def _event_type(self, canonical: str) -> str:
        if self.rng.random() < 0.1:
            self.counts.synonym_types += 1
            return self.rng.choice(SYNONYMS[canonical])
        return canonical

    def _product(self, customer: Customer | None) -> tuple[str, str, float]:
        rng = self.rng
        preferred = customer is not None and rng.random() < 0.7
        category = rng.choice(customer.preferred) if preferred else rng.choice(list(CATEGORIES))
        product_id, price = rng.choice(self.products[category])
        return product_id, category, price

    def _messy_product_id(self, product_id: str) -> str:
        roll = self.rng.random()
        if roll < 0.03:
            return product_id.lower()
        if roll < 0.05:
            return f" {product_id} "
        return product_id

    def _body(
        self, event_type: str, ts: datetime, identity: dict[str, str], session_id: str,
        user_agent: str, url: str, product: tuple[str, str, float] | None = None,
        quantity: int | None = None, order_id: str | None = None,
    ) -> dict[str, Any]:
        rng = self.rng
        body: dict[str, Any] = {}
        if rng.random() < 0.08:
            self.counts.without_event_id += 1
        else:
            body["event_id"] = self._uuid()
        body.update(identity)
        body["session_id"] = session_id
        body["event_type"] = self._event_type(event_type)
        body["timestamp"] = _format_ts(rng, ts)
        properties: dict[str, Any] = {}
        if product:
            product_id, category, price = product
            body["product_id"] = self._messy_product_id(product_id)
            properties["price"] = f"{price:.2f}" if rng.random() < 0.1 else price
            properties["currency"] = "usd" if rng.random() < 0.2 else "USD"
            properties["category"] = category
        if quantity is not None:
            properties["quantity"] = quantity
        if order_id is not None:
            properties["order_id"] = order_id
        body["url"] = url
        body["user_agent"] = user_agent
        body["properties"] = properties
        return body

    def _session(self, day: int, day_start: datetime) -> list[Event]:
        rng = self.rng
        latest_start = day_start + timedelta(hours=LATEST_SESSION_START_H)
        for _ in range(20):
            customer = rng.choice(self.customers) if rng.random() < 0.85 else None
            anonymous_id = customer.anonymous_id if customer else rng.choice(self.anonymous_visitors)
            key = customer.customer_id if customer else anonymous_id
            ts = day_start + timedelta(seconds=rng.randint(0, LATEST_SESSION_START_H * 3600))
            ts = max(ts, self.busy_until.get(key, ts))
            if ts <= latest_start:
                break
        else:  # everyone picked is busy until late: a first-time visitor
            customer, anonymous_id = None, self._uuid_hex("a-")
            key, ts = anonymous_id, latest_start
        ts += timedelta(milliseconds=rng.randint(0, 999))
        session_id = self._uuid_hex("s-")
        user_agent = customer.user_agent if customer else rng.choice(BROWSER_AGENTS)
        logged_in_after = rng.randint(0, 2) if customer else 10**6
        events: list[Event] = []
        step = 0

        def identity() -> dict[str, str]:
            if customer and step >= logged_in_after:
                return {"customer_id": customer.customer_id, "anonymous_id": anonymous_id}
            return {"anonymous_id": anonymous_id}

        def emit(event_type: str, url: str, **kwargs: Any) -> Event:
            nonlocal ts, step
            body = self._body(event_type, ts, identity(), session_id, user_agent, url, **kwargs)
            event = Event(ts=ts, body=body, day=day)
            events.append(event)
            ts += timedelta(seconds=rng.randint(MIN_GAP_S, 90), milliseconds=rng.randint(0, 999))
            step += 1
            return event

        landing = rng.choice(["/", "/deals", f"/c/{rng.choice(list(CATEGORIES)).split('.')[0]}"])
        emit("page_view", landing)
        viewed: list[tuple[str, str, float]] = []
        for _ in range(rng.randint(1, 8)):
            product = self._product(customer)
            listing = f"/c/{product[1].replace('.', '/')}"
            if rng.random() < 0.3:
                emit("product_click", listing, product=product)
            emit("product_view", f"/p/{product[0]}", product=product)
            viewed.append(product)
            self._maybe_dirty(emit, viewed[-1], day)
        cart: list[tuple[str, str, float, int]] = []
        if viewed and rng.random() < 0.3:
            for product in rng.sample(viewed, k=min(len(viewed), rng.randint(1, 2))):
                quantity = rng.choice([1, 1, 1, 2, 3])
                emit("add_to_cart", f"/p/{product[0]}", product=product, quantity=quantity)
                cart.append((*product, quantity))
            if len(cart) > 1 and rng.random() < 0.15:
                removed = cart.pop()
                emit("remove_from_cart", "/cart", product=removed[:3], quantity=removed[3])
        purchased = False
        if cart and customer and rng.random() < 0.55:
            emit("checkout_started", "/checkout")
            if rng.random() < 0.75:
                order_id = f"O-{self._uuid_hex('')[:12]}"
                for product_id, category, price, quantity in cart:
                    emit("purchase", "/checkout/complete", product=(product_id, category, price),
                         quantity=quantity, order_id=order_id)
                purchased = True
        if cart and not purchased and customer and rng.random() < 0.35:
            ts += timedelta(minutes=rng.randint(60, 90))
            emit("cart_abandonment", "/cart")
        self.busy_until[key] = ts + timedelta(seconds=SESSION_GAP_S)
        if customer:
            self.busy_until[anonymous_id] = self.busy_until[key]
        return events

    def _maybe_dirty(self, emit: Any, product: tuple[str, str, float], day: int) -> None:
        """Now and then one extra event that silver must reject for exactly one reason."""
        rng = self.rng
        roll = rng.random()
        if roll >= 0.03:
            return
        event = emit("product_view", f"/p/{product[0]}", product=product)
        kind = DIRTY_KINDS[self.dirty_events % len(DIRTY_KINDS)]  # in turn: every kind shows up
        self.dirty_events += 1
        event.kind = kind
        body = event.body
        if kind == "unknown_type":
            body["event_type"] = rng.choice(UNKNOWN_TYPES)
        elif kind == "future":
            # A device clock years ahead: in the future whenever the demo is processed.
            event.ts = self.end + timedelta(days=rng.randint(400, 3000), seconds=rng.randint(0, 86399))
            body["timestamp"] = _iso_ms(event.ts)
        elif kind == "invalid_timestamp":
            body["timestamp"] = rng.choice(INVALID_TIMESTAMPS)
        elif kind == "missing_identity":
            body.pop("customer_id", None)
            body.pop("anonymous_id", None)
        else:
            body["properties"]["price"] = -abs(float(body["properties"]["price"]))

    def _bot_session(self, day_start: datetime, day: int, by_rate: bool) -> list[Event]:
        rng = self.rng
        anonymous_id = self._uuid_hex("a-")
        session_id = self._uuid_hex("s-")
        ts = day_start + timedelta(seconds=rng.randint(0, LATEST_SESSION_START_H * 3600))
        events = []
        if by_rate:
            agent = rng.choice(BROWSER_AGENTS)
            count, gap_ms = rng.randint(80, 150), (150, 400)  # all inside one minute
        else:
            agent = rng.choice(BOT_AGENTS)
            count, gap_ms = rng.randint(5, 15), (MIN_GAP_S * 1000, 12000)
        categories = list(CATEGORIES)
        for i in range(count):
            product = rng.choice(self.products[categories[i % len(categories)]])
            category = categories[i % len(categories)]
            body = self._body(
                "product_view", ts, {"anonymous_id": anonymous_id}, session_id, agent,
                f"/p/{product[0]}?crawl={i}", product=(product[0], category, product[1]),
            )
            events.append(Event(ts=ts, body=body, day=day, kind="bot_rate" if by_rate else "bot_ua"))
            ts += timedelta(milliseconds=rng.randint(*gap_ms))
        return events

    def events(self) -> list[list[Event]]:
        """Events per day file, in landing order, dirt included."""
        rng = self.rng
        per_day: list[list[Event]] = [[] for _ in range(self.days)]
        for day in range(self.days):
            day_start = self.start + timedelta(days=day)
            clean = 0
            while clean < self.events_per_day:
                session = self._session(day, day_start)
                clean += sum(1 for e in session if e.kind == "valid")
                per_day[day].extend(session)
            per_day[day].extend(self._bot_session(day_start, day, by_rate=True))
            for _ in range(max(1, self.events_per_day // 300)):
                per_day[day].extend(self._bot_session(day_start, day, by_rate=False))
        files: list[list[Event]] = [[] for _ in range(self.days)]
        for day, events in enumerate(per_day):
            for event in events:
                target = day
                if event.kind == "future":
                    target = self.days - 1
                elif event.kind == "valid" and day + 1 < self.days and rng.random() < 0.03:
                    target = day + 1
                    self.counts.late_events += 1
                files[target].append(event)
        for events in files:
            events.sort(key=lambda e: (e.day, e.ts))
        return files


def _serialise(events: list[Event]) -> None:
    for event in events:
        event.line = json.dumps(event.body, separators=(",", ":"))


def _malformed(rng: random.Random, event: Event) -> str:
    line = event.line
    roll = rng.random()
    if roll < 0.6:
        cut = rng.randint(5, max(6, len(line) - 2))
        return line[:cut]
    if roll < 0.8:
        return '{"event_type":"page_view","timestamp":}'
    return f"GET /pixel.gif?e=view&t={int(event.ts.timestamp())} HTTP/1.1"


def _with_dirt(gen: Generator, files: list[list[Event]]) -> list[list[str]]:
    """Serialise and add exact duplicates, pixel double-loads and malformed lines."""
    rng, counts = gen.rng, gen.counts
    lines: list[list[str]] = []
    carry: list[str] = []
    for events in files:
        _serialise(events)
        out: list[str] = list(carry)
        carry = []
        for event in events:
            out.append(event.line)
            counts.by_type[event.kind] = counts.by_type.get(event.kind, 0) + 1
            if event.kind != "valid":
                continue
            roll = rng.random()
            if roll < 0.02:
                counts.exact_duplicates += 1
                (carry if rng.random() < 0.4 else out).append(event.line)
            elif roll < 0.03 and event.body.get("event_type") in ("page_view", "product_view"):
                copy = dict(event.body)
                if "event_id" in copy:
                    copy["event_id"] = gen._uuid()
                copy["timestamp"] = _iso_ms(event.ts + timedelta(milliseconds=rng.randint(100, 900)))
                counts.double_loads += 1
                out.append(json.dumps(copy, separators=(",", ":")))
            elif roll < 0.035:
                counts.malformed_lines += 1
                out.append(_malformed(rng, event))
        lines.append(out)
    lines[-1].extend(carry)
    return lines


def _crm_rows(gen: Generator) -> tuple[list[list[str]], list[list[str]], int]:
    rng = gen.rng

    def row(c: Customer, updated_at: datetime, city: str, consent: bool, email: str) -> list[str]:
        stamp = (
            updated_at.strftime("%Y-%m-%dT%H:%M:%SZ") if rng.random() < 0.7
            else updated_at.strftime("%Y-%m-%d %H:%M:%S")
        )
        return [
            c.customer_id, email, c.first_name, c.last_name, c.birth_date.isoformat(), city,
            c.country, rng.choice(CONSENT_YES if consent else CONSENT_NO), stamp,
        ]

    export = [row(c, c.updated_at, c.city_spelling, c.consent, c.email) for c in gen.customers]
    updates, stale = [], 0
    picked = rng.sample(gen.customers, k=max(2, round(len(gen.customers) * 0.16)))
    stale_ids = {c.customer_id for c in picked[: max(1, len(picked) // 4)]}
    for c in sorted(picked, key=lambda c: c.customer_id):
        if c.customer_id in stale_ids:
            older = c.updated_at - timedelta(days=rng.randint(30, 300))
            updates.append(row(c, older, "Stale City", not c.consent, f"stale.{c.email.strip()}"))
            stale += 1
            continue
        newer = gen.start + timedelta(days=rng.randint(0, gen.days), seconds=rng.randint(0, 3600))
        newer = min(newer, gen.end)
        if rng.random() < 0.5:  # moved
            city, spellings, _, countries = rng.choice(CITIES)
            c.city_spelling, c.country = rng.choice(spellings), rng.choice(countries)
        consent = not c.consent if rng.random() < 0.5 else c.consent
        updates.append(row(c, newer, c.city_spelling, consent, c.email.strip().lower()))
    return export, updates, stale


CRM_HEADER = [
    "customer_id", "email", "first_name", "last_name", "birth_date", "city", "country",
    "email_consent", "updated_at",
]


def _csv(rows: list[list[str]], header: list[str] = CRM_HEADER) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


CATALOG_HEADER = ["product_id", "name", "url", "image_url", "price", "currency", "category", "brand", "in_stock",
                  "updated_at"]
BRANDS = ["Acme", "Northwind", "Lumen", "Vertex", "Solace", "Kestrel", "Orbit", "Halcyon"]
MODELS = ["Aurora", "Nimbus", "Pulse", "Atlas", "Nova", "Echo", "Summit", "Drift", "Flare"]
SHOP = "https://shop.example"


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _catalog_rows(gen: Generator) -> tuple[list[list[str]], list[list[str]], dict[str, int]]:
    """The feed (every product, two unusable records) and a later update file. A separate random
    stream, so the events and CRM records are the same with or without a catalog."""
    rng = random.Random(gen.seed * 7919 + 1)
    listed = gen.start - timedelta(days=3)
    export: list[list[str]] = []
    out_of_stock = set()
    for category, products in gen.products.items():
        leaf = category.split(".")[-1].replace("_", " ").title()
        for product_id, price in products:
            in_stock = rng.random() >= 0.1
            if not in_stock:
                out_of_stock.add(product_id)
            name = f"{rng.choice(BRANDS)} {rng.choice(MODELS)} {leaf} {rng.randint(2, 99)}"
            export.append([product_id, name, f"{SHOP}/p/{product_id}", f"{SHOP}/img/{product_id}.jpg",
                           f"{price:.2f}", "USD", category, name.split()[0], "true" if in_stock else "false",
                           _iso(listed - timedelta(minutes=rng.randint(0, 600)))])
    export.append(["", "Nameless", "", "", "10.00", "USD", "kids.toys", "Acme", "true", _iso(listed)])
    export.append(["P99001", "Broken price", "", "", "ten", "USD", "kids.toys", "Acme", "maybe", _iso(listed)])
    updates: list[list[str]] = []
    for row in rng.sample(export[:-2], 6):
        changed = list(row)
        changed[4] = f"{float(row[4]) * 0.9:.2f}"  # a 10 % markdown, and back in stock
        changed[8] = "yes"
        changed[9] = _iso(gen.start + timedelta(days=1))
        out_of_stock.discard(row[0])
        updates.append(changed)
    stale = list(updates[0])
    stale[4], stale[9] = "1.00", _iso(listed - timedelta(days=30))  # older than the export: must not win
    updates.append(stale)
    counts = {"rows": len(export) + len(updates), "products": len(export) - 2, "rejected": 2,
              "updates": len(updates) - 1, "stale_updates": 1, "out_of_stock": len(out_of_stock)}
    return export, updates, counts


def default_end() -> datetime:
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


def generate(
    out: Path, customers: int = 200, days: int = 7, events_per_day: int = 1000, seed: int = 42,
    end: datetime | None = None,
) -> dict[str, Any]:
    """Write the demo landing zone under ``out`` and return its manifest (also written)."""
    end = (end or default_end()).astimezone(UTC)
    gen = Generator(seed, customers, days, events_per_day, end)
    files = gen.events()
    lines = _with_dirt(gen, files)
    export, updates, stale = _crm_rows(gen)
    catalog, catalog_updates, catalog_counts = _catalog_rows(gen)

    (out / "events").mkdir(parents=True, exist_ok=True)
    (out / "crm").mkdir(parents=True, exist_ok=True)
    (out / "catalog").mkdir(parents=True, exist_ok=True)
    event_files = []
    for day, day_lines in enumerate(lines):
        name = f"events/events-{(gen.start + timedelta(days=day)):%Y%m%d}.json"
        (out / name).write_text("\n".join(day_lines) + "\n")
        event_files.append(name)
    (out / "crm/customers-000.csv").write_text(_csv(export))
    (out / "crm/customers-001.csv").write_text(_csv(updates))
    (out / "catalog/products-000.csv").write_text(_csv(catalog, CATALOG_HEADER))
    (out / "catalog/products-001.csv").write_text(_csv(catalog_updates, CATALOG_HEADER))

    c, kinds = gen.counts, gen.counts.by_type
    counts = {
        "valid": kinds.get("valid", 0),
        "exact_duplicates": c.exact_duplicates,
        "double_loads": c.double_loads,
        "bot_events": kinds.get("bot_ua", 0) + kinds.get("bot_rate", 0),
        "bot_user_agent_events": kinds.get("bot_ua", 0),
        "bot_rate_events": kinds.get("bot_rate", 0),
        "malformed_lines": c.malformed_lines,
        "unknown_types": kinds.get("unknown_type", 0),
        "future_events": kinds.get("future", 0),
        "invalid_timestamps": kinds.get("invalid_timestamp", 0),
        "missing_identity": kinds.get("missing_identity", 0),
        "negative_prices": kinds.get("negative_price", 0),
    }
    total = sum(len(day_lines) for day_lines in lines)
    accounted = sum(v for k, v in counts.items() if k not in ("bot_user_agent_events", "bot_rate_events"))
    assert total == accounted, f"demo accounting is off: {total} lines, {accounted} accounted"
    manifest = {
        "seed": seed,
        "customers": customers,
        "days": days,
        "events_per_day": events_per_day,
        "start": gen.start.isoformat().replace("+00:00", "Z"),
        "end": end.isoformat().replace("+00:00", "Z"),
        "files": {"events": event_files, "crm": ["crm/customers-000.csv", "crm/customers-001.csv"],
                  "catalog": ["catalog/products-000.csv", "catalog/products-001.csv"]},
        "events": {
            "lines": total,
            **counts,
            "late_events": c.late_events,
            "without_event_id": c.without_event_id,
            "synonym_types": c.synonym_types,
        },
        "crm": {
            "rows": len(export) + len(updates),
            "customers": len(export),
            "updates": len(updates) - stale,
            "stale_updates": stale,
        },
        "catalog": catalog_counts,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
