import json
import shutil
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from click.testing import CliRunner

from jobs.cli import cli
from jobs.rules.segments import load_segments
from jobs.runtime.errors import ConfigError
from jobs.runtime.tables import CUSTOMERS_SCHEMA, SILVER_EVENTS_SCHEMA, read_table, table_path
from jobs.stages.features import build_features, rebuild_daily_state
from jobs.stages.segment import diff, history, membership_at, run_segments
from tests.conftest import REPO

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def _event(i, customer, kind, ts, product=None):
    return {"event_id": f"e{i}", "customer_id": customer, "event_type": kind, "event_ts": ts,
            "event_date": ts.date(), "session_id": f"s{i}", "product_id": product,
            "category": "electronics.smartphone" if product else None,
            "top_category": "electronics" if product else None,
            "price": Decimal("10.00") if product else None}


@pytest.fixture(scope="module")
def _gold_template(spark, template_settings, write_rows):
    """Four customers' silver events around T0 and their daily state: built once, copied per test."""
    settings = template_settings("gold")
    naive = T0.replace(tzinfo=None)
    write_rows(settings, "silver.events", [
        _event(1, "C1", "cart_abandonment", naive - timedelta(hours=23, minutes=30)),  # in at T0, out at T0+1h
        _event(2, "C2", "add_to_cart", naive - timedelta(minutes=30), "P1"),  # window passes by T0+1h: enters
        _event(3, "C3", "add_to_cart", naive - timedelta(hours=3), "P2"),  # in at both times
        _event(4, "C4", "product_view", naive - timedelta(days=1), "P3"),
    ], SILVER_EVENTS_SCHEMA)
    write_rows(settings, "silver.customers", [
        {"customer_id": "C4", "city": "New York", "birth_date": date(1996, 1, 1), "email_consent": True},
    ], CUSTOMERS_SCHEMA)
    rebuild_daily_state(spark, settings)
    return settings.lakehouse.root


@pytest.fixture
def gold_lakehouse(_gold_template, settings):
    shutil.copytree(_gold_template, settings.lakehouse.root)
    return settings


def test_segment_runs_an_hour_apart_move_customers_and_time_travel_returns_the_first(spark, gold_lakehouse):
    settings = gold_lakehouse
    first = run_segments(spark, settings, T0)
    second = run_segments(spark, settings, T0 + timedelta(hours=1))

    changes = {c[0]: c[1:] for c in first.segments}
    assert changes["abandoned_cart_24h"] == (2, 2, 0)
    assert changes["nyc_electronics_25_35"] == (1, 1, 0)
    assert {c[0]: c[1:] for c in second.segments}["abandoned_cart_24h"] == (2, 1, 1)
    first_version, second_version = (r.versions["gold.segment_membership"] for r in (first, second))
    assert second_version == first_version + 1

    root = settings.lakehouse.root
    at_first = membership_at(spark, root, "abandoned_cart_24h", version=first_version)
    assert sorted(r["customer_id"] for r in at_first.collect()) == ["C1", "C3"]
    now = {r["customer_id"]: r["entered_at"] for r in membership_at(spark, root, "abandoned_cart_24h").collect()}
    assert now == {"C2": datetime(2026, 11, 20, 13, 0), "C3": datetime(2026, 11, 20, 12, 0)}  # C3 kept entered_at
    assert diff(spark, root, "abandoned_cart_24h", first_version, second_version) == (["C2"], ["C1"])

    runs = history(spark, root, "abandoned_cart_24h")
    assert [(r["delta_version"], r["size"], r["entered"], r["exited"]) for r in runs] == [
        (first_version, 2, 2, 0), (second_version, 2, 1, 1)]
    assert {r["rules_hash"] for r in runs} == {first.rules_hash}
    commits = spark.sql(f"DESCRIBE HISTORY delta.`{table_path(root, 'gold.segment_membership')}`")
    assert commits.count() == 2  # one commit per segment run that changed it (the first created the table)

    third = run_segments(spark, settings, T0 + timedelta(hours=1, minutes=1))  # nobody moves: no commit
    assert third.versions["gold.segment_membership"] == second_version and third.data_commits == 0
    assert [r["size"] for r in history(spark, root, "abandoned_cart_24h")] == [2, 2, 2]
    # Judged on the same features, time and rules as the run that moved nobody: no work at all.
    fourth = run_segments(spark, settings, T0 + timedelta(hours=1, minutes=1))
    assert fourth.spark_jobs == 0 and fourth.data_commits == 0
    assert fourth.segments == [(sid, size, 0, 0) for sid, size, _, _ in third.segments]


