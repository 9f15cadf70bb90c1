"""Bronze events -> silver: parse, normalize, validate, dedup, filter bots, check expectations.

The steps chain with ``df.transform`` and never drop a row: each row ends with an ``_outcome``
of ``silver`` (clean), ``rejected`` (``_reasons`` says why) or ``duplicate`` (an exact repeat of
an event already kept, collapsed). The bronze record travels along untouched in ``_raw`` so a
rejected row keeps exactly what landed. Steps only judge rows no earlier step judged, so each
rejected row carries the reason(s) of the first step that caught it; ``_judged_at`` is the
number of that step (:data:`NOT_JUDGED` while a row is clean).

Order (step numbers): 1 corrupt -> 2 exact duplicates -> 3 validation -> 4 bot user agents ->
5 bot rates -> 6 pixel double-loads -> 7 data-quality expectations.

Steps 5 and 6 look at a row's neighbours in time. Rows judged in earlier batches can join them
as *neighbours* (``_neighbour``; see :func:`as_neighbours`): they count in the windows exactly as
they did when they were judged, so the outcome does not depend on how events were split into
batches. A neighbour that was clean (``_in_silver``) and is now caught is a *retraction*.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from functools import reduce

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from transforms.bronze import BRONZE_EVENTS_SCHEMA
from transforms.schema import DATE, INT, LONG, MONEY, STR, STRING_MAP, STRINGS, TS, fields, normalized_id

Transform = Callable[[DataFrame], DataFrame]
PRICE = MONEY

RAW_EVENT_FIELDS = tuple(f.name for f in BRONZE_EVENTS_SCHEMA.fields if f.name != "_run_id")
CONTENT_FIELDS = tuple(f for f in RAW_EVENT_FIELDS if f not in ("_source_file", "_ingested_at"))
PROMOTED_PROPERTIES = ("price", "quantity", "currency", "category", "order_id")
# First landed wins: the earlier landing batch, then file, then (for copies in one file) content.
LANDING_ORDER = ("_ingested_at", "_source_file", "_content_hash")
PROVENANCE = fields(("_source_file", STR), ("_ingested_at", TS), ("_content_hash", STR), ("_batch_id", LONG))

SILVER_EVENTS_SCHEMA = T.StructType(fields(
    ("event_id", STR), ("customer_id", STR), ("anonymous_id", STR), ("session_id", STR), ("event_type", STR),
    ("event_ts", TS), ("event_date", DATE), ("product_id", STR), ("category", STR), ("top_category", STR),
    ("price", PRICE), ("quantity", INT), ("currency", STR), ("order_id", STR), ("url", STR),
    ("user_agent", STR), ("source", STR), ("properties", STRING_MAP),
) + PROVENANCE)
SILVER_EVENT_COLUMNS = tuple(f.name for f in SILVER_EVENTS_SCHEMA.fields if not f.name.startswith("_"))

REJECTED_EVENTS_SCHEMA = T.StructType(
    fields(("event_id", STR), ("reasons", STRINGS))
    + [T.StructField(f.name, f.dataType) for f in BRONZE_EVENTS_SCHEMA.fields if f.name not in ("event_id", "_run_id")]
    + fields(("event_date", DATE), ("_batch_id", LONG), ("_content_hash", STR))
)
IDENTITY_MAP_SCHEMA = T.StructType(fields(
    ("anonymous_id", STR), ("customer_id", STR), ("first_seen_at", TS), ("last_seen_at", TS),
))

REASON_CODES = (
    "corrupt_record", "duplicate_conflict", "invalid_timestamp", "future_timestamp",
    "unknown_event_type", "missing_identity", "invalid_price", "negative_price", "bot_user_agent",
    "bot_rate", "double_load",
)
NOT_JUDGED = 99
STEP = {"corrupt": 1, "duplicate": 2, "validation": 3, "bot_user_agent": 4, "bot_rate": 5, "double_load": 6,
        "expectations": 7}
REASON_STEP = {
    "corrupt_record": STEP["corrupt"], "duplicate_conflict": STEP["duplicate"],
    **{r: STEP["validation"] for r in ("invalid_timestamp", "future_timestamp", "unknown_event_type",
                                       "missing_identity", "invalid_price", "negative_price")},
    "bot_user_agent": STEP["bot_user_agent"], "bot_rate": STEP["bot_rate"], "double_load": STEP["double_load"],
}
# What a window rule needs to know of a row judged in an earlier batch.
NEIGHBOUR_COLUMNS = ("event_id", "customer_id", "anonymous_id", "session_id", "event_type", "product_id", "url",
                     "event_ts", "event_date", *LANDING_ORDER)


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


def parse_events(event_types: Mapping[str, str], keep_raw: bool = True) -> Transform:
    """Bronze columns -> canonical silver columns, the bronze record kept in ``_raw`` (unless
    ``keep_raw`` is off: a job that finds the record again later need not carry it).

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
        raw = [F.struct(*RAW_EVENT_FIELDS).alias("_raw")] if keep_raw else []
        return df.select(
            *raw,
            _blank_to_null(F.col("event_id")).alias("_sent_id"),
            content_hash(F.struct(*RAW_EVENT_FIELDS)).alias("_content_hash"),
            normalized_id(F.col("customer_id")).alias("customer_id"),
            normalized_id(F.col("anonymous_id")).alias("anonymous_id"),
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
            F.col("_source_file"),
            F.col("_ingested_at"),
            F.col("_corrupt_record").isNotNull().alias("_corrupt"),
            _blank_to_null(props["price"]).alias("_price_text"),
            F.array().cast(STRINGS).alias("_reasons"),
            F.lit(False).alias("_duplicate"),
            F.lit(NOT_JUDGED).alias("_judged_at"),
            F.lit(False).alias("_neighbour"),
            F.lit(False).alias("_in_silver"),
        )

    return transform


