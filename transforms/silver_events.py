"""Bronze events -> silver: parse, normalize, validate, dedup, filter bots, check expectations.

The steps chain with ``df.transform`` and never drop a row: each row ends with an ``_outcome``
of ``silver`` (clean), ``rejected`` (``_reasons`` says why) or ``duplicate`` (an exact repeat of
an event already kept, collapsed). The bronze record travels along untouched in ``_raw`` so a
rejected row keeps exactly what landed. Steps only judge rows no earlier step judged, so each
rejected row carries the reason(s) of the first step that caught it.

Order: corrupt -> exact duplicates -> validation -> bot user agents -> bot rates -> pixel
double-loads -> data-quality expectations.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from functools import reduce

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

Transform = Callable[[DataFrame], DataFrame]
STRING_MAP = T.MapType(T.StringType(), T.StringType())
PRICE = T.DecimalType(18, 2)

RAW_EVENT_FIELDS = (
    "event_id", "customer_id", "anonymous_id", "session_id", "event_type", "timestamp",
    "product_id", "url", "user_agent", "properties", "_rescued_data", "_corrupt_record",
    "_source", "_source_file", "_ingested_at",
)
CONTENT_FIELDS = tuple(f for f in RAW_EVENT_FIELDS if f not in ("_source_file", "_ingested_at"))
PROMOTED_PROPERTIES = ("price", "quantity", "currency", "category", "order_id")
LANDING_ORDER = ("_bronze_version", "_ingested_at", "_source_file", "_content_hash")

REASON_CODES = (
    "corrupt_record", "duplicate_conflict", "invalid_timestamp", "future_timestamp",
    "unknown_event_type", "missing_identity", "invalid_price", "negative_price", "bot_user_agent",
    "bot_rate", "double_load",
)

SILVER_EVENT_COLUMNS = (
    "event_id", "customer_id", "anonymous_id", "session_id", "event_type", "event_ts",
    "event_date", "product_id", "category", "top_category", "price", "quantity", "currency",
    "order_id", "url", "user_agent", "source", "properties",
)


def _blank_to_null(column: Column) -> Column:
    trimmed = F.trim(column)
    return F.when(trimmed != "", trimmed)


def _empty_map() -> Column:
    return F.create_map().cast(STRING_MAP)


def parse_timestamp(text: Column) -> Column:
    """Text -> UTC timestamp: ISO 8601 with ``Z``, an offset or `` UTC``; epoch millis or
    seconds; naive times are UTC (the session time zone). Anything else is null."""
    value = F.trim(text)
    return (
        F.when(value.rlike(r"^\d{12,13}$"), F.timestamp_millis(value.cast("long")))
        .when(value.rlike(r"^\d{9,10}$"), F.timestamp_seconds(value.cast("long")))
        .otherwise(value.try_cast(T.TimestampType()))
    )


def name_key(column: Column) -> Column:
    """Same as jobs.rules.name_key: lower case, trimmed, runs of space/-/_ as one ``_``."""
    return F.regexp_replace(F.lower(F.trim(column)), r"[\s_-]+", "_")


def _lookup(mapping: Mapping[str, str], key: Column) -> Column:
    if not mapping:
        return F.lit(None).cast(T.StringType())
    pairs = [F.lit(part) for item in sorted(mapping.items()) for part in item]
    return F.element_at(F.create_map(*pairs), key)


def parse_events(event_types: Mapping[str, str]) -> Transform:
    """Bronze columns -> canonical silver columns, the bronze record kept in ``_raw``.

    ``event_types`` maps :func:`name_key` of each known name to its canonical type; unknown
    names give a null ``event_type``. Product ids are trimmed and upper-cased, categories
    lower-cased with ``top_category`` their first level, prices decimals, currencies upper-cased;
    properties not promoted to columns, and fields rescued at landing, stay in ``properties``.
    """

    def transform(df: DataFrame) -> DataFrame:
        props = F.coalesce(F.col("properties"), _empty_map())
        rescued = F.coalesce(F.from_json("_rescued_data", STRING_MAP), _empty_map())
        category = F.lower(_blank_to_null(props["category"]))
        event_ts = parse_timestamp(F.col("timestamp"))
        return df.select(
            F.struct(*RAW_EVENT_FIELDS).alias("_raw"),
            _blank_to_null(F.col("customer_id")).alias("customer_id"),
            _blank_to_null(F.col("anonymous_id")).alias("anonymous_id"),
            _blank_to_null(F.col("session_id")).alias("session_id"),
            _lookup(event_types, name_key(F.col("event_type"))).alias("event_type"),
            event_ts.alias("event_ts"),
            F.to_date(event_ts).alias("event_date"),
            F.upper(_blank_to_null(F.col("product_id"))).alias("product_id"),
            category.alias("category"),
            F.split(category, r"\.").getItem(0).alias("top_category"),
            _blank_to_null(props["price"]).try_cast(PRICE).alias("price"),
            _blank_to_null(props["quantity"]).try_cast(T.IntegerType()).alias("quantity"),
            F.upper(_blank_to_null(props["currency"])).alias("currency"),
            _blank_to_null(props["order_id"]).alias("order_id"),
            _blank_to_null(F.col("url")).alias("url"),
            _blank_to_null(F.col("user_agent")).alias("user_agent"),
            F.col("_source").alias("source"),
            F.map_filter(
                F.map_concat(props, rescued), lambda k, _v: ~k.isin(*PROMOTED_PROPERTIES)
            ).alias("properties"),
            F.col("_bronze_version"),
            F.col("_source_file"),
            F.col("_ingested_at"),
            F.array().cast(T.ArrayType(T.StringType())).alias("_reasons"),
            F.lit(False).alias("_duplicate"),
        )

    return transform


def assign_event_ids(df: DataFrame) -> DataFrame:
    """``_content_hash`` of what was sent (not where or when it landed), and ``event_id``: the
    sent id, or ``gen-`` + the content hash for events sent without one (deterministic)."""
    content = F.to_json(F.struct(*[F.col(f"_raw.{f}") for f in CONTENT_FIELDS]))
    return df.withColumn("_content_hash", F.sha2(content, 256)).withColumn(
        "event_id",
        F.coalesce(
            _blank_to_null(F.col("_raw.event_id")),
            F.concat(F.lit("gen-"), F.substring("_content_hash", 1, 32)),
        ),
    )


def _judged() -> Column:
    return (F.size("_reasons") > 0) | F.col("_duplicate")


def _add_reason(condition: Column, reason: str | Column) -> Column:
    reason_col = F.lit(reason) if isinstance(reason, str) else reason
    return F.when(condition, F.array_append("_reasons", reason_col)).otherwise(F.col("_reasons"))


def reject_corrupt(df: DataFrame) -> DataFrame:
    return df.withColumn("_reasons", _add_reason(F.col("_raw._corrupt_record").isNotNull(), "corrupt_record"))


def judged_events(kept: DataFrame | None, rejected: DataFrame | None) -> DataFrame | None:
    """(event_id, _content_hash) once per event earlier batches judged, from silver's rows
    (``kept``) and rejected rows; an id in both keeps silver's hash. None when there are none."""
    judged = [frame.where(F.col("event_id").isNotNull()).select("event_id", "_content_hash", F.lit(rank).alias("_rank"))
              for rank, frame in enumerate((kept, rejected)) if frame is not None]
    if not judged:
        return None
    return reduce(DataFrame.unionByName, judged).groupBy("event_id").agg(
        F.min_by("_content_hash", "_rank").alias("_content_hash"))


