from datetime import UTC, datetime
from decimal import Decimal

import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F

from jobs.rules import BotPattern, BotRules, name_key
from jobs.runtime.tables import BRONZE_EVENTS_SCHEMA
from transforms.silver_events import (
    apply_expectations,
    assign_event_ids,
    classify_events,
    flag_bots,
    identity_pairs,
    judge_rows,
    mark_double_loads,
    mark_duplicates,
    parse_events,
    parse_timestamp,
    reject_corrupt,
    stitch_identities,
    validate_events,
    with_outcome,
)

# Inline rules: editing a marketer's rule file cannot break a unit test.
SYNONYMS = {"page_view": ["PageView"], "product_view": ["view"], "add_to_cart": ["cart", "AddToCart"],
            "remove_from_cart": [], "purchase": ["order_completed"], "product_click": [], "checkout_started": [],
            "cart_abandonment": []}
EVENT_TYPES = {name_key(name): canonical for canonical, names in SYNONYMS.items() for name in [canonical, *names]}
BOTS = BotRules(user_agent_patterns=(
    BotPattern(name="crawlers", pattern=r"bot\b|bot/|crawler|spider"),
    BotPattern(name="headless", pattern="headlesschrome|phantomjs"),
    BotPattern(name="libraries", pattern="python-requests|curl/|wget/"),
))
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
BRONZE_FIELDS = [f.name for f in BRONZE_EVENTS_SCHEMA.fields if f.name != "_run_id"]
BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/130.0 Safari/537.36"


def bronze(spark, *events, version=1):
    """Bronze rows from dicts (missing fields null), landed in the order given."""
    rows = []
    for i, event in enumerate(events):
        row = {f: None for f in BRONZE_FIELDS}
        row.update({"_source": "web", "_source_file": "f.json",
                    "_ingested_at": datetime(2026, 11, 20, 11, 0, i % 60)})
        row.update(event)
        rows.append(row)
    schema = ", ".join(f"`{f.name}` {f.dataType.simpleString()}" for f in BRONZE_EVENTS_SCHEMA.fields
                       if f.name != "_run_id")
    return spark.createDataFrame(rows, schema).withColumn("_bronze_version", F.lit(version).cast("long"))


def ev(event_id, ts="2026-11-20T10:00:00Z", event_type="page_view", customer="C1", **extra):
    return {"event_id": event_id, "timestamp": ts, "event_type": event_type, "customer_id": customer,
            "user_agent": BROWSER, "url": "/", **extra}


def prepared(df):
    return df.transform(parse_events(EVENT_TYPES)).transform(assign_event_ids).transform(reject_corrupt)


def reasons_by_id(df):
    return {r["event_id"]: (r["_reasons"], r["_duplicate"]) for r in df.select("event_id", "_reasons", "_duplicate").collect()}


JUDGED = "event_id string, _reasons array<string>, _duplicate boolean"


def assert_judged(spark, df, expected):
    """``df``'s (event_id, reasons, duplicate) rows are exactly ``expected``, in any order."""
    actual = df.select("event_id", "_reasons", "_duplicate")
    assert_df_equality(actual, spark.createDataFrame(expected, JUDGED), ignore_row_order=True, ignore_nullable=True)


TIMESTAMP_CASES = [
        ("2026-11-20T12:00:00.123Z", datetime(2026, 11, 20, 12, 0, 0, 123000)),
        ("2026-11-20T07:00:00-05:00", datetime(2026, 11, 20, 12, 0)),
        ("2026-11-20T17:30:00+05:30", datetime(2026, 11, 20, 12, 0)),
        ("2019-10-01 00:00:00 UTC", datetime(2019, 10, 1, 0, 0)),
        ("2026-11-20 12:00:00", datetime(2026, 11, 20, 12, 0)),
        ("1763640000000", datetime(2025, 11, 20, 12, 0)),
        ("1763640000", datetime(2025, 11, 20, 12, 0)),
        (" 2026-11-20T12:00:00Z ", datetime(2026, 11, 20, 12, 0)),
        ("2026-13-45T99:00:00Z", None),
        ("yesterday", None),
        ("", None),
        (None, None),
]


@pytest.fixture(scope="module")
def parsed_timestamps(spark):
    """Every text of TIMESTAMP_CASES parsed, in one Spark job: case number -> timestamp."""
    df = spark.createDataFrame([(i, text) for i, (text, _) in enumerate(TIMESTAMP_CASES)], "i int, t string")
    return {r["i"]: r["ts"] for r in df.select("i", parse_timestamp(F.col("t")).alias("ts")).collect()}