def content_hash(raw: Column) -> Column:
    """SHA-256 of what was sent (not where or when it landed) of a ``_raw`` struct."""
    return F.sha2(F.to_json(F.struct(*[raw[f].alias(f) for f in CONTENT_FIELDS])), 256)


def assign_event_ids(df: DataFrame) -> DataFrame:
    """``event_id``: the sent id, or ``gen-`` + the content hash (of what was sent, not where or
    when it landed) for events sent without one (deterministic)."""
    return df.withColumn(
        "event_id", F.coalesce(F.col("_sent_id"), F.concat(F.lit("gen-"), F.substring("_content_hash", 1, 32))))


def _open(step: int) -> Column:
    """Rows no earlier step judged: clean so far, or judged by this step or a later one."""
    return F.col("_judged_at") >= step


def _judge(df: DataFrame, step: int, condition: Column, reason: str | Column) -> DataFrame:
    """Rows open at ``step`` that meet ``condition`` get ``reason`` and are judged at ``step``."""
    caught = _open(step) & F.coalesce(condition, F.lit(False)) & (F.col("_judged_at") != step)
    reason_col = F.lit(reason) if isinstance(reason, str) else reason
    return df.withColumns({
        "_reasons": F.when(caught, F.array_append("_reasons", reason_col)).otherwise(F.col("_reasons")),
        "_judged_at": F.when(caught, F.lit(step)).otherwise(F.col("_judged_at")),
    })


def reject_corrupt(df: DataFrame) -> DataFrame:
    return _judge(df, STEP["corrupt"], F.col("_corrupt"), "corrupt_record")


def judged_events(kept: DataFrame | None, rejected: DataFrame | None) -> DataFrame | None:
    """(event_id, _content_hash) once per event earlier batches judged, from silver's rows
    (``kept``) and rejected rows; an id in both keeps silver's hash. None when there are none."""
    judged = [frame.where(F.col("event_id").isNotNull()).select("event_id", "_content_hash", F.lit(rank).alias("_rank"))
              for rank, frame in enumerate((kept, rejected)) if frame is not None]
    if not judged:
        return None
    return reduce(DataFrame.unionByName, judged).groupBy("event_id").agg(
        F.min_by("_content_hash", "_rank").alias("_content_hash"))


