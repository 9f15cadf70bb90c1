"""Silver products: catalog feed records -> one row per product, completed from events.

A catalog record is judged (reasons below), then the newest ``updated_at`` of each product wins,
whatever order the feed's files land in; on a tie, the record landed first. A product events
mention but no feed lists gets a row from the events themselves (``source = 'events'``: the
latest price, currency, category, and the name, brand and image events carry in their
properties), which the feed's record replaces as soon as one lands.

==========================  ===================================================================
reason                      the record
==========================  ===================================================================
corrupt_record              could not be parsed
missing_product_id          has no product id
invalid_updated_at          has no ``updated_at`` that parses as a time, or one in the future
invalid_price               has a price that is not a number, or a negative one
invalid_in_stock            has an ``in_stock`` that is not one of the yes/no spellings below
==========================  ===================================================================
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from transforms.bronze import BRONZE_CATALOG_SCHEMA
from transforms.schema import BOOL, LONG, MONEY, STR, STRINGS, TS, fields, names
from transforms.silver_events import parse_timestamp

Transform = Callable[[DataFrame], DataFrame]

PRODUCTS_SCHEMA = T.StructType(fields(
    ("product_id", STR), ("name", STR), ("url", STR), ("image_url", STR), ("price", MONEY), ("currency", STR),
    ("category", STR), ("brand", STR), ("in_stock", BOOL), ("updated_at", TS), ("source", STR),
    ("_source_file", STR), ("_ingested_at", TS), ("_batch_id", LONG),
))
PRODUCT_COLUMNS = tuple(n for n in names(PRODUCTS_SCHEMA) if not n.startswith("_"))
RAW_CATALOG_FIELDS = tuple(f.name for f in BRONZE_CATALOG_SCHEMA.fields if f.name != "_run_id")
REJECTED_PRODUCTS_SCHEMA = T.StructType(
    fields(("reasons", STRINGS))
    + [f for f in BRONZE_CATALOG_SCHEMA.fields if f.name != "_run_id"]
    + fields(("_batch_id", LONG))
)
REASON_CODES = ("corrupt_record", "missing_product_id", "invalid_updated_at", "invalid_price", "invalid_in_stock")
IN_STOCK = ("true", "yes", "y", "1", "in_stock", "instock", "in stock", "available")
OUT_OF_STOCK = ("false", "no", "n", "0", "out_of_stock", "outofstock", "out of stock", "sold_out", "sold out",
                "unavailable")


def _text(column: Column) -> Column:
    trimmed = F.trim(column)
    return F.when(trimmed != "", trimmed)


def product_id(column: Column) -> Column:
    """A product id as silver events hold it: trimmed, upper case, blank as null."""
    return F.upper(_text(column))


def _stock(text: Column) -> Column:
    value = F.lower(_text(text))
    return F.when(value.isin(*IN_STOCK), True).when(value.isin(*OUT_OF_STOCK), False)


def parse_catalog(latest: datetime) -> Transform:
    """Bronze catalog records -> product columns, the record in ``_raw`` and its ``_reasons``
    (an ``updated_at`` after ``latest`` is a clock error: refused)."""

    def transform(df: DataFrame) -> DataFrame:
        updated_at = parse_timestamp(F.col("updated_at"))
        price_text = _text(F.col("price"))
        price = price_text.try_cast(MONEY)
        stock = _stock(F.col("in_stock"))
        checks = [
            (F.col("_corrupt_record").isNotNull(), "corrupt_record"),
            (product_id(F.col("product_id")).isNull(), "missing_product_id"),
            (updated_at.isNull() | (updated_at > F.lit(latest)), "invalid_updated_at"),
            (price_text.isNotNull() & (price.isNull() | (price < 0)), "invalid_price"),
            (_text(F.col("in_stock")).isNotNull() & stock.isNull(), "invalid_in_stock"),
        ]
        corrupt = F.col("_corrupt_record").isNotNull()
        reasons = F.when(corrupt, F.array(F.lit("corrupt_record"))).otherwise(
            F.filter(F.array(*[F.when(c, F.lit(r)) for c, r in checks[1:]]), lambda r: r.isNotNull()))
        return df.select(
            F.struct(*RAW_CATALOG_FIELDS).alias("_raw"),
            reasons.alias("_reasons"),
            product_id(F.col("product_id")).alias("product_id"),
            _text(F.col("name")).alias("name"),
            _text(F.col("url")).alias("url"),
            _text(F.col("image_url")).alias("image_url"),
            price.alias("price"),
            F.upper(_text(F.col("currency"))).alias("currency"),
            F.lower(_text(F.col("category"))).alias("category"),
            _text(F.col("brand")).alias("brand"),
            stock.alias("in_stock"),
            updated_at.alias("updated_at"),
            F.lit("catalog").alias("source"),
            "_source_file", "_ingested_at",
        )

    return transform


def latest_per_product(products: DataFrame) -> DataFrame:
    """One row per product: the newest ``updated_at``; on a tie the record landed first."""
    order = Window.partitionBy("product_id").orderBy(
        F.desc("updated_at"), F.asc("_ingested_at"), F.asc("_source_file"),
        F.asc(F.sha2(F.to_json(F.struct(*PRODUCT_COLUMNS)), 256)))
    return products.withColumn("_n", F.row_number().over(order)).where("_n = 1").drop("_n")


def products_from_events(events: DataFrame) -> DataFrame:
    """Silver events -> one product row per product they mention, each field its latest known
    value (an event without it does not blank it)."""

    def latest(value: Column) -> Column:
        return F.max_by(value, F.when(value.isNotNull(), F.struct("event_ts", "event_id")))

    props = F.col("properties")
    viewed_url = F.when(F.col("event_type") == "product_view", F.col("url"))
    return (
        events.where(F.col("product_id").isNotNull())
        .groupBy("product_id")
        .agg(
            latest(_text(props["name"])).alias("name"),
            latest(viewed_url).alias("url"),
            latest(_text(F.coalesce(props["image_url"], props["image"]))).alias("image_url"),
            latest(F.col("price")).alias("price"),
            latest(F.col("currency")).alias("currency"),
            latest(F.col("category")).alias("category"),
            latest(_text(props["brand"])).alias("brand"),
            F.max("event_ts").alias("updated_at"),
            F.max("_ingested_at").alias("_ingested_at"),
        )
        .select(
            "product_id", "name", "url", "image_url", "price", "currency", "category", "brand",
            F.lit(None).cast(BOOL).alias("in_stock"), "updated_at", F.lit("events").alias("source"),
            F.lit(None).cast(STR).alias("_source_file"), "_ingested_at",
        )
    )