@pytest.mark.parametrize(("case", "text", "expected"), [(i, *case) for i, case in enumerate(TIMESTAMP_CASES)])
def test_timestamps_in_every_feed_format_become_utc(parsed_timestamps, case, text, expected):
    assert parsed_timestamps[case] == expected


def test_parse_normalizes_types_ids_categories_and_prices(spark):
    df = bronze(spark, ev(
        "e1", event_type="AddToCart", product_id=" p100 ", anonymous_id=" ",
        properties={"price": "19.999", "quantity": "2", "currency": "usd",
                    "category": "Electronics.Smartphone", "order_id": "O1", "coupon": "X"},
        _rescued_data='{"campaign":"bf"}',
    ))
    row = df.transform(parse_events(EVENT_TYPES)).first()
    assert row["event_type"] == "add_to_cart"
    assert row["product_id"] == "P100"
    assert row["anonymous_id"] is None
    assert (row["category"], row["top_category"]) == ("electronics.smartphone", "electronics")
    assert (row["price"], row["quantity"], row["currency"], row["order_id"]) == (Decimal("20.00"), 2, "USD", "O1")
    assert row["properties"] == {"coupon": "X", "campaign": "bf"}
    assert row["event_date"].isoformat() == "2026-11-20"
    assert row["_raw"]["event_type"] == "AddToCart"


SYNONYM_CASES = [("view", "product_view"), ("cart", "add_to_cart"), ("AddToCart", "add_to_cart"),
                 ("add-to-cart", "add_to_cart"), ("Add to cart", "add_to_cart"), ("order_completed", "purchase"),
                 ("PageView", "page_view"), ("remove_from_cart", "remove_from_cart"), ("wishlist_add", None)]


@pytest.fixture(scope="module")
def parsed_types(spark):
    """Every name of SYNONYM_CASES sent as an event of its own, parsed in one Spark job."""
    events = [ev(f"e{i}", event_type=sent) for i, (sent, _) in enumerate(SYNONYM_CASES)]
    parsed = bronze(spark, *events).transform(parse_events(EVENT_TYPES))
    return {r["_sent_id"]: r["event_type"] for r in parsed.select("_sent_id", "event_type").collect()}


@pytest.mark.parametrize(("case", "sent", "canonical"), [(i, *case) for i, case in enumerate(SYNONYM_CASES)])
def test_event_type_synonyms_map_to_the_canonical_set(parsed_types, case, sent, canonical):
    assert parsed_types[f"e{case}"] == canonical


def test_events_without_id_get_a_deterministic_id_from_their_content(spark):
    same = ev(None, product_id="P1")
    df = bronze(spark, same, same, ev(None, product_id="P2")).transform(prepared)
    ids = [r["event_id"] for r in df.collect()]
    assert ids[0] == ids[1] != ids[2]
    assert ids[0].startswith("gen-") and len(ids[0]) == 36


def test_validation_gives_every_applicable_reason(spark):
    df = bronze(
        spark,
        ev("ok"),
        ev("bad_ts", ts="not-a-date"),
        ev("future", ts="2026-11-20T12:10:01Z"),
        ev("skew_ok", ts="2026-11-20T12:09:59Z"),
        ev("unknown", event_type="hover"),
        ev("anon", customer=None),
        ev("neg", properties={"price": "-1"}),
        ev("nan", properties={"price": "free"}),
        ev("many", ts="x", event_type="hover", customer=None),
        {"_corrupt_record": "{oops"},
    ).transform(prepared).transform(mark_duplicates(None)).transform(validate_events(NOW, 10))
    assert_judged(spark, df.where(~F.col("event_id").startswith("gen-")), [
        ("ok", [], False), ("skew_ok", [], False), ("bad_ts", ["invalid_timestamp"], False),
        ("future", ["future_timestamp"], False), ("unknown", ["unknown_event_type"], False),
        ("anon", ["missing_identity"], False), ("neg", ["negative_price"], False), ("nan", ["invalid_price"], False),
        ("many", ["invalid_timestamp", "unknown_event_type", "missing_identity"], False),
    ])
    assert [r["_reasons"] for r in df.where(F.col("event_id").startswith("gen-")).collect()] == [["corrupt_record"]]


def test_exact_repeats_collapse_first_landed_wins_and_conflicts_are_rejected(spark):
    first = ev("e1", product_id="P1")
    df = bronze(spark, first, first, ev("e1", product_id="P2"), ev("e2")).transform(prepared).transform(
        mark_duplicates(None)
    )
    expected = spark.createDataFrame(
        [("e1", "P1", [], False), ("e1", "P1", [], True), ("e1", "P2", ["duplicate_conflict"], False),
         ("e2", None, [], False)], "event_id string, product_id string, _reasons array<string>, _duplicate boolean")
    assert_df_equality(df.select("event_id", "product_id", "_reasons", "_duplicate"), expected,
                       ignore_row_order=True, ignore_nullable=True)