def mark_duplicates(existing: DataFrame | None, few_repeats: bool = True) -> Transform:
    """Exact ``event_id`` repeats: the first landed is kept; a later one with the same content
    is a collapsed ``duplicate``, with other content it is rejected as ``duplicate_conflict``.

    ``existing`` (``event_id``, ``_content_hash``) are the events earlier batches already judged —
    in silver or rejected: a repeat of one of those is judged the same way, so dedup holds across
    batches and a re-delivered file cannot let through what was turned away the first time. A
    known event without a hash (rejected before hashes were kept) takes the batch's first copy's.
    Only rows whose id repeats (in the batch or among ``existing``) go through the window; with
    ``few_repeats`` (the caller expects them to be a small share) their ids are broadcast, so the
    batch's rows are not shuffled to find them.
    """

    def transform(df: DataFrame) -> DataFrame:
        open_ = _open(STEP["duplicate"])
        ids = df.where(open_).groupBy("event_id").agg(F.count(F.lit(1)).alias("_copies"))
        repeated = ids.where(F.col("_copies") > 1).select("event_id")
        known = None
        if existing is not None:
            known = existing.select("event_id", F.col("_content_hash").alias("_known_hash"))
            known = known.dropDuplicates(["event_id"])
            known_ids = ids.join(known, "event_id", "left_semi").select("event_id")
            repeated = repeated.unionByName(known_ids).distinct()
        repeated = repeated.withColumn("_repeated", F.lit(True))
        marked = df.join(F.broadcast(repeated) if few_repeats else repeated, "event_id", "left")
        candidates = marked.where(F.col("_repeated").isNotNull())
        first = Window.partitionBy("event_id", open_).orderBy(*LANDING_ORDER)
        ranked = candidates.withColumn("_rank", F.row_number().over(first)).withColumn(
            "_first_hash", F.first("_content_hash").over(first))
        if known is not None:
            ranked = ranked.join(known.withColumn("_known", F.lit(True)), "event_id", "left")
        else:
            ranked = ranked.withColumns({"_known_hash": F.lit(None).cast(STR), "_known": F.lit(None).cast("boolean")})
        winner_hash = F.coalesce(F.col("_known_hash"), F.col("_first_hash"))
        repeat = open_ & (F.col("_known").isNotNull() | (F.col("_rank") > 1))
        same = F.col("_content_hash") == winner_hash
        judged = _judge(ranked, STEP["duplicate"], repeat & ~same, "duplicate_conflict").withColumns({
            "_duplicate": repeat & same,
            "_judged_at": F.when(repeat & same, F.lit(STEP["duplicate"])).otherwise(F.col("_judged_at")),
        }).drop("_rank", "_first_hash", "_known_hash", "_known")
        rest = marked.where(F.col("_repeated").isNull())
        return rest.unionByName(judged).drop("_repeated")

    return transform


def validate_events(processed_at: datetime, max_clock_skew_minutes: float) -> Transform:
    """Reason codes for events that cannot be trusted as sent (every one that applies)."""
    latest = F.lit(processed_at + timedelta(minutes=max_clock_skew_minutes)).cast(T.TimestampType())

    def transform(df: DataFrame) -> DataFrame:
        step = STEP["validation"]
        open_ = _open(step) & ~F.col("_neighbour")
        price_text = F.col("_price_text")
        checks = [
            (F.col("event_ts").isNull(), "invalid_timestamp"),
            (F.col("event_ts") > latest, "future_timestamp"),
            (F.col("event_type").isNull(), "unknown_event_type"),
            (F.col("customer_id").isNull() & F.col("anonymous_id").isNull(), "missing_identity"),
            (price_text.isNotNull() & F.col("price").isNull(), "invalid_price"),
            (F.col("price") < 0, "negative_price"),
        ]
        found = F.array_compact(F.array(*[F.when(c, F.lit(r)) for c, r in checks]))
        caught = open_ & (F.size(found) > 0)
        return df.withColumns({
            "_reasons": F.when(caught, F.array_union("_reasons", found)).otherwise(F.col("_reasons")),
            "_judged_at": F.when(caught, F.lit(step)).otherwise(F.col("_judged_at")),
        })

    return transform


