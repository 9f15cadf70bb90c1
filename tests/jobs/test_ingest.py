import json
import os
import shutil

import pytest
from pyspark.sql import functions as F

from jobs.runtime.errors import InputError
from jobs.runtime.tables import read_table
from jobs.stages import ingest as ingest_module
from jobs.stages.ingest import ingest, landed_files
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


def _landed(result):
    """(files, rows, corrupt rows) the stage landed, over its sources."""
    sources = result.details["sources"]
    return tuple(sum(s[k] for s in sources) for k in ("files", "rows", "corrupt"))


def test_lands_every_line_with_provenance_and_flags_the_corrupt_one(spark, settings):
    path = _write_events(settings, "day1.json", [*GOOD, MALFORMED, ""])

    result = ingest(spark, settings, "events")

    assert _landed(result) == (1, 3, 1)
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

    again = ingest(spark, settings, "events")
    assert _landed(again) == (0, 0, 0)
    assert sum(again.commits.values()) == 0 and again.spark_jobs == 0  # nothing new: no job, no commit

    shutil.copy(first, first + ".tmp")  # the same file delivered again under its own name
    os.replace(first + ".tmp", first)
    second = _write_events(settings, "day2.json", [GOOD[0] | {"event_id": "e9"}])
    third = ingest(spark, settings, "events")

    assert _landed(third) == (1, 1, 0)
    assert _bronze(spark, settings).count() == 3
    landed = {f["path"].removeprefix("file:"): (f["batch_id"], f["version"])
              for f in landed_files(spark, settings, settings.source("web", "events"))}
    assert landed == {first: (0, 1), second: (1, 2)}


def test_a_run_killed_after_the_bronze_commit_lands_nothing_twice(spark, settings, monkeypatch):
    _write_events(settings, "day1.json", GOOD)
    real_append = ingest_module.append

    def commit_then_die(*args, **kwargs):
        real_append(*args, **kwargs)
        raise RuntimeError("driver lost")

    monkeypatch.setattr(ingest_module, "append", commit_then_die)
    with pytest.raises(RuntimeError, match="driver lost"):
        ingest(spark, settings, "events")
    assert _bronze(spark, settings).count() == 2  # the data commit happened, the checkpoint did not
    monkeypatch.undo()

    _write_events(settings, "day2.json", [GOOD[0] | {"event_id": "e9"}])
    resumed = ingest(spark, settings, "events")
    assert _bronze(spark, settings).count() == 3  # the replayed batch was skipped, the new file landed
    assert _landed(resumed)[1] == 1
    assert ingest(spark, settings, "events").details["sources"][0]["files"] == 0
    runs = read_table(spark, settings.lakehouse.root, "ops.job_runs").orderBy("started_at").collect()
    assert [r["status"] for r in runs] == ["failed", "succeeded", "succeeded"]
    assert "RuntimeError: driver lost" in runs[0]["error"]
    assert runs[1]["commits"] == {"bronze.events": 1}


def test_a_run_killed_before_the_bronze_commit_lands_the_files_next_time(spark, settings, monkeypatch):
    _write_events(settings, "day1.json", GOOD)

    def die(*args, **kwargs):
        raise RuntimeError("executor lost")

    monkeypatch.setattr(ingest_module, "append", die)
    with pytest.raises(RuntimeError):
        ingest(spark, settings, "events")
    monkeypatch.undo()
    assert _bronze(spark, settings).count() == 0

    resumed = ingest(spark, settings, "events")
    assert _landed(resumed) == (1, 2, 0)
    runs = read_table(spark, settings.lakehouse.root, "ops.job_runs").orderBy("started_at").collect()
    assert [r["status"] for r in runs] == ["failed", "succeeded"]
    assert runs[1]["rows_out"] == 2
    assert runs[1]["delta_versions"]["bronze.events"] == 1


def test_rees46_sample_lands_through_configuration_alone(spark, settings):
    target = os.path.join(settings.landing.root, "rees46")
    os.makedirs(target)
    shutil.copy(TEST_DATA / "rees46" / "2019-Oct-sample.csv", target)

    result = ingest(spark, settings, "events", "rees46")

    assert _landed(result) == (1, 1000, 0)
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


def test_crm_exports_with_other_column_names_a_byte_order_mark_and_a_broken_row(spark, make_settings):
    settings = make_settings("ingest.crm_sources=[crm_salesforce]")
    folder = os.path.join(settings.landing.root, "crm_salesforce")
    os.makedirs(folder)
    with open(os.path.join(folder, "contacts.csv"), "w", encoding="utf-8") as handle:
        handle.write(
            "\ufeffId,Email,FirstName,LastName,Birthdate,MailingCity,MailingCountry,Email_Consent__c,"
            "LastModifiedDate,LeadSource\n"
            "003A,Ann@X.com,Ann,Lee,1990-01-02,NYC,US,true,2026-11-01T10:00:00Z,Web\n"
            '003B,"bob@y.com,Bob\n'
        )

    result = ingest(spark, settings, "crm")

    assert _landed(result) == (1, 2, 1)
    ann = _bronze(spark, settings, "bronze.crm").where(F.col("customer_id") == "003A").first()
    assert (ann["email"], ann["city"], ann["email_consent"], ann["updated_at"]) == (
        "Ann@X.com", "NYC", "true", "2026-11-01T10:00:00Z"
    )
    assert json.loads(ann["_rescued_data"]) == {"LeadSource": "Web"}