def test_repeats_of_events_already_in_silver_are_duplicates_across_batches(spark):
    earlier = bronze(spark, ev("e1", product_id="P1")).transform(prepared)
    existing = earlier.select("event_id", "_content_hash")
    later = bronze(spark, ev("e1", product_id="P1"), ev("e1", product_id="P9"), ev("e3"), version=5)
    got = reasons_by_id(later.transform(prepared).transform(mark_duplicates(existing)).where(
        F.col("_raw.product_id").isNull() | (F.col("_raw.product_id") == "P1")))
    assert got == {"e1": ([], True), "e3": ([], False)}
    conflict = later.transform(prepared).transform(mark_duplicates(existing)).where(F.col("_raw.product_id") == "P9")
    assert conflict.first()["_reasons"] == ["duplicate_conflict"]


@pytest.mark.parametrize("per_agent", [False, True], ids=["row by row", "once per agent"])
def test_bot_user_agents_are_rejected_browsers_are_not(spark, per_agent):
    agents = {
        "google": "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        "requests": "python-requests/2.32.3",
        "headless": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 HeadlessChrome/130.0 Safari/537.36",
        "curl": "curl/8.10.1",
        "iphone": "Mozilla/5.0 (iPhone; CPU iPhone OS 18_0 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148 Safari/604.1",
        "chrome": BROWSER,
    }
    rows = bronze(spark, *[ev(k, user_agent=v) for k, v in agents.items()], ev("none", user_agent=None))
    df = rows.transform(parse_events(EVENT_TYPES)).transform(assign_event_ids).transform(
        judge_rows(NOW, 10, BOTS.user_agent_regex, None, per_agent=per_agent))
    assert "_bot_agent" not in df.columns
    assert_judged(spark, df, [(k, ["bot_user_agent"], False) for k in ("google", "requests", "headless", "curl")]
                  + [("iphone", [], False), ("chrome", [], False), ("none", [], False)])


def _burst(prefix, count, seconds_apart, key, start_s=0):
    return [
        ev(f"{prefix}{i}", ts=f"2026-11-20T10:{(start_s + int(i * seconds_apart)) // 60:02d}:"
           f"{(start_s + int(i * seconds_apart)) % 60:02d}.{int(i * seconds_apart * 1000) % 1000:03d}Z",
           customer=None, anonymous_id=key, session_id=f"s-{key}", product_id=f"P{i}")
        for i in range(count)
    ]


def test_more_than_the_rate_in_any_minute_makes_every_event_of_the_id_a_bot(spark):
    bot = _burst("b", 61, 0.9, "a-bot")  # 61 events in 54 s
    human = _burst("h", 60, 0.9, "a-human")  # exactly the limit: not a bot
    slow = _burst("s", 100, 1.5, "a-slow")  # 100 events, never more than 40 a minute
    df = bronze(spark, *bot, *human, *slow).transform(prepared).transform(mark_duplicates(None)).transform(
        flag_bots(BOTS.user_agent_regex, 60))
    counts = {r["k"]: r["n"] for r in df.groupBy(F.col("anonymous_id").alias("k")).agg(
        F.sum(F.when(F.array_contains("_reasons", "bot_rate"), 1).otherwise(0)).alias("n")).collect()}
    assert counts == {"a-bot": 61, "a-human": 0, "a-slow": 0}


DOUBLE_LOAD_CASES = [("00.500", True), ("01.999", True), ("02.000", False), ("05.000", False)]


@pytest.fixture(scope="module")
def double_loads(spark):
    """Each gap of DOUBLE_LOAD_CASES as a customer of its own (a view, its reload after the gap, a view of
    another product), judged in one Spark job: event id -> (reasons, duplicate)."""
    events = []
    for case, (gap, _) in enumerate(DOUBLE_LOAD_CASES):
        customer = f"C{case}"
        events += [ev(f"{case}-e2", ts=f"2026-11-20T10:00:{gap}Z", event_type="view", product_id="p1", url="/p/P1",
                      customer=customer),
                   ev(f"{case}-e1", ts="2026-11-20T10:00:00.000Z", event_type="product_view", product_id="P1",
                      url="/p/P1", customer=customer),
                   ev(f"{case}-e3", ts="2026-11-20T10:00:00.100Z", event_type="product_view", product_id="P2",
                      url="/p/P2", customer=customer)]
    df = bronze(spark, *events).transform(prepared).transform(mark_duplicates(None)).transform(mark_double_loads(2.0))
    return reasons_by_id(df)