def match_bot_agents(user_agent_regex: str) -> Transform:
    """``_bot_agent``: whether the row's user agent matches, the expression run once per distinct
    agent instead of once per row (a large batch holds a few dozen agents, and the shipped
    signatures cost ~13 µs a row: 13 s for a million) and the bot agents found joined back,
    broadcast. :func:`flag_bot_agents` with ``per_agent`` judges by it."""

    def transform(df: DataFrame) -> DataFrame:
        agents = df.where(F.col("user_agent").isNotNull()).groupBy("user_agent").agg(
            F.any_value("user_agent").alias("_agent"))  # a filter on an aggregate's output stays above it
        bots = agents.where(F.col("_agent").rlike(user_agent_regex)).select(
            "user_agent", F.lit(True).alias("_bot_agent"))
        return df.join(F.broadcast(bots), "user_agent", "left").select(
            *df.columns, F.col("_bot_agent").isNotNull().alias("_bot_agent"))

    return transform


def flag_bot_agents(user_agent_regex: str, per_agent: bool = False) -> Transform:
    """``bot_user_agent`` for known bot signatures; ``per_agent``: as :func:`match_bot_agents` found
    them (its ``_bot_agent``, dropped here)."""

    def transform(df: DataFrame) -> DataFrame:
        matched = F.col("_bot_agent") if per_agent else F.col("user_agent").rlike(user_agent_regex)
        return _judge(df, STEP["bot_user_agent"], ~F.col("_neighbour") & matched, "bot_user_agent").drop("_bot_agent")

    return transform


def flag_bot_rate(max_events_per_minute: int) -> Transform:
    """``bot_rate`` for every event of a session or anonymous id with more than
    ``max_events_per_minute`` events in any 60 s window.

    Only ids with more events than that in all are candidates; the sliding window runs over
    their rows alone, and the bot ids found are joined back to every row."""

    def transform(df: DataFrame) -> DataFrame:
        step = STEP["bot_rate"]
        open_rows = df.where(_open(step))
        at = F.unix_micros("event_ts")
        caught = F.lit(False)
        for key in ("session_id", "anonymous_id"):
            rows = open_rows.where(F.col(key).isNotNull()).select(key, "event_ts")
            busy = rows.groupBy(key).count().where(F.col("count") > max_events_per_minute).select(key)
            minute = Window.partitionBy(key).orderBy(at).rangeBetween(0, 60_000_000 - 1)
            bots = (rows.join(busy, key, "left_semi")
                    .withColumn("_in_minute", F.count(F.lit(1)).over(minute))
                    .groupBy(key).agg(F.max("_in_minute").alias("_busiest"))
                    .where(F.col("_busiest") > max_events_per_minute)
                    .select(key, F.lit(True).alias(f"_bot_{key}")))
            df = df.join(F.broadcast(bots), key, "left")
            caught = caught | F.col(f"_bot_{key}").isNotNull()
        return _judge(df, step, caught, "bot_rate").drop("_bot_session_id", "_bot_anonymous_id")

    return transform


def flag_bots(user_agent_regex: str, max_events_per_minute: int) -> Transform:
    """:func:`flag_bot_agents`, then :func:`flag_bot_rate`."""

    def transform(df: DataFrame) -> DataFrame:
        return df.transform(flag_bot_agents(user_agent_regex)).transform(flag_bot_rate(max_events_per_minute))

    return transform


