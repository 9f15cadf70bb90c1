from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from jobs.runtime.tables import CUSTOMERS_SCHEMA, SILVER_EVENTS_SCHEMA
from transforms.gold_features import customer_features, window_start

AS_OF = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def t(text):
    return datetime.fromisoformat(text)


def events(spark, *rows):
    """(customer, type, ts, session, product, category, price, quantity, order) rows."""
    names = SILVER_EVENTS_SCHEMA.fieldNames()
    out = []
    for i, (customer, kind, ts, session, product, category, price, quantity, order) in enumerate(rows):
        row = dict.fromkeys(names)
        row.update(event_id=f"e{i}", customer_id=customer, event_type=kind, event_ts=ts, event_date=ts.date(),
                   session_id=session, product_id=product, category=category,
                   top_category=category.split(".")[0] if category else None,
                   price=Decimal(str(price)) if price is not None else None, quantity=quantity, order_id=order)
        out.append(row)
    return spark.createDataFrame(out, SILVER_EVENTS_SCHEMA)


def customers(spark, *rows):
    names = CUSTOMERS_SCHEMA.fieldNames()
    out = []
    for customer_id, birth_date, city, consent in rows:
        row = dict.fromkeys(names)
        row.update(customer_id=customer_id, birth_date=birth_date, city=city, email_consent=consent,
                   email=f"{customer_id.lower()}@x.com", first_name=customer_id)
        out.append(row)
    return spark.createDataFrame(out, CUSTOMERS_SCHEMA)


def features(spark, event_df, customer_df):
    recent = event_df.where(event_df.event_date >= window_start(AS_OF).date())
    result = event_df.transform(customer_features(AS_OF, HOUR, recent, customer_df))
    return {r["customer_id"]: r.asDict() for r in result.collect()}


@pytest.fixture(scope="module")
def got(spark):
    df = events(
        spark,
        ("C1", "page_view", t("2026-11-13 12:00:00"), "s0", None, None, None, None, None),  # exactly as_of - 7d
        ("C1", "product_view", t("2026-11-20 12:00:00"), "s4", "P9", "kids.toys", 5, None, None),  # at as_of
        ("C1", "product_view", t("2026-11-19 10:00:00"), "s1", "P1", "electronics.smartphone", 100, None, None),
        ("C1", "product_view", t("2026-11-19 11:00:00"), "s1", "P2", "apparel.shoes", 60, None, None),
        ("C1", "purchase", t("2026-11-10 10:00:00"), "s2", "P1", "electronics.smartphone", 100, 2, "O1"),
        ("C1", "purchase", t("2026-11-10 10:00:00"), "s2", "P3", "apparel.shirt", 50, None, "O1"),
        ("C1", "purchase", t("2026-08-01 09:00:00"), "s9", "P4", "kids.toys", 30, 1, "O0"),  # > 90 days ago
        ("C1", "add_to_cart", t("2026-11-19 09:00:00"), "s1", "P1", "electronics.smartphone", 100, 1, None),
        ("C1", "add_to_cart", t("2026-11-20 11:30:00"), "s3", "P2", "apparel.shoes", 60, 1, None),  # window open
        ("C2", "cart_abandonment", t("2026-11-17 10:00:00"), "s5", None, None, None, None, None),
        ("C2", "add_to_cart", t("2026-11-18 10:00:00"), "s6", "P5", "sport.bicycle", 500, 1, None),
        ("C2", "purchase", t("2026-11-18 10:30:00"), "s6", "P5", "sport.bicycle", 500, 1, "O2"),
        ("C3", "cart_abandonment", t("2026-11-20 11:59:00"), "s7", None, None, None, None, None),
        ("C5", "add_to_cart", t("2026-11-20 11:00:00"), "s8", "P6", "kids.toys", 10, 1, None),  # exactly 1 h ago
    )
    crm = customers(spark, ("C1", date(1995, 11, 20), "New York", True), ("C4", date(1995, 11, 21), "Boston", None))
    return features(spark, df, crm)


