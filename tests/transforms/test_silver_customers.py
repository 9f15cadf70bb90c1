from datetime import UTC, date, datetime

import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F

from jobs.rules import Locations, place_key
from jobs.runtime.tables import BRONZE_CRM_SCHEMA, CUSTOMERS_HISTORY_SCHEMA
from transforms.silver_customers import (
    PROFILE_COLUMNS,
    latest_per_customer,
    parse_customers,
    rebuild_history,
)

# Inline aliases: editing a marketer's rule file cannot break a unit test.
CITIES = {"New York": ["NYC", "new york", "New York City"], "Los Angeles": ["LA"], "San Francisco": ["SF"]}
LOCATIONS = Locations(
    cities={place_key(name): city for city, names in CITIES.items() for name in [city, *names]},
    countries={place_key(name): code for code, names in {"US": ["USA", "United States"], "GB": ["UK"]}.items()
               for name in [code, *names]})
FIELDS = [f.name for f in BRONZE_CRM_SCHEMA.fields if f.name != "_run_id"]
TODAY = date(2026, 11, 20)


def crm(spark, *records, version=1):
    rows = []
    for i, record in enumerate(records):
        row = {f: None for f in FIELDS}
        row.update({"_source": "crm", "_source_file": f"f{i}.csv", "_ingested_at": datetime(2026, 11, 20, 9, 0, i)})
        row.update(record)
        rows.append(row)
    schema = ", ".join(f"`{f.name}` {f.dataType.simpleString()}" for f in BRONZE_CRM_SCHEMA.fields
                       if f.name != "_run_id")
    return spark.createDataFrame(rows, schema).withColumn("_bronze_version", F.lit(version).cast("long"))


def rec(cid, updated_at="2026-11-01T10:00:00Z", **extra):
    return {"customer_id": cid, "updated_at": updated_at, **extra}


def parsed(df):
    return df.transform(parse_customers(LOCATIONS.cities, LOCATIONS.countries, TODAY))


CITY_CASES = [("NYC", "New York"), (" new york ", "New York"), ("New York City", "New York"),
              ("NEW YORK", "New York"), ("LA", "Los Angeles"), ("san  francisco", "San Francisco"),
              ("springfield", "Springfield"), (None, None)]
CONSENT_CASES = [("true", True), ("TRUE", True), ("yes", True), ("Y", True), ("1", True), ("false", False),
                 ("no", False), ("0", False), ("N", False), ("maybe", None), (None, None)]


@pytest.fixture(scope="module")
def parsed_cases(spark):
    """Every city and consent case below as a customer of its own, parsed in one Spark job."""
    records = [rec(f"C{100 + i}", city=city) for i, (city, _) in enumerate(CITY_CASES)]
    records += [rec(f"C{200 + i}", email_consent=consent) for i, (consent, _) in enumerate(CONSENT_CASES)]
    return {row["customer_id"]: row for row in parsed(crm(spark, *records)).collect()}


@pytest.mark.parametrize(("case", "city", "expected"), [(i, *case) for i, case in enumerate(CITY_CASES)])
def test_cities_normalize_through_the_alias_list(parsed_cases, case, city, expected):
    assert parsed_cases[f"C{100 + case}"]["city"] == expected


@pytest.mark.parametrize(("case", "consent", "expected"), [(i, *case) for i, case in enumerate(CONSENT_CASES)])
def test_email_consent_becomes_a_boolean(parsed_cases, case, consent, expected):
    assert parsed_cases[f"C{200 + case}"]["email_consent"] is expected


def test_profile_fields_are_normalized(spark):
    row = parsed(crm(spark, rec(" C1 ", email="  Ann.Lee@Example.COM ", first_name=" Ann ", country="usa",
                               birth_date="1990-11-21"))).first()
    assert (row["customer_id"], row["email"], row["first_name"], row["country"]) == (
        "C1", "ann.lee@example.com", "Ann", "US")
    assert (row["birth_date"], row["age"]) == (date(1990, 11, 21), 35)  # birthday tomorrow
    assert row["_reasons"] == []