def mark_duplicates(existing: DataFrame | None) -> Transform:
    """Exact ``event_id`` repeats: the first landed is kept; a later one with the same content
    is a collapsed ``duplicate``, with other content it is rejected as ``duplicate_conflict``.

    ``existing`` (``event_id``, ``_content_hash``) are the events earlier batches already judged —
    in silver or rejected: a repeat of one of those is judged the same way, so dedup holds across
    batches and a re-delivered file cannot let through what was turned away the first time. A
    known event without a hash (rejected before hashes were kept) takes the batch's first copy's.
    """

    def transform(df: DataFrame) -> DataFrame:
        open_ = ~_judged()
        first = Window.partitionBy("event_id", open_).orderBy(*LANDING_ORDER)
        ranked = df.withColumn("_rank", F.row_number().over(first)).withColumn(
            "_first_hash", F.first("_content_hash").over(first)
        )
        if existing is not None:
            known = existing.select("event_id", F.col("_content_hash").alias("_known_hash"),
                                    F.lit(True).alias("_known"))
            ranked = ranked.join(known.dropDuplicates(["event_id"]), "event_id", "left")
        else:
            ranked = ranked.withColumn("_known_hash", F.lit(None).cast(T.StringType())).withColumn(
                "_known", F.lit(None).cast(T.BooleanType()))
        winner_hash = F.coalesce(F.col("_known_hash"), F.col("_first_hash"))
        repeat = open_ & (F.col("_known").isNotNull() | (F.col("_rank") > 1))
        same = F.col("_content_hash") == winner_hash
        return (
            ranked.withColumn("_duplicate", repeat & same)
            .withColumn("_reasons", _add_reason(repeat & ~same, "duplicate_conflict"))
            .drop("_rank", "_first_hash", "_known_hash", "_known")
        )

    return transform