def test_segment_without_as_of_uses_the_features_as_of(spark, gold_lakehouse):
    build_features(spark, gold_lakehouse, T0)
    result = run_segments(spark, gold_lakehouse)
    assert result.as_of == T0
    assert read_table(spark, gold_lakehouse.lakehouse.root, "gold.customer_features").count() == 4


def _bad_rules(tmp_path, name, text):
    rules = tmp_path / "rules"
    shutil.copytree(REPO / "rules", rules)
    (rules / "segments" / f"{name}.yaml").write_text(text)
    return rules


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("id: bad\nname: Bad\nwhere: {field: agee, gte: 3}\n", "segment 'bad': where: field 'agee': unknown field"),
        ("id: bad\nname: Bad\nwhere: {field: age, over: 3}\n", "segment 'bad': where: field 'age': unknown operator"),
        ("id: bad\nname: Bad\nwhere: {field: cart_abandoned_at, within: soon}\n", "bad duration 'soon'"),
        ("id: bad\nname: Bad\nsql: \"agee > 3\"\n", "segment 'bad': sql: "),
        ("id: bad\nname: Bad\nsql: \"age + 3\"\n", "segment 'bad': sql: expected a boolean, got int"),
        ("id: bad\nname: Bad\nsql: \"age > 3\"\nsync: {max_remove_share: 2}\n",
         "segment 'bad': sync: max_remove_share: expected a number from 0 to 1, got 2"),
        ("id: bad\nname: Bad\nsql: \"reflect('java.lang.System', 'getenv', 'KLAVIYO_API_KEY') IS NOT NULL\"\n",
         "segment 'bad': sql: function reflect is not allowed in rules"),
        ("id: bad\nname: Bad\nsql: \"java_method('java.lang.System', 'getenv', 'HOME') = 'x'\"\n",
         "segment 'bad': sql: function java_method is not allowed in rules"),
        ("id: bad\nname: Bad\nsql: \"EXISTS (SELECT * FROM text.`/etc/passwd`)\"\n",
         "segment 'bad': sql: a subquery is not allowed: a rule reads only the columns of its own table"),
        ("id: bad\nname: Bad\nsql: \"customer_id IN (SELECT customer_id FROM delta.`/tmp/x/silver/customers`)\"\n",
         "segment 'bad': sql: a subquery is not allowed"),
    ],
)
def test_a_bad_rule_file_fails_fast_with_file_segment_and_field(spark, settings, tmp_path, text, message):
    rules = _bad_rules(tmp_path, "bad", text)
    result = CliRunner().invoke(cli, ["--set", f"lakehouse.root={settings.lakehouse.root}",
                                      "--set", f"rules_dir={rules}", "rules", "validate"])
    assert result.exit_code == 2
    line = result.output.strip()
    assert "\n" not in line and line.startswith(f"error: {rules / 'segments' / 'bad.yaml'}: ") and message in line
    segment_run = CliRunner().invoke(cli, ["--set", f"lakehouse.root={settings.lakehouse.root}",
                                           "--set", f"rules_dir={rules}", "segment", "--as-of", "2026-11-20"])
    assert segment_run.exit_code == 2 and message in segment_run.output


def test_an_expectation_may_not_call_outside_the_allowed_functions(spark, settings, tmp_path):
    rules = _bad_rules(tmp_path, "fine", "id: fine\nname: Fine\nsql: \"age > 3\"\n")
    (rules / "quality.yaml").write_text(
        "silver.events:\n  - name: sneaky\n    expect: \"length(java_method('java.lang.System', 'getenv', "
        "'PATH')) > 0\"\n    action: warn\n")
    result = CliRunner().invoke(cli, ["--set", f"lakehouse.root={settings.lakehouse.root}",
                                      "--set", f"rules_dir={rules}", "rules", "validate"])
    assert result.exit_code == 2
    assert result.output.strip() == (f"error: {rules / 'quality.yaml'}: silver.events: sneaky: function java_method "
                                     "is not allowed in rules (allowed: the text, number, time, array and null "
                                     "functions listed in jobs/rules/sql.py)")