def test_unusable_records_get_reasons(spark):
    rows = parsed(crm(spark, rec(None), rec("C2", updated_at="someday"), rec("C3", birth_date="31/31/1990"),
                      {"_corrupt_record": "C4,\"broken"})).collect()
    assert [r["_reasons"] for r in rows] == [
        ["missing_customer_id"], ["invalid_updated_at"], ["invalid_birth_date"],
        ["corrupt_record", "missing_customer_id", "invalid_updated_at"],
    ]


def test_newest_updated_at_wins_whatever_the_landing_order(spark):
    df = parsed(crm(spark,
                    rec("C1", "2026-11-10T00:00:00Z", city="Boston"),
                    rec("C1", "2026-11-01T00:00:00Z", city="Stale City"),  # landed later, older
                    rec("C2", "2026-11-05T00:00:00Z", city="Austin")))
    got = {r["customer_id"]: r["city"] for r in latest_per_customer(df).collect()}
    assert got == {"C1": "Boston", "C2": "Austin"}


def test_an_updated_at_beyond_the_clock_skew_is_rejected_so_later_updates_still_win(spark):
    latest = datetime(2026, 11, 20, 12, 10, tzinfo=UTC)  # now + 10 minutes of skew
    df = crm(spark, rec("C1", "2099-01-01T00:00:00Z", email_consent="yes"),
             rec("C1", "2026-11-20T12:05:00Z", email_consent="no"),  # within the skew: fine
             rec("C2", "2026-11-20T12:11:00Z"))
    rows = df.transform(parse_customers(LOCATIONS.cities, LOCATIONS.countries, TODAY, latest=latest)).collect()
    assert [r["_reasons"] for r in rows] == [["future_updated_at"], [], ["future_updated_at"]]


def test_a_tie_on_updated_at_keeps_the_first_landed_in_current_and_history_alike(spark):
    df = parsed(crm(spark, rec("C1", "2026-11-10T00:00:00Z", city="Boston"),
                    rec("C1", "2026-11-10T00:00:00Z", city="Austin")))  # landed second, same time
    current = latest_per_customer(df).first()["city"]
    empty = spark.createDataFrame([], CUSTOMERS_HISTORY_SCHEMA)
    [version] = rebuild_history(empty, df).collect()
    assert current == version["city"] == "Boston"


def test_history_places_a_late_record_between_existing_versions(spark):
    def version(cid, city, start, end):
        return (cid, None, None, None, None, None, city, None, None, start, "crm", start, end, end is None)

    d = datetime
    existing = spark.createDataFrame(
        [version("C1", "Boston", d(2026, 1, 1), d(2026, 6, 1)), version("C1", "Austin", d(2026, 6, 1), None),
         version("C9", "Miami", d(2026, 2, 1), None)],
        CUSTOMERS_HISTORY_SCHEMA,
    )
    late = parsed(crm(spark, rec("C1", "2026-03-01T00:00:00Z", city="Chicago"),
                      rec("C1", "2026-06-01T00:00:00Z", city="Repeat of an existing version")))
    history = rebuild_history(existing, late)
    expected = spark.createDataFrame(
        [version("C1", "Boston", d(2026, 1, 1), d(2026, 3, 1)), version("C1", "Chicago", d(2026, 3, 1), d(2026, 6, 1)),
         version("C1", "Austin", d(2026, 6, 1), None)],
        CUSTOMERS_HISTORY_SCHEMA,
    )
    columns = ["customer_id", "city", "valid_from", "valid_to", "is_current"]
    assert_df_equality(history.select(*columns), expected.select(*columns), ignore_row_order=True,
                       ignore_nullable=True)
    assert set(history.columns) == set(PROFILE_COLUMNS) | {"valid_from", "valid_to", "is_current"}
