"""The demo generator's manifest is checked here against the files themselves, read back
independently, so later layers can trust it as the expected accounting."""

import csv
import json
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from jobs.tools.demo import BOT_AGENTS, SYNONYMS, UNKNOWN_TYPES, generate

END = datetime(2026, 11, 20, 0, 0, tzinfo=UTC)
CANONICAL = set(SYNONYMS)
KNOWN_TYPES = CANONICAL | {s for synonyms in SYNONYMS.values() for s in synonyms}


def _parse_ts(value):
    if isinstance(value, int):
        return datetime.fromtimestamp(value / 1000, tz=UTC)
    if not isinstance(value, str):
        return None
    text = value.replace(" UTC", "+00:00").replace("Z", "+00:00")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else None


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    manifest = generate(out, customers=60, days=3, events_per_day=400, seed=7, end=END)
    lines = [
        line
        for name in manifest["files"]["events"]
        for line in (out / name).read_text().splitlines()
    ]
    return out, manifest, lines


def test_same_seed_same_bytes_other_seed_other_data(tmp_path, demo):
    out, manifest, _ = demo
    again = tmp_path / "again"
    generate(again, customers=60, days=3, events_per_day=400, seed=7, end=END)
    for name in [*manifest["files"]["events"], *manifest["files"]["crm"], "manifest.json"]:
        assert (again / name).read_bytes() == (out / name).read_bytes(), name
    other = tmp_path / "other"
    generate(other, customers=60, days=3, events_per_day=400, seed=8, end=END)
    assert (other / manifest["files"]["events"][0]).read_bytes() != (out / manifest["files"]["events"][0]).read_bytes()


def test_layout_is_what_the_default_sources_read(demo):
    out, manifest, _ = demo
    assert sorted(p.name for p in (out / "events").iterdir()) == [
        "events-20261117.json", "events-20261118.json", "events-20261119.json"
    ]
    assert sorted(p.name for p in (out / "crm").iterdir()) == ["customers-000.csv", "customers-001.csv"]
    assert manifest["start"] == "2026-11-17T00:00:00Z" and manifest["end"] == "2026-11-20T00:00:00Z"


def test_line_count_and_malformed_lines_match_the_manifest(demo):
    _, manifest, lines = demo
    events = manifest["events"]
    malformed = 0
    for line in lines:
        try:
            body = json.loads(line)
        except json.JSONDecodeError:
            malformed += 1
            continue
        assert isinstance(body, dict)
    assert len(lines) == events["lines"]
    assert malformed == events["malformed_lines"] > 0


def test_every_kind_of_dirt_is_present_at_its_manifest_count(demo):
    _, manifest, lines = demo
    events = manifest["events"]
    bodies = [json.loads(line) for line in lines if _is_json(line)]
    exact_repeats = sum(n - 1 for n in Counter(line for line in lines if _is_json(line)).values())
    unknown = sum(1 for b in bodies if b.get("event_type") in UNKNOWN_TYPES)
    assert all(b.get("event_type") in KNOWN_TYPES | set(UNKNOWN_TYPES) for b in bodies)
    bot_ua = sum(1 for b in bodies if b.get("user_agent") in BOT_AGENTS)
    no_identity = sum(1 for b in bodies if not b.get("customer_id") and not b.get("anonymous_id"))
    times = [_parse_ts(b.get("timestamp")) for b in bodies]
    invalid = sum(1 for t in times if t is None)
    future = sum(1 for t in times if t is not None and t > END + timedelta(days=300))
    negative = sum(1 for b in bodies if float(b.get("properties", {}).get("price", 0)) < 0)
    no_id = sum(1 for b in bodies if "event_id" not in b)

    assert exact_repeats == events["exact_duplicates"] > 0
    assert unknown == events["unknown_types"] > 0
    assert bot_ua == events["bot_user_agent_events"] > 0
    assert no_identity == events["missing_identity"] > 0
    assert invalid == events["invalid_timestamps"] > 0
    assert future == events["future_events"] > 0
    assert negative == events["negative_prices"] > 0
    assert no_id > 0
    # Apart from future ones, every parseable time lies inside the generated period.
    assert all(END - timedelta(days=3) <= t < END for t in times if t and t <= END + timedelta(days=300))


