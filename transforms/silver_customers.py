"""Bronze CRM records -> silver customers: normalized profiles, the newest per customer, and an
SCD2 history that places late (out-of-order) records where their ``updated_at`` belongs."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import date, datetime

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from transforms.bronze import BRONZE_CRM_SCHEMA
from transforms.schema import BOOL, DATE, INT, LONG, STR, STRINGS, TS, fields, normalized_id
from transforms.silver_events import LANDING_ORDER, PROVENANCE, parse_timestamp

Transform = Callable[[DataFrame], DataFrame]

RAW_CRM_FIELDS = tuple(f.name for f in BRONZE_CRM_SCHEMA.fields if f.name != "_run_id")
CONTENT_FIELDS = tuple(f for f in RAW_CRM_FIELDS if f not in ("_source_file", "_ingested_at"))
CONSENT_YES = ("true", "yes", "y", "1", "opted_in", "subscribed", "t")
CONSENT_NO = ("false", "no", "n", "0", "opted_out", "unsubscribed", "f")
PROFILE_FIELDS = fields(
    ("customer_id", STR), ("email", STR), ("first_name", STR), ("last_name", STR), ("birth_date", DATE),
    ("age", INT), ("city", STR), ("country", STR), ("email_consent", BOOL), ("updated_at", TS), ("source", STR),
)
PROFILE_COLUMNS = tuple(f.name for f in PROFILE_FIELDS)
CUSTOMERS_SCHEMA = T.StructType(PROFILE_FIELDS + PROVENANCE)
CUSTOMERS_HISTORY_SCHEMA = T.StructType(PROFILE_FIELDS + fields(
    ("valid_from", TS), ("valid_to", TS), ("is_current", BOOL),
))
REJECTED_CUSTOMERS_SCHEMA = T.StructType(
    fields(("reasons", STRINGS))
    + [T.StructField(f.name, f.dataType) for f in BRONZE_CRM_SCHEMA.fields if f.name != "_run_id"]
    + fields(("_batch_id", LONG))
)
REASON_CODES = ("corrupt_record", "missing_customer_id", "invalid_updated_at", "future_updated_at",
                "invalid_birth_date")


def _clean(column: Column) -> Column:
    collapsed = F.regexp_replace(F.trim(column), r"\s+", " ")
    return F.when(collapsed != "", collapsed)


def _place(mapping: Mapping[str, str], column: Column, fallback: Column) -> Column:
    key = F.lower(_clean(column))
    if not mapping:
        return fallback
    pairs = [F.lit(part) for item in sorted(mapping.items()) for part in item]
    return F.coalesce(F.element_at(F.create_map(*pairs), key), fallback)


def age_on(birth_date: Column, on: Column) -> Column:
    """Whole years between ``birth_date`` and the date ``on``."""
    return F.floor(F.months_between(on, birth_date) / 12).cast(T.IntegerType())


def parse_customers(cities: Mapping[str, str], countries: Mapping[str, str], today: date,
                    latest: datetime | None = None) -> Transform:
    """Bronze CRM columns -> profile columns, the bronze record kept in ``_raw``.

    Emails lower-cased and trimmed; names trimmed; cities and countries through the alias lists
    (``NYC``, ``new york`` -> ``New York``; ``USA`` -> ``US``), unknown cities title-cased;
    ``email_consent`` a boolean (true/yes/y/1 ..., false/no/n/0 ...; anything else null);
    ``age`` in whole years on ``today``. ``_reasons``: corrupt_record, missing_customer_id,
    invalid_updated_at, future_updated_at (after ``latest``: now plus the allowed clock skew — a
    record dated 2099 would otherwise outrank every later update, a consent withdrawal included),
    invalid_birth_date.
    """

    def transform(df: DataFrame) -> DataFrame:
        consent = F.lower(_clean(F.col("email_consent")))
        birth_date = _clean(F.col("birth_date")).try_cast(T.DateType())
        updated_at = parse_timestamp(F.col("updated_at"))
        checks = [
            (F.col("_corrupt_record").isNotNull(), "corrupt_record"),
            (normalized_id(F.col("customer_id")).isNull(), "missing_customer_id"),
            (updated_at.isNull(), "invalid_updated_at"),
            (updated_at > F.lit(latest) if latest is not None else F.lit(False), "future_updated_at"),
            (_clean(F.col("birth_date")).isNotNull() & birth_date.isNull(), "invalid_birth_date"),
        ]
        reasons = F.array_compact(F.array(*[F.when(c, F.lit(r)) for c, r in checks]))
        content = F.to_json(F.struct(*CONTENT_FIELDS))
        return df.select(
            F.struct(*RAW_CRM_FIELDS).alias("_raw"),
            normalized_id(F.col("customer_id")).alias("customer_id"),
            F.lower(_clean(F.col("email"))).alias("email"),
            _clean(F.col("first_name")).alias("first_name"),
            _clean(F.col("last_name")).alias("last_name"),
            birth_date.alias("birth_date"),
            age_on(birth_date, F.lit(today)).alias("age"),
            _place(cities, F.col("city"), F.initcap(F.lower(_clean(F.col("city"))))).alias("city"),
            _place(countries, F.col("country"), F.upper(_clean(F.col("country")))).alias("country"),
            F.when(consent.isin(*CONSENT_YES), True).when(consent.isin(*CONSENT_NO), False)
            .alias("email_consent"),
            updated_at.alias("updated_at"),
            F.col("_source").alias("source"),
            F.col("_source_file"),
            F.col("_ingested_at"),
            F.sha2(content, 256).alias("_content_hash"),
            reasons.alias("_reasons"),
        )

    return transform


def latest_per_customer(df: DataFrame) -> DataFrame:
    """The newest record of each customer by ``updated_at``; of records with the same
    ``updated_at``, the one landed first — the rule :func:`rebuild_history` and the MERGE into
    ``silver.customers`` (which replaces a row only with a strictly newer one) follow too."""
    newest = Window.partitionBy("customer_id").orderBy(F.desc("updated_at"), *LANDING_ORDER)
    return df.withColumn("_rank", F.row_number().over(newest)).where("_rank = 1").drop("_rank")


FILLABLE = ("email", "first_name", "last_name", "birth_date", "age", "city", "country", "email_consent")


def fill_partial(previous: DataFrame) -> Transform:
    """Partial records (``_partial``: a profile update that carries only the fields it changes,
    such as a Segment ``identify`` call's traits) take each field they lack from the customer's
    newest version before them — from ``previous`` (the history's versions: profile columns) or
    from earlier records of the same batch — so a newer update of the email keeps the CRM's city
    and consent. A full record (a CRM export) is taken as it is: a null there is a cleared field.

    ====================================  =====================================
    customer C1, in ``updated_at`` order   email / city / email_consent
    ====================================  =====================================
    CRM export (full)                      a@x / Boston / true
    identify {email: b@x} (partial)        b@x / Boston / true
    identify {unsubscribed: true}          b@x / Boston / false
    ====================================  =====================================

    Input and output: the parsed record columns plus ``_partial``; only the fillable profile
    fields change.
    """

    def transform(records: DataFrame) -> DataFrame:
        touched = records.select("customer_id").distinct()
        old = (previous.join(touched, "customer_id", "left_semi")
               .select("customer_id", "updated_at", *FILLABLE)
               .withColumn("_partial", F.lit(False)).withColumn("_new", F.lit(0)))
        timeline = (Window.partitionBy("customer_id").orderBy("updated_at", "_new", *LANDING_ORDER)
                    .rowsBetween(Window.unboundedPreceding, Window.currentRow))
        filled = {
            c: F.last(F.when(F.col(c).isNotNull() | ~F.col("_partial"), F.struct(F.col(c).alias("v"))),
                      ignorenulls=True).over(timeline)["v"]
            for c in FILLABLE
        }
        return (old.unionByName(records.withColumn("_new", F.lit(1)), allowMissingColumns=True)
                .withColumns(filled)
                .where(F.col("_new") == 1)
                .select(*records.columns))

    return transform


def rebuild_history(existing: DataFrame, records: DataFrame) -> DataFrame:
    """SCD2 rows for every customer in ``records``: their existing versions plus the new ones,
    ordered by ``updated_at`` (not arrival), each valid until the next one.

    ``existing`` has the history columns; ``records`` the profile columns. Versions with the same
    ``updated_at`` keep the one landed first. Output: profile columns + ``valid_from``,
    ``valid_to`` (null while current), ``is_current``.
    """
    touched = records.select("customer_id").distinct()
    old = existing.join(touched, "customer_id", "left_semi").select(*PROFILE_COLUMNS, F.lit(0).alias("_new"))
    same_time = Window.partitionBy("customer_id", "updated_at")
    new = (
        records.withColumn("_rank", F.row_number().over(same_time.orderBy(*LANDING_ORDER)))
        .where("_rank = 1")
        .select(*PROFILE_COLUMNS, F.lit(1).alias("_new"))
    )
    timeline = Window.partitionBy("customer_id").orderBy("updated_at")
    return (
        old.unionByName(new)
        .withColumn("_rank", F.row_number().over(same_time.orderBy("_new")))
        .where("_rank = 1")
        .withColumn("valid_from", F.col("updated_at"))
        .withColumn("valid_to", F.lead("updated_at").over(timeline))
        .withColumn("is_current", F.col("valid_to").isNull())
        .drop("_rank", "_new")
    )
