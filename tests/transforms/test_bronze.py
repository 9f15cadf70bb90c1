from datetime import datetime

import pytest
from chispa import assert_df_equality
from pyspark.sql import types as T

from transforms.bronze import FieldMapping, conform_to, map_csv_records, parse_json_records, with_landing_metadata

WEB = FieldMapping("events")
EVENT_OUT = T.StructType(
    [T.StructField(c, T.StringType()) for c in (
        "event_id", "customer_id", "anonymous_id", "session_id", "event_type", "timestamp",
        "product_id", "url", "user_agent",
    )]
    + [
        T.StructField("properties", T.MapType(T.StringType(), T.StringType())),
        T.StructField("_rescued_data", T.StringType()),
        T.StructField("_corrupt_record", T.StringType()),
        T.StructField("_source_file", T.StringType()),
    ]
)
NONE9 = (None,) * 9


def _lines(spark, *lines):
    return spark.createDataFrame([(line, "f.json") for line in lines], "value string, _source_file string")


def _parsed(spark, source, *lines):
    return _lines(spark, *lines).transform(parse_json_records(source)).select(*EVENT_OUT.fieldNames())


def test_web_event_keeps_every_value_as_text(spark):
    line = (
        '{"event_id":"e1","customer_id":"C1","anonymous_id":"a1","session_id":"s1",'
        '"event_type":"AddToCart","timestamp":1763640000000,"product_id":" p1 ","url":"/p/1",'
        '"user_agent":"UA","properties":{"price":12.5,"quantity":2,"currency":"usd"}}'
    )
    expected = spark.createDataFrame(
        [("e1", "C1", "a1", "s1", "AddToCart", "1763640000000", " p1 ", "/p/1", "UA",
          {"price": "12.5", "quantity": "2", "currency": "usd"}, None, None, "f.json")],
        EVENT_OUT,
    )
    assert_df_equality(_parsed(spark, WEB, line), expected)


def test_unmapped_fields_are_rescued_as_json(spark):
    line = '{"event_type":"page_view","timestamp":"2026-11-20T10:00:00Z","campaign":{"utm":"x"},"ab":7}'
    expected = spark.createDataFrame(
        [(None, None, None, None, "page_view", "2026-11-20T10:00:00Z", None, None, None, {},
          '{"campaign":"{\\"utm\\":\\"x\\"}","ab":"7"}', None, "f.json")],
        EVENT_OUT,
    )
    assert_df_equality(_parsed(spark, WEB, line), expected)


@pytest.mark.parametrize(
    "line",
    [
        '{"event_id":"e1","event_type":"page_view","timestamp":',
        '{"event_type":"page_view","timestamp":}',
        "GET /pixel.gif?e=view HTTP/1.1",
        "[1, 2, 3]",
    ],
)
def test_unparseable_line_keeps_its_raw_text_and_nothing_else(spark, line):
    expected = spark.createDataFrame([(*NONE9, None, None, line, "f.json")], EVENT_OUT)
    assert_df_equality(_parsed(spark, WEB, line), expected)


def test_properties_that_are_not_an_object_are_rescued_not_lost(spark):
    line = '{"event_type":"page_view","timestamp":"t","properties":"price=5"}'
    expected = spark.createDataFrame(
        [(None, None, None, None, "page_view", "t", None, None, None, {},
          '{"properties":"price=5"}', None, "f.json")],
        EVENT_OUT,
    )
    assert_df_equality(_parsed(spark, WEB, line), expected)


def test_json_source_renames_fields_through_its_mapping(spark):
    source = FieldMapping(
        "events", properties_field=None,
        columns={"customer_id": "userId", "event_type": "name", "timestamp": "ts"},
        properties={"price": "value"},
    )
    line = '{"userId":"C9","name":"purchase","ts":"2026-11-20 10:00:00 UTC","value":"9.99"}'
    expected = spark.createDataFrame(
        [(None, "C9", None, None, "purchase", "2026-11-20 10:00:00 UTC", None, None, None,
          {"price": "9.99"}, None, None, "f.json")],
        EVENT_OUT,
    )
    assert_df_equality(_parsed(spark, source, line), expected)


REES46 = FieldMapping(
    "events",
    columns={"timestamp": "event_time", "customer_id": "user_id", "session_id": "user_session"},
    properties={"price": "price", "category": "category_code", "brand": "brand"},
)


def test_csv_columns_map_to_bronze_and_unnamed_ones_are_rescued(spark):
    header = ["event_time", "event_type", "product_id", "category_code", "brand", "price",
              "user_id", "user_session", "category_id"]
    raw = spark.createDataFrame(
        [("2019-10-01 00:00:00 UTC", "view", "44600062", None, "shiseido", "35.79", "541312140",
          "72d7", "2103807459595387724", None, "f.csv")],
        ", ".join(f"`{h}` string" for h in header) + ", _corrupt_record string, _source_file string",
    )
    expected = spark.createDataFrame(
        [(None, "541312140", None, "72d7", "view", "2019-10-01 00:00:00 UTC", "44600062", None,
          None, {"price": "35.79", "brand": "shiseido"}, '{"category_id":"2103807459595387724"}',
          None, "f.csv")],
        EVENT_OUT,
    )
    actual = raw.transform(map_csv_records(REES46, header)).select(*EVENT_OUT.fieldNames())
    # A map built from the mapping is never null; nullability is the table's business.
    assert_df_equality(actual, expected, ignore_nullable=True)


def test_landing_metadata_and_conform_to_the_table_schema(spark):
    from jobs.runtime.tables import BRONZE_EVENTS_SCHEMA

    at = datetime(2026, 11, 20, 12, 0, 0)
    landed = (
        _lines(spark, '{"event_type":"page_view"}')
        .transform(parse_json_records(WEB))
        .transform(with_landing_metadata("web", "run-1", at))
        .transform(conform_to(BRONZE_EVENTS_SCHEMA))
    )
    assert landed.columns == BRONZE_EVENTS_SCHEMA.fieldNames()
    row = landed.select("_source", "_run_id", "_ingested_at", "_source_file").first()
    assert tuple(row) == ("web", "run-1", at, "f.json")
