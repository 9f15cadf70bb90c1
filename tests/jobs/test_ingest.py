import json
import os
import shutil

import pytest
from pyspark.sql import functions as F

from jobs.runtime.errors import InputError
from jobs.runtime.tables import read_table
from jobs.stages import ingest as ingest_module
from jobs.stages.ingest import ingest
from tests.conftest import TEST_DATA

GOOD = [
    {"event_id": "e1", "customer_id": "C1", "event_type": "page_view",
     "timestamp": "2026-11-20T10:00:00Z", "url": "/", "properties": {}},
    {"anonymous_id": "a1", "event_type": "view", "timestamp": 1763633000000,
     "product_id": "P1", "properties": {"price": 12.5, "currency": "usd"}, "utm_source": "mail"},
]
MALFORMED = '{"event_id":"e3","event_type":"page_view","timestamp":'


def _write_events(settings, name, lines):
    folder = os.path.join(settings.landing.root, "events")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    with open(path, "w") as handle:
        handle.write("\n".join(json.dumps(x) if isinstance(x, dict) else x for x in lines) + "\n")
    return path


def _bronze(spark, settings, key="bronze.events"):
    return read_table(spark, settings.lakehouse.root, key)


def test_lands_every_line_with_provenance_and_flags_the_corrupt_one(spark, settings):
    path = _write_events(settings, "day1.json", [*GOOD, MALFORMED, ""])

    [result] = ingest(spark, settings, "events")

    assert (result.files, result.rows, result.corrupt_rows) == (1, 3, 1)
    bronze = _bronze(spark, settings)
    assert bronze.count() == 3
    corrupt = bronze.where(F.col("_corrupt_record").isNotNull()).first()
    assert corrupt["_corrupt_record"] == MALFORMED and corrupt["event_type"] is None
    second = bronze.where(F.col("anonymous_id") == "a1").first()
    assert second["timestamp"] == "1763633000000"
    assert second["properties"] == {"price": "12.5", "currency": "usd"}
    assert json.loads(second["_rescued_data"]) == {"utm_source": "mail"}
    assert {r["_source"] for r in bronze.collect()} == {"web"}
    assert {r["_source_file"] for r in bronze.collect()} == {f"file:{path}"}
    assert {r["_run_id"] for r in bronze.collect()} == {result.run_id}


def test_rerun_and_relanded_file_add_nothing_new_files_land_once(spark, settings):
    first = _write_events(settings, "day1.json", GOOD)
    ingest(spark, settings, "events")

    [again] = ingest(spark, settings, "events")
    assert (again.files, again.rows, again.batch_id) == (0, 0, None)

    shutil.copy(first, first + ".tmp")  # the same file delivered again under its own name
    os.replace(first + ".tmp", first)
    _write_events(settings, "day2.json", [GOOD[0] | {"event_id": "e9"}])
    [third] = ingest(spark, settings, "events")

    assert (third.files, third.rows, third.batch_id) == (1, 1, 2)
    assert _bronze(spark, settings).count() == 3


def test_a_run_killed_after_the_bronze_commit_is_finished_without_duplicates(spark, settings, monkeypatch):
    _write_events(settings, "day1.json", GOOD)
    real_log_files = ingest_module._log_files
    calls = []

    def die_when_committing(spark_, settings_, source, rows):
        calls.append(rows[0][5])
        if rows[0][5] == "committed":
            raise RuntimeError("driver lost")
        return real_log_files(spark_, settings_, source, rows)

    monkeypatch.setattr(ingest_module, "_log_files", die_when_committing)
    with pytest.raises(RuntimeError, match="driver lost"):
        ingest(spark, settings, "events")
    assert calls == ["planned", "committed"]
    assert _bronze(spark, settings).count() == 2
    monkeypatch.undo()

    _write_events(settings, "day2.json", [GOOD[0] | {"event_id": "e9"}])
    [resumed] = ingest(spark, settings, "events")
    assert (resumed.resumed, resumed.batch_id, resumed.rows) == (True, 1, 2)
    assert _bronze(spark, settings).count() == 2  # the batch was not written twice
    [after] = ingest(spark, settings, "events")
    assert (after.batch_id, after.rows) == (2, 1)
    assert _bronze(spark, settings).count() == 3


def test_a_run_killed_after_planning_lands_the_planned_files_next_time(spark, settings, monkeypatch):
    _write_events(settings, "day1.json", GOOD)

    def die(*args, **kwargs):
        raise RuntimeError("executor lost")

    monkeypatch.setattr(ingest_module, "_land", die)
    with pytest.raises(RuntimeError):
        ingest(spark, settings, "events")
    monkeypatch.undo()
    assert _bronze(spark, settings).count() == 0

    [resumed] = ingest(spark, settings, "events")
    assert (resumed.resumed, resumed.rows) == (True, 2)
    runs = read_table(spark, settings.lakehouse.root, "ops.job_runs").orderBy("started_at").collect()
    assert [r["status"] for r in runs] == ["failed", "succeeded"]
    assert "RuntimeError: executor lost" in runs[0]["error"]
    assert runs[1]["rows_out"] == 2
    assert runs[1]["delta_versions"]["bronze.events"] == resumed.table_version


def test_rees46_sample_lands_through_configuration_alone(spark, settings):
    target = os.path.join(settings.landing.root, "rees46")
    os.makedirs(target)
    shutil.copy(TEST_DATA / "rees46" / "2019-Oct-sample.csv", target)

    [result] = ingest(spark, settings, "events", "rees46")

    assert (result.rows, result.corrupt_rows) == (1000, 0)
    bronze = _bronze(spark, settings)
    assert bronze.where(F.col("_source") == "rees46").count() == 1000
    first = bronze.where(F.col("session_id") == "9333dfbd-b87a-4708-9857-6336556b0fcc").first()
    assert (first["timestamp"], first["event_type"], first["product_id"], first["customer_id"]) == (
        "2019-10-01 00:00:00 UTC", "view", "3900821", "554748717"
    )
    assert first["properties"] == {
        "price": "33.20", "category": "appliances.environment.water_heater",
        "category_id": "2053013552326770905", "brand": "aqua",
    }
    assert bronze.where(F.col("_rescued_data").isNotNull()).count() == 0


def test_crm_exports_with_other_column_names_and_a_broken_row(spark, make_settings):
    settings = make_settings("ingest.crm_sources=[crm_salesforce]")
    folder = os.path.join(settings.landing.root, "crm_salesforce")
    os.makedirs(folder)
    with open(os.path.join(folder, "contacts.csv"), "w") as handle:
        handle.write(
            "Id,Email,FirstName,LastName,Birthdate,MailingCity,MailingCountry,Email_Consent__c,"
            "LastModifiedDate,LeadSource\n"
            "003A,Ann@X.com,Ann,Lee,1990-01-02,NYC,US,true,2026-11-01T10:00:00Z,Web\n"
            '003B,"bob@y.com,Bob\n'
        )

    [result] = ingest(spark, settings, "crm")

    assert (result.rows, result.corrupt_rows) == (2, 1)
    ann = _bronze(spark, settings, "bronze.crm").where(F.col("customer_id") == "003A").first()
    assert (ann["email"], ann["city"], ann["email_consent"], ann["updated_at"]) == (
        "Ann@X.com", "NYC", "true", "2026-11-01T10:00:00Z"
    )
    assert json.loads(ann["_rescued_data"]) == {"LeadSource": "Web"}


def test_missing_landing_path_is_an_input_error(spark, settings):
    with pytest.raises(InputError, match=r"landing path not found: .*landing/events \(source 'web'"):
        ingest(spark, settings, "events")