def test_double_loads_and_rate_bots_are_exactly_the_injected_ones(demo):
    """No clean pair of events looks like a double-load or a bot by accident."""
    _, manifest, lines = demo
    events = manifest["events"]
    seen = set()
    rows = []
    for line in lines:
        if not _is_json(line) or line in seen:
            continue
        seen.add(line)
        body = json.loads(line)
        ts = _parse_ts(body.get("timestamp"))
        identity = body.get("customer_id") or body.get("anonymous_id")
        if ts is not None and identity:
            rows.append((identity, body["event_type"], body.get("product_id"), body.get("url"), ts))
    rows.sort()
    double_loads = sum(
        1 for a, b in zip(rows, rows[1:], strict=False)
        if a[:4] == b[:4] and (b[4] - a[4]) < timedelta(seconds=2)
    )
    assert double_loads == events["double_loads"] > 0

    per_minute = Counter((r[0], r[4].replace(second=0, microsecond=0)) for r in rows)
    busy = {identity for (identity, _), n in per_minute.items() if n > 30}
    rate_events = sum(1 for r in rows if r[0] in busy)
    assert rate_events == events["bot_rate_events"] > 0


def test_the_clean_events_are_what_is_left_when_every_kind_of_dirt_is_taken_out(demo):
    """The manifest's ``valid`` count against the lines themselves, each kind judged here."""
    _, manifest, lines = demo
    seen: set[str] = set()
    kept: list[tuple] = []
    for line in lines:
        if not _is_json(line) or line in seen:  # malformed, or an exact repeat
            continue
        seen.add(line)
        body = json.loads(line)
        ts = _parse_ts(body.get("timestamp"))
        identity = body.get("customer_id") or body.get("anonymous_id")
        if (body.get("event_type") in UNKNOWN_TYPES or body.get("user_agent") in BOT_AGENTS or not identity
                or ts is None or ts > END + timedelta(days=300)
                or float(body.get("properties", {}).get("price", 0)) < 0):
            continue
        kept.append((identity, body["event_type"], body.get("product_id"), body.get("url"), ts))
    kept.sort()
    doubles = {b for a, b in zip(kept, kept[1:], strict=False) if a[:4] == b[:4] and b[4] - a[4] < timedelta(seconds=2)}
    per_minute = Counter((r[0], r[4].replace(second=0, microsecond=0)) for r in kept)
    busy = {identity for (identity, _), n in per_minute.items() if n > 30}
    clean = [r for r in kept if r not in doubles and r[0] not in busy]
    assert len(clean) == manifest["events"]["valid"] > 0


def test_crm_exports_hold_the_manifest_rows_with_stale_records(demo):
    out, manifest, _ = demo
    export = list(csv.DictReader((out / "crm/customers-000.csv").open()))
    updates = list(csv.DictReader((out / "crm/customers-001.csv").open()))
    assert len(export) + len(updates) == manifest["crm"]["rows"]
    assert len(export) == manifest["crm"]["customers"] == 60
    first_seen = {r["customer_id"]: _parse_crm_ts(r["updated_at"]) for r in export}
    stale = [r for r in updates if _parse_crm_ts(r["updated_at"]) < first_seen[r["customer_id"]]]
    assert len(stale) == manifest["crm"]["stale_updates"] > 0
    spellings = {r["city"] for r in export + updates}
    new_york = {"New York", "NYC", "new york", "New York City", " NYC ", "NEW YORK"}
    assert len(spellings & new_york) >= 3  # the exports spell one city several ways


def _parse_crm_ts(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00")).replace(tzinfo=UTC)


def _is_json(line):
    try:
        json.loads(line)
    except json.JSONDecodeError:
        return False
    return True