def test_shipped_rules_validate(spark, settings, tmp_path):
    result = CliRunner().invoke(cli, ["--set", f"lakehouse.root={settings.lakehouse.root}", "rules", "validate"])
    assert result.exit_code == 0, result.output
    assert "3 templates in" in result.output and "(abandoned_cart, recommendations, viewed_offer)" in result.output
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "offer.liquid").write_text("<p>{{ customer.first_name }}</p>\n<p>{{ feature.rfm_segment }}</p>\n")
    bad = CliRunner().invoke(cli, ["--set", f"lakehouse.root={settings.lakehouse.root}",
                                   "--set", f"templates_dir={tmp_path / 't'}", "rules", "validate"])
    assert bad.exit_code == 2
    assert bad.output.startswith(f"error: 1 template problem(s): {tmp_path / 't' / 'offer.liquid'}:2:7: "
                                 "'feature' is not in the context (known: customer, features,")
    assert {"abandoned_cart_24h", "nyc_electronics_25_35", "high_value", "at_risk"} <= {
        s.id for s in load_segments(REPO / "rules")}


def test_duplicate_segment_ids_are_refused(tmp_path):
    rules = _bad_rules(tmp_path, "copy", (REPO / "rules/segments/at_risk.yaml").read_text())
    with pytest.raises(ConfigError, match="segment 'at_risk': id already used in"):
        load_segments(rules)


def test_segments_commands_read_membership_over_versions(spark, gold_lakehouse):
    first, second = (run_segments(spark, gold_lakehouse, t).versions["gold.segment_membership"]
                     for t in (T0, T0 + timedelta(hours=1)))
    base = ["--set", f"lakehouse.root={gold_lakehouse.lakehouse.root}", "segments"]

    def run(*args):
        result = CliRunner().invoke(cli, [*base, *args])
        assert result.exit_code == 0, result.output
        return result.output

    shown = run("show", "abandoned_cart_24h", "--version", str(first))
    assert shown.splitlines()[0] == "abandoned_cart_24h: 2 members"
    assert [line.split()[0] for line in shown.splitlines()[3:]] == ["C1", "C3"]
    latest = run("show", "abandoned_cart_24h", "--timestamp", datetime.now(UTC).isoformat())
    assert [line.split()[0] for line in latest.splitlines()[3:]] == ["C2", "C3"]
    assert run("diff", "abandoned_cart_24h", "--from", str(first), "--to", str(second)).splitlines() == [
        f"abandoned_cart_24h v{first} -> v{second}: 1 entered, 1 exited", "+ C2", "- C1"]
    history_lines = run("history", "abandoned_cart_24h").splitlines()[2:]
    assert [line.split()[:1] + line.split()[3:6] for line in history_lines] == [
        [str(first), "2", "2", "0"], [str(second), "2", "1", "1"]]
    listed = {line.split()[0]: line.split()[1] for line in run("list").splitlines()[2:]}
    assert listed["abandoned_cart_24h"] == "2" and listed["nyc_electronics_25_35"] == "1"
    both = CliRunner().invoke(cli, [*base, "show", "at_risk", "--version", "1", "--timestamp", "2026-11-20"])
    assert both.exit_code == 2 and "not both" in both.output

    # The same for a scheduler: one JSON document each.
    assert json.loads(run("show", "abandoned_cart_24h", "--version", str(first), "-o", "json"))["members"] == 2
    assert json.loads(run("diff", "abandoned_cart_24h", "--from", str(first), "--to", str(second), "-o", "json"))[
        "entered"] == ["C2"]
    assert [(r["version"], r["entered"], r["exited"]) for r in json.loads(
        run("history", "abandoned_cart_24h", "-o", "json"))] == [(first, 2, 0), (second, 1, 1)]
    assert {r["segment"]: r["size"] for r in json.loads(run("list", "-o", "json"))}["abandoned_cart_24h"] == 2