def validate_events(processed_at: datetime, max_clock_skew_minutes: float) -> Transform:
    """Reason codes for events that cannot be trusted as sent."""
    latest = F.lit(processed_at + timedelta(minutes=max_clock_skew_minutes)).cast(T.TimestampType())

    def transform(df: DataFrame) -> DataFrame:
        open_ = ~_judged()
        price_text = _blank_to_null(F.col("_raw.properties")["price"])
        checks = [
            (F.col("event_ts").isNull(), "invalid_timestamp"),
            (F.col("event_ts") > latest, "future_timestamp"),
            (F.col("event_type").isNull(), "unknown_event_type"),
            (F.col("customer_id").isNull() & F.col("anonymous_id").isNull(), "missing_identity"),
            (price_text.isNotNull() & F.col("price").isNull(), "invalid_price"),
            (F.col("price") < 0, "negative_price"),
        ]
        found = F.array_compact(F.array(*[F.when(c, F.lit(r)) for c, r in checks]))
        return df.withColumn(
            "_reasons", F.when(open_, F.array_union("_reasons", found)).otherwise(F.col("_reasons"))
        )

    return transform


def flag_bots(user_agent_regex: str, max_events_per_minute: int) -> Transform:
    """``bot_user_agent`` for known bot signatures; ``bot_rate`` for every event of a session
    or anonymous id with more than ``max_events_per_minute`` events in any 60 s window."""

    def transform(df: DataFrame) -> DataFrame:
        ua_bot = ~_judged() & F.coalesce(F.col("user_agent").rlike(user_agent_regex), F.lit(False))
        flagged = df.withColumn("_reasons", _add_reason(ua_bot, "bot_user_agent"))
        open_ = ~_judged()
        at = F.unix_micros("event_ts")
        rate_bot = F.lit(False)
        for key in ("session_id", "anonymous_id"):
            minute = Window.partitionBy(key).orderBy(at).rangeBetween(0, 60_000_000 - 1)
            in_minute = F.count(F.when(open_, 1)).over(minute)
            busiest = F.max(F.when(open_, in_minute)).over(Window.partitionBy(key))
            column = f"_busiest_{key}"
            flagged = flagged.withColumn(column, busiest)
            rate_bot = rate_bot | (F.col(key).isNotNull() & (F.col(column) > max_events_per_minute))
        return flagged.withColumn("_reasons", _add_reason(open_ & rate_bot, "bot_rate")).drop(
            "_busiest_session_id", "_busiest_anonymous_id"
        )

    return transform