def mark_double_loads(window_seconds: float) -> Transform:
    """Pixel double-loads: an event with the same identity, type, product and url as the one
    before it, less than ``window_seconds`` later, is rejected as ``double_load`` (so a burst
    collapses to its earliest event). The window runs over a narrow projection; the ids it
    catches are joined back."""

    def transform(df: DataFrame) -> DataFrame:
        step = STEP["double_load"]
        identity = F.coalesce("customer_id", "anonymous_id").alias("_identity")
        narrow = df.where(_open(step)).select("event_id", identity, "event_type", "product_id", "url", "event_ts",
                                              *LANDING_ORDER)
        same_load = Window.partitionBy("_identity", "event_type", "product_id", "url").orderBy(
            "event_ts", *LANDING_ORDER)
        gap = F.unix_micros("event_ts") - F.unix_micros(F.lag("event_ts").over(same_load))
        doubles = narrow.where(F.col("event_ts").isNotNull()).withColumn("_gap", gap).where(
            F.col("_gap") < int(window_seconds * 1_000_000)).select("event_id", F.lit(True).alias("_double"))
        flagged = df.join(doubles, "event_id", "left")
        return _judge(flagged, step, F.col("_double").isNotNull(), "double_load").drop("_double")

    return transform


def apply_expectations(expectations: Sequence[tuple[str, str, str]]) -> Transform:
    """(name, SQL boolean, action) -> ``_dq_checked`` (the row was clean so far and so checked)
    and ``_dq_failed``: names of expectations it does not meet (false or null); the names of
    ``drop`` ones also become its reasons."""

    def transform(df: DataFrame) -> DataFrame:
        step = STEP["expectations"]
        open_ = _open(step) & ~F.col("_neighbour")
        failed = [F.when(open_ & ~F.coalesce(F.expr(sql), F.lit(False)), F.lit(name))
                  for name, sql, _ in expectations]
        dropped = [F.when(open_ & ~F.coalesce(F.expr(sql), F.lit(False)), F.lit(name))
                   for name, sql, action in expectations if action == "drop"]
        found = F.array_compact(F.array(*dropped)) if dropped else F.array().cast(STRINGS)
        caught = open_ & (F.size(found) > 0)
        return df.withColumns({
            "_dq_checked": open_,
            "_dq_failed": F.array_compact(F.array(*failed)) if failed else F.array().cast(STRINGS),
            "_reasons": F.when(caught, F.array_union("_reasons", found)).otherwise(F.col("_reasons")),
            "_judged_at": F.when(caught, F.lit(step)).otherwise(F.col("_judged_at")),
        })

    return transform


def with_outcome(df: DataFrame) -> DataFrame:
    return df.withColumn(
        "_outcome",
        F.when(F.col("_duplicate"), "duplicate")
        .when(F.size("_reasons") > 0, "rejected")
        .otherwise("silver"),
    )


def as_neighbours(silver: DataFrame, rejected: DataFrame, expectation_names: Sequence[str]) -> DataFrame:
    """Rows earlier batches judged, as they stood in the window rules (steps 5 and 6).

    Silver rows were clean. A rejected row takes part only if it was still open at step 5: its
    reasons come from the window rules or the expectations; it keeps them whatever happens now.
    """
    late = {**{r: s for r, s in REASON_STEP.items() if s >= STEP["bot_rate"]},
            **dict.fromkeys(expectation_names, STEP["expectations"])}
    steps = F.create_map(*[F.lit(x) for kv in sorted(late.items()) for x in kv])
    reasons_step = F.array_min(F.transform("reasons", lambda r: F.coalesce(steps[r], F.lit(0))))
    kept = silver.select(*NEIGHBOUR_COLUMNS, F.array().cast(STRINGS).alias("_reasons"),
                         F.lit(NOT_JUDGED).alias("_judged_at"), F.lit(True).alias("_in_silver"))
    turned_away = (
        rejected.where(F.col("event_ts").isNotNull())
        .withColumn("_judged_at", reasons_step)
        .where(F.col("_judged_at") >= STEP["bot_rate"])
        .select(*NEIGHBOUR_COLUMNS, F.col("reasons").alias("_reasons"), "_judged_at", F.lit(False).alias("_in_silver"))
    )
    return kept.unionByName(turned_away).withColumns({"_duplicate": F.lit(False), "_neighbour": F.lit(True)})