def test_missing_landing_path_is_an_input_error(spark, settings):
    with pytest.raises(InputError, match=r"landing path not found: .*landing/events \(source 'web'"):
        ingest(spark, settings, "events")


def test_an_unreadable_file_is_quarantined_with_its_reason_and_the_rest_lands(spark, settings):
    import gzip

    _write_events(settings, "good.json", GOOD)
    whole = gzip.compress(("\n".join(json.dumps({**GOOD[0], "event_id": f"z{i}"}) for i in range(500)) + "\n").encode())
    broken = os.path.join(settings.landing.root, "events", "broken.json.gz")
    with open(broken, "wb") as handle:
        handle.write(whole[: len(whole) // 2])  # cut off mid-stream: every read of it fails
    with open(os.path.join(settings.landing.root, "events", "plain.json.gz"), "wb") as handle:
        handle.write(b"not gzip at all\n")  # the reason is in the JVM error's cause, not its message

    result = ingest(spark, settings, "events")

    assert _landed(result) == (1, 2, 0)
    quarantined = read_table(spark, settings.lakehouse.root, "ops.quarantined_files").orderBy("path").collect()
    assert [(q["path"].rsplit("/", 1)[-1], q["source"], q["reason"]) for q in quarantined] == [
        ("broken.json.gz", "web", "truncated or corrupt compressed file"),
        ("plain.json.gz", "web", "truncated or corrupt compressed file")]
    assert result.details["warnings"] == [
        f"quarantined {q['path']} of source web (truncated or corrupt compressed file); the rest of its batch landed"
        for q in quarantined]
    assert [f["path"].endswith("good.json") for f in landed_files(spark, settings, settings.source("web", "events"))] == [
        True]
    again = ingest(spark, settings, "events")  # the source is not wedged: nothing new, nothing to retry
    assert _landed(again) == (0, 0, 0)


def test_file_names_with_spaces_non_ascii_and_glob_characters_land_exactly_once(spark, settings):
    names = ["a b.json", "naïve-ü.json", "x[1].json", "{y}.json", "star*.json", "q?.json"]
    for i, name in enumerate(names):
        _write_events(settings, name, [{**GOOD[0], "event_id": f"n{i}"}])
    assert _landed(ingest(spark, settings, "events")) == (len(names), len(names), 0)
    assert sorted(r["event_id"] for r in _bronze(spark, settings).collect()) == [f"n{i}" for i in range(len(names))]
    assert _landed(ingest(spark, settings, "events")) == (0, 0, 0)


def test_a_json_file_with_a_byte_order_mark_parses_from_its_first_line(spark, settings):
    path = _write_events(settings, "bom.json", [GOOD[0]])
    with open(path, "rb") as handle:
        text = handle.read()
    with open(path, "wb") as handle:
        handle.write(b"\xef\xbb\xbf" + text)
    assert _landed(ingest(spark, settings, "events")) == (1, 1, 0)  # not a corrupt record
    assert _bronze(spark, settings).first()["event_id"] == "e1"


def _crm_file(settings, data):
    folder = os.path.join(settings.landing.root, "crm")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "export.csv"), "wb") as handle:
        handle.write(data)


def test_csv_is_rfc4180_quoted_line_breaks_and_doubled_quotes(spark, settings):
    _crm_file(settings, (b'customer_id,first_name,last_name,updated_at\r\n'
                         b'C1,"Ann\r\nMarie","O""Brien",2026-11-01T10:00:00Z\r\n'
                         b"C2,Bob,Lee,2026-11-01T10:00:00Z\r\n"))
    assert _landed(ingest(spark, settings, "crm")) == (1, 2, 0)
    ann = _bronze(spark, settings, "bronze.crm").where(F.col("customer_id") == "C1").first()
    assert (ann["first_name"], ann["last_name"]) == ("Ann\nMarie", 'O"Brien')  # the break kept (as \n)


def test_a_declared_encoding_applies_to_the_csv_data_and_its_header(spark, settings):
    _crm_file(settings, ("customer_id,city,città_natale,updated_at\n"
                         "C1,Zoë City,Forlì,2026-11-01T10:00:00Z\n").encode("iso-8859-1"))
    crm_source = settings.sources["crm"].model_copy(update={"encoding": "ISO-8859-1"})
    latin = settings.model_copy(update={"sources": {**settings.sources, "crm": crm_source}})
    assert _landed(ingest(spark, latin, "crm")) == (1, 1, 0)
    row = _bronze(spark, settings, "bronze.crm").first()
    assert row["city"] == "Zoë City" and json.loads(row["_rescued_data"]) == {"città_natale": "Forlì"}


def test_an_unknown_or_json_encoding_is_refused_naming_it():
    from pydantic import ValidationError

    from jobs.runtime.settings import SourceSettings

    with pytest.raises(ValidationError, match="unknown character set 'klingon'"):
        SourceSettings(name="crm", kind="crm", format="csv", encoding="klingon")
    with pytest.raises(ValidationError, match="JSON lines are read as UTF-8"):
        SourceSettings(name="web", kind="events", format="json", encoding="ISO-8859-1")