def mark_double_loads(window_seconds: float) -> Transform:
    """Pixel double-loads: an event with the same identity, type, product and url as the one
    before it, less than ``window_seconds`` later, is rejected as ``double_load`` (so a burst
    collapses to its earliest event)."""

    def transform(df: DataFrame) -> DataFrame:
        open_ = ~_judged()
        identity = F.coalesce("customer_id", "anonymous_id")
        same_load = Window.partitionBy(
            open_, identity, "event_type", "product_id", "url"
        ).orderBy("event_ts", *LANDING_ORDER)
        gap = F.unix_micros("event_ts") - F.unix_micros(F.lag("event_ts").over(same_load))
        double = open_ & F.coalesce(gap < int(window_seconds * 1_000_000), F.lit(False))
        return df.withColumn("_reasons", _add_reason(double, "double_load"))

    return transform


def apply_expectations(expectations: Sequence[tuple[str, str, str]]) -> Transform:
    """(name, SQL boolean, action) -> ``_dq_checked`` (the row was clean so far and so checked)
    and ``_dq_failed``: names of expectations it does not meet (false or null); the names of
    ``drop`` ones also become its reasons."""

    def transform(df: DataFrame) -> DataFrame:
        open_ = ~_judged()
        failed = [F.when(open_ & ~F.coalesce(F.expr(sql), F.lit(False)), F.lit(name))
                  for name, sql, _ in expectations]
        dropped = [F.when(open_ & ~F.coalesce(F.expr(sql), F.lit(False)), F.lit(name))
                   for name, sql, action in expectations if action == "drop"]
        empty = F.array().cast(T.ArrayType(T.StringType()))
        return df.withColumn("_dq_checked", open_).withColumn(
            "_dq_failed", F.array_compact(F.array(*failed)) if failed else empty
        ).withColumn(
            "_reasons",
            F.array_union("_reasons", F.array_compact(F.array(*dropped))) if dropped else F.col("_reasons"),
        )

    return transform


def with_outcome(df: DataFrame) -> DataFrame:
    return df.withColumn(
        "_outcome",
        F.when(F.col("_duplicate"), "duplicate")
        .when(F.size("_reasons") > 0, "rejected")
        .otherwise("silver"),
    )


def identity_pairs(events: DataFrame) -> DataFrame:
    """(anonymous_id, customer_id, first_seen_at, last_seen_at) of events that carry both: an
    anonymous id seen with a customer id belongs to that customer (the latest one wins)."""
    both = events.where(F.col("anonymous_id").isNotNull() & F.col("customer_id").isNotNull())
    per_pair = both.groupBy("anonymous_id", "customer_id").agg(
        F.min("event_ts").alias("first_seen_at"), F.max("event_ts").alias("last_seen_at")
    )
    return per_pair.groupBy("anonymous_id").agg(
        F.max_by("customer_id", F.struct("last_seen_at", "customer_id")).alias("customer_id"),
        F.min("first_seen_at").alias("first_seen_at"),
        F.max("last_seen_at").alias("last_seen_at"),
    )


def stitch_identities(identity_map: DataFrame) -> Transform:
    """Events with only an anonymous id get the customer id it maps to, so pre-login events
    count for that customer."""

    def transform(df: DataFrame) -> DataFrame:
        mapping = identity_map.select("anonymous_id", F.col("customer_id").alias("_mapped_customer"))
        return (
            df.join(mapping, "anonymous_id", "left")
            .withColumn("customer_id", F.coalesce("customer_id", "_mapped_customer"))
            .drop("_mapped_customer")
        )

    return transform


def classify_events(
    event_types: Mapping[str, str],
    processed_at: datetime,
    max_clock_skew_minutes: float,
    user_agent_regex: str,
    max_events_per_minute: int,
    double_load_window_seconds: float,
    expectations: Sequence[tuple[str, str, str]],
    existing: DataFrame | None,
) -> Transform:
    """The whole chain, bronze rows in, every row out with its ``_outcome``."""

    def transform(df: DataFrame) -> DataFrame:
        return (
            df.transform(parse_events(event_types))
            .transform(assign_event_ids)
            .transform(reject_corrupt)
            .transform(mark_duplicates(existing))
            .transform(validate_events(processed_at, max_clock_skew_minutes))
            .transform(flag_bots(user_agent_regex, max_events_per_minute))
            .transform(mark_double_loads(double_load_window_seconds))
            .transform(apply_expectations(expectations))
            .transform(with_outcome)
        )

    return transform
