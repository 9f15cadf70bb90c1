from datetime import UTC, datetime
from decimal import Decimal

from chispa import assert_df_equality

from jobs.runtime.tables import BRONZE_CATALOG_SCHEMA, SILVER_EVENTS_SCHEMA
from transforms.silver_products import PRODUCT_COLUMNS, latest_per_product, parse_catalog, products_from_events

FIELDS = [f for f in BRONZE_CATALOG_SCHEMA.fields if f.name != "_run_id"]
LATEST = datetime(2026, 11, 30, tzinfo=UTC)
OUT = "product_id string, name string, price decimal(18,2), in_stock boolean, updated_at timestamp, source string"


def catalog(spark, *records):
    rows = []
    for i, record in enumerate(records):
        row = {f.name: None for f in FIELDS}
        row.update({"_source": "catalog", "_source_file": record.pop("_file", f"f{i}.csv"),
                    "_ingested_at": datetime(2026, 11, 20, 9, 0, 0)})
        row.update(record)
        rows.append(row)
    return spark.createDataFrame(rows, ", ".join(f"`{f.name}` {f.dataType.simpleString()}" for f in FIELDS))


def item(product_id, updated_at="2026-11-01T10:00:00Z", **extra):
    return {"product_id": product_id, "updated_at": updated_at, **extra}


def test_catalog_records_are_judged_with_every_reason_and_normalized(spark):
    records = catalog(
        spark,
        item(" p1 ", name=" Desk Lamp ", price="19.90", currency="usd", category="Home.Lighting", in_stock="Yes"),
        item("P2", in_stock="sold out"),
        item(None, name="no id"),
        item("P3", updated_at="yesterday"),
        item("P4", updated_at="2027-01-01T00:00:00Z"),
        item("P5", price="ten"),
        item("P6", price="-1"),
        item("P7", in_stock="maybe"),
        {"_corrupt_record": "P8,\"broken", "product_id": None, "updated_at": None},
    )
    rows = {r["_raw"]["_source_file"]: r for r in records.transform(parse_catalog(LATEST)).collect()}
    assert {f: list(r["_reasons"]) for f, r in rows.items()} == {
        "f0.csv": [], "f1.csv": [], "f2.csv": ["missing_product_id"], "f3.csv": ["invalid_updated_at"],
        "f4.csv": ["invalid_updated_at"], "f5.csv": ["invalid_price"], "f6.csv": ["invalid_price"],
        "f7.csv": ["invalid_in_stock"], "f8.csv": ["corrupt_record"]}
    lamp = rows["f0.csv"]
    assert (lamp["product_id"], lamp["name"], lamp["price"], lamp["currency"], lamp["category"], lamp["in_stock"]) == (
        "P1", "Desk Lamp", Decimal("19.90"), "USD", "home.lighting", True)
    assert rows["f1.csv"]["in_stock"] is False and rows["f1.csv"]["source"] == "catalog"


def test_the_newest_record_of_a_product_wins_and_on_a_tie_the_first_landed(spark):
    records = catalog(
        spark,
        item("P1", "2026-11-01T10:00:00Z", price="10", _file="b.csv"),
        item("P1", "2026-11-03T10:00:00Z", price="12", _file="c.csv"),
        item("P1", "2026-11-02T10:00:00Z", price="11", _file="a.csv"),
        item("P2", "2026-11-01T10:00:00Z", price="20", in_stock="no", _file="b.csv"),
        item("P2", "2026-11-01T10:00:00Z", price="21", in_stock="yes", _file="a.csv"),
    )
    newest = latest_per_product(records.transform(parse_catalog(LATEST)))
    expected = spark.createDataFrame([
        ("P1", None, Decimal("12.00"), None, datetime(2026, 11, 3, 10), "catalog"),
        ("P2", None, Decimal("21.00"), True, datetime(2026, 11, 1, 10), "catalog"),
    ], OUT)
    assert_df_equality(newest.select(*expected.columns), expected, ignore_row_order=True, ignore_nullable=True)


def test_products_from_events_keep_each_field_s_latest_known_value(spark):
    def event(event_id, ts, event_type="product_view", product_id="P1", **extra):
        row = {f.name: None for f in SILVER_EVENTS_SCHEMA.fields}
        row.update({"event_id": event_id, "event_ts": ts, "event_date": ts.date(), "event_type": event_type,
                    "product_id": product_id, "properties": {}, "_ingested_at": ts, **extra})
        return row

    events = spark.createDataFrame([
        event("e1", datetime(2026, 11, 1, 9), price=Decimal("10.00"), currency="USD", category="kids.toys",
              url="/p/P1", properties={"name": "Kite", "brand": "Acme"}),
        event("e2", datetime(2026, 11, 2, 9), event_type="add_to_cart", price=Decimal("9.00"), url="/cart"),
        event("e3", datetime(2026, 11, 1, 8), price=Decimal("99.00"), properties={"name": "Old kite"}),
        event("e4", datetime(2026, 11, 3, 9), event_type="page_view", product_id=None, price=Decimal("1.00")),
    ], SILVER_EVENTS_SCHEMA)
    products = products_from_events(events).collect()
    assert [(p["product_id"], p["name"], p["brand"], p["price"], p["currency"], p["category"], p["url"],
             p["in_stock"], p["updated_at"], p["source"]) for p in products] == [
        ("P1", "Kite", "Acme", Decimal("9.00"), "USD", "kids.toys", "/p/P1", None, datetime(2026, 11, 2, 9), "events")]
    assert set(PRODUCT_COLUMNS) <= set(products_from_events(events).columns)