def rejected_as_parsed(event_types: Mapping[str, str]) -> Transform:
    """``silver.rejected_events`` rows -> the parsed columns :func:`as_neighbours` needs."""

    def transform(rejected: DataFrame) -> DataFrame:
        return rejected.select(
            "event_id",
            normalized_id(F.col("customer_id")).alias("customer_id"),
            normalized_id(F.col("anonymous_id")).alias("anonymous_id"),
            _blank_to_null(F.col("session_id")).alias("session_id"),
            _lookup(event_types, name_key(F.col("event_type"))).alias("event_type"),
            F.upper(_blank_to_null(F.col("product_id"))).alias("product_id"),
            _blank_to_null(F.col("url")).alias("url"),
            parse_timestamp(F.col("timestamp")).alias("event_ts"),
            "event_date", *LANDING_ORDER, "reasons",
        )

    return transform


def judge_rows(processed_at: datetime, max_clock_skew_minutes: float, user_agent_regex: str,
               existing: DataFrame | None, few_repeats: bool = True, per_agent: bool = False) -> Transform:
    """Steps 1-4, each row on its own (and duplicates against ``existing``): parsed rows with ids
    (:func:`parse_events`, :func:`assign_event_ids`) in, judged so far out. ``per_agent`` (a
    large batch): bot signatures are matched once per distinct user agent (:func:`match_bot_agents`)."""

    def transform(df: DataFrame) -> DataFrame:
        if per_agent:  # on the parsed rows, whose agents are a projection of the scan
            df = df.transform(match_bot_agents(user_agent_regex))
        return (
            df.transform(reject_corrupt)
            .transform(mark_duplicates(existing, few_repeats))
            .transform(validate_events(processed_at, max_clock_skew_minutes))
            .transform(flag_bot_agents(user_agent_regex, per_agent))
        )

    return transform


def judge_windows(max_events_per_minute: int, double_load_window_seconds: float,
                  expectations: Sequence[tuple[str, str, str]]) -> Transform:
    """Steps 5-7 and the ``_outcome``: the window rules over the rows (and any neighbours joined
    to them, see :func:`as_neighbours`), then the expectations. Each window rule reads its input
    twice (candidates, then the join back): callers with a long lineage checkpoint it first."""

    def transform(df: DataFrame) -> DataFrame:
        return (
            df.transform(flag_bot_rate(max_events_per_minute))
            .transform(mark_double_loads(double_load_window_seconds))
            .transform(apply_expectations(expectations))
            .transform(with_outcome)
        )

    return transform


def judge_events(
    processed_at: datetime,
    max_clock_skew_minutes: float,
    user_agent_regex: str,
    max_events_per_minute: int,
    double_load_window_seconds: float,
    expectations: Sequence[tuple[str, str, str]],
    existing: DataFrame | None,
    neighbours: DataFrame | None = None,
) -> Transform:
    """Parsed rows with ids -> every row with its ``_outcome``: :func:`judge_rows`, then
    :func:`judge_windows`; with ``neighbours`` (:func:`as_neighbours`), their rows come out too,
    marked ``_neighbour``."""

    def transform(df: DataFrame) -> DataFrame:
        judged = df.transform(judge_rows(processed_at, max_clock_skew_minutes, user_agent_regex, existing))
        if neighbours is not None:
            judged = judged.unionByName(neighbours, allowMissingColumns=True)
        return judged.transform(judge_windows(max_events_per_minute, double_load_window_seconds, expectations))

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
    neighbours: DataFrame | None = None,
) -> Transform:
    """The whole chain, bronze rows in, every row out with its ``_outcome``."""

    def transform(df: DataFrame) -> DataFrame:
        return df.transform(parse_events(event_types)).transform(assign_event_ids).transform(judge_events(
            processed_at, max_clock_skew_minutes, user_agent_regex, max_events_per_minute,
            double_load_window_seconds, expectations, existing, neighbours))

    return transform


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