@pytest.mark.parametrize(("case", "gap", "collapsed"), [(i, *case) for i, case in enumerate(DOUBLE_LOAD_CASES)])
def test_pixel_double_loads_inside_the_window_collapse_to_the_earliest(double_loads, case, gap, collapsed):
    judged = {key.split("-")[1]: value for key, value in double_loads.items() if key.startswith(f"{case}-")}
    assert judged == {"e1": ([], False), "e2": (["double_load"] if collapsed else [], False), "e3": ([], False)}


def test_drop_expectations_reject_and_every_failure_is_counted(spark):
    expectations = [("has_url", "url IS NOT NULL", "drop"), ("cheap", "price < 100", "warn")]
    df = bronze(spark, ev("ok", properties={"price": "5"}), ev("no_url", url=None), ev("dear", properties={"price": "500"}),
                ev("bad", ts="x")).transform(prepared).transform(mark_duplicates(None)).transform(
        validate_events(NOW, 10)).transform(apply_expectations(expectations)).transform(with_outcome)
    got = {r["event_id"]: (r["_outcome"], r["_reasons"], r["_dq_failed"], r["_dq_checked"]) for r in df.collect()}
    assert got == {
        "ok": ("silver", [], [], True),
        "no_url": ("rejected", ["has_url"], ["has_url", "cheap"], True),
        "dear": ("silver", [], ["cheap"], True),
        "bad": ("rejected", ["invalid_timestamp"], [], False),
    }


def test_identity_map_and_stitching_give_pre_login_events_their_customer(spark):
    events = spark.createDataFrame(
        [("a1", None, datetime(2026, 11, 20, 10, 0)), ("a1", "C1", datetime(2026, 11, 20, 10, 5)),
         ("a1", "C2", datetime(2026, 11, 20, 11, 0)), ("a2", None, datetime(2026, 11, 20, 9, 0)),
         ("a3", "C3", datetime(2026, 11, 20, 8, 0))],
        "anonymous_id string, customer_id string, event_ts timestamp",
    )
    mapping = identity_pairs(events)
    expected = spark.createDataFrame(
        [("a1", "C2", datetime(2026, 11, 20, 10, 5), datetime(2026, 11, 20, 11, 0)),
         ("a3", "C3", datetime(2026, 11, 20, 8, 0), datetime(2026, 11, 20, 8, 0))],
        "anonymous_id string, customer_id string, first_seen_at timestamp, last_seen_at timestamp",
    )
    assert_df_equality(mapping, expected, ignore_row_order=True, ignore_nullable=True)
    stitched = events.transform(stitch_identities(mapping)).select("anonymous_id", "customer_id", "event_ts")
    assert sorted((r["anonymous_id"], r["customer_id"]) for r in stitched.collect()) == [
        ("a1", "C1"), ("a1", "C2"), ("a1", "C2"), ("a2", None), ("a3", "C3")
    ]


def test_the_whole_chain_judges_each_row_once(spark):
    chain = classify_events(EVENT_TYPES, NOW, 10, BOTS.user_agent_regex, 60, 2.0,
                            [("has_url", "url IS NOT NULL", "drop")], None)
    df = bronze(
        spark, ev("ok"), ev("ok"), ev("dbl", ts="2026-11-20T10:00:00.5Z"),
        ev("bot", user_agent="curl/8.1", ts="x"), {"_corrupt_record": "{"}, ev("nourl", url=None),
    ).transform(chain).select(F.substring("event_id", 1, 4).alias("event_id"), "_outcome", "_reasons")
    expected = spark.createDataFrame([
        ("ok", "silver", []), ("ok", "duplicate", []), ("dbl", "rejected", ["double_load"]),
        ("bot", "rejected", ["invalid_timestamp"]), ("gen-", "rejected", ["corrupt_record"]),
        ("nour", "rejected", ["has_url"]),
    ], "event_id string, _outcome string, _reasons array<string>")
    assert_df_equality(df, expected, ignore_row_order=True, ignore_nullable=True)


def test_a_web_purchase_without_an_order_id_is_kept_and_counted_by_the_shipped_rules(spark):
    from jobs.rules import load_quality_rules
    from tests.conftest import REPO

    shipped = [(e.name, e.expect, e.action) for e in load_quality_rules(REPO / "rules").for_table("silver.events")]
    df = bronze(spark, ev("p1", event_type="purchase", properties={"price": "20"}), ev("v1")).transform(
        prepared).transform(mark_duplicates(None)).transform(validate_events(NOW, 10)).transform(
        apply_expectations(shipped)).transform(with_outcome)
    got = {r["event_id"]: (r["_outcome"], r["_dq_failed"]) for r in df.collect()}
    assert got == {"p1": ("silver", ["purchase_has_order_id"]), "v1": ("silver", [])}