def test_windows_are_half_open_and_money_counts_orders(got):
    c1 = got["C1"]
    assert c1["events_7d"] == 5  # the event at as_of - 7d counts, the one at as_of does not
    assert c1["sessions_30d"] == 4
    assert (c1["purchases_30d"], c1["purchases_90d"], c1["purchases_lifetime"]) == (1, 1, 2)
    assert (c1["revenue_90d"], c1["revenue_lifetime"], c1["avg_order_value"]) == (
        Decimal("250.00"), Decimal("280.00"), Decimal("140.00"))
    assert (c1["first_seen_at"], c1["last_event_at"]) == (t("2026-08-01 09:00:00"), t("2026-11-20 11:30:00"))
    assert (c1["days_since_last_event"], c1["last_purchase_at"], c1["days_since_last_purchase"]) == (
        0, t("2026-11-10 10:00:00"), 10)


def test_browsing_features_ignore_events_at_or_after_as_of(got):
    c1 = got["C1"]
    assert (c1["last_viewed_product"], c1["last_viewed_product_at"], c1["last_viewed_category"]) == (
        "P2", t("2026-11-19 11:00:00"), "apparel.shoes")
    assert (c1["recent_view_category"], c1["viewed_categories_7d"]) == ("apparel", ["apparel", "electronics"])


def test_cart_abandonment_needs_the_window_to_pass_and_no_purchase_after(got):
    assert (got["C1"]["cart_abandoned_at"], got["C1"]["abandoned_products"]) == (t("2026-11-19 09:00:00"), ["P1"])
    assert (got["C2"]["cart_abandoned_at"], got["C2"]["abandoned_products"]) == (None, [])  # purchase cancels
    assert (got["C3"]["cart_abandoned_at"], got["C3"]["abandoned_products"]) == (t("2026-11-20 11:59:00"), [])
    assert (got["C5"]["cart_abandoned_at"], got["C5"]["abandoned_products"]) == (t("2026-11-20 11:00:00"), ["P6"])


def test_profile_attributes_and_age_at_as_of(got):
    assert (got["C1"]["age"], got["C1"]["city"], got["C1"]["email_consent"]) == (31, "New York", True)
    c4 = got["C4"]  # in the CRM, no events yet
    assert (c4["age"], c4["email_consent"], c4["events_7d"], c4["purchases_lifetime"]) == (30, False, 0, 0)
    assert (c4["revenue_lifetime"], c4["viewed_categories_7d"], c4["last_event_at"], c4["r_score"]) == (
        Decimal("0.00"), [], None, None)
    assert all(row["as_of"] == AS_OF.replace(tzinfo=None) for row in got.values())


def test_rfm_scores_are_quintiles_among_purchasers(spark):
    rows = []
    for n in range(1, 6):  # C1 bought once, long ago, cheaply ... C5 five times, recently, dearly
        for k in range(n):
            rows.append((f"C{n}", "purchase", t("2026-11-19 00:00:00") - timedelta(days=10 * (5 - n), hours=k),
                         "s", "P", "kids.toys", 10 * n, 1, f"O{n}{k}"))
    rows.append(("C6", "page_view", t("2026-11-19 00:00:00"), "s", None, None, None, None, None))
    got = features(spark, events(spark, *rows), customers(spark))
    scores = {c: (r["r_score"], r["f_score"], r["m_score"], r["rfm_segment"]) for c, r in got.items()}
    assert scores == {
        "C1": (1, 1, 1, "hibernating"), "C2": (2, 2, 2, "hibernating"), "C3": (3, 3, 3, "promising"),
        "C4": (4, 4, 4, "champions"), "C5": (5, 5, 5, "champions"), "C6": (None, None, None, None),
    }


def test_purchases_without_an_order_id_count_as_orders_of_their_own(spark):
    df = events(spark, ("C1", "purchase", t("2026-11-19 10:00:00"), "s1", "P1", "kids.toys", 10, 1, None),
                ("C1", "purchase", t("2026-11-19 11:00:00"), "s2", "P2", "kids.toys", 30, 1, None))
    c1 = features(spark, df, customers(spark))["C1"]
    assert (c1["purchases_lifetime"], c1["revenue_lifetime"], c1["avg_order_value"]) == (
        2, Decimal("40.00"), Decimal("20.00"))
