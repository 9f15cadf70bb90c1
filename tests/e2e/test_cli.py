"""The ``lakehouse`` command as operators use it: in-process through click's runner (sharing the
test session's Spark) and, for exit codes and tracebacks, as the installed console script."""

import json
import os
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from jobs.cli import cli
from tests.conftest import DEMO_LATER, REPO


def _run(*args, catch=True):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=catch)
    return result


def _roots(tmp_path):
    return ["--set", f"lakehouse.root={tmp_path / 'lakehouse'}",
            "--set", f"landing.root={tmp_path / 'landing'}"]


def _walk(command, path=()):
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _walk(sub, (*path, name))


def test_every_command_and_option_has_help_text():
    for path, command in _walk(cli):
        assert (command.help or "").strip(), f"lakehouse {' '.join(path)} has no help"
        for param in command.params:
            if isinstance(param, click.Option):
                assert (param.help or "").strip(), f"{' '.join(path)} {param.opts} has no help"


def test_help_lists_every_command_with_a_description():
    result = _run("--help")
    assert result.exit_code == 0
    for name in ("demo", "ingest", "cleanse", "quality", "features", "segment", "segments", "rules",
                 "tables", "jars"):
        assert f"  {name} " in result.output
    assert "generate" in _run("demo", "--help").output
    assert {"events", "crm", "catalog"} <= set(_run("ingest", "--help").output.split())


def test_tables_and_quality_report_of_the_demo_lakehouse_match_its_manifest(demo_lakehouse):
    manifest, conf = demo_lakehouse.manifest, str(demo_lakehouse.conf)
    tables = {t["table"]: t for t in json.loads(_run("--conf", conf, "tables", "--json").output)}
    assert tables["bronze.events"]["rows"] == manifest["events"]["lines"]
    assert tables["bronze.events"]["corrupt_rows"] == manifest["events"]["malformed_lines"]
    assert tables["bronze.crm"]["rows"] == manifest["crm"]["rows"]
    assert tables["bronze.catalog"]["rows"] == manifest["catalog"]["rows"]
    assert tables["silver.events"]["rows"] == manifest["events"]["valid"]
    assert tables["bronze.events"]["last_run_status"] == "succeeded"
    assert tables["ops.dq_results"]["kind"] == "view" and tables["ops.dq_results"]["rows"] > 0
    text = _run("--conf", conf, "tables").output
    assert "bronze.events" in text and f"{manifest['events']['lines']:,}" in text

    report = _run("--conf", conf, "quality", "report", "--table", "silver.events")
    assert report.exit_code == 0
    assert [line.split()[1] for line in report.output.splitlines()[2:]] == [
        "event_after_2000", "price_below_one_million", "purchase_has_order_id"]
    landed = _run("--conf", conf, "landed").output.splitlines()[2:]
    assert len(landed) == sum(len(files) for files in manifest["files"].values())
    assert {line.split()[0] for line in landed} == {"web", "crm", "catalog"}


def test_ingest_and_cleanse_print_what_they_landed_and_judged_and_a_rerun_adds_nothing(spark, tmp_path):
    events = tmp_path / "landing" / "events"
    events.mkdir(parents=True)
    lines = [{"event_id": "e1", "customer_id": "C1", "event_type": "page_view", "timestamp": "2026-11-19T10:00:00Z"},
             {"event_id": "e1", "customer_id": "C1", "event_type": "page_view", "timestamp": "2026-11-19T10:00:00Z"},
             {"event_id": "e2", "customer_id": "C1", "event_type": "teleport", "timestamp": "2026-11-19T10:01:00Z"}]
    (events / "a.json").write_text("\n".join(json.dumps(x) for x in lines) + "\n{broken\n")
    roots = [*_roots(tmp_path), "--set", "spark.profile=test"]

    landed = _run(*roots, "ingest", "events", catch=False)
    assert landed.exit_code == 0, landed.output
    assert landed.output.splitlines()[2].split()[:6] == ["web", "bronze.events", "1", "4", "1", "1"]
    cleansed = _run(*roots, "cleanse", "--events", catch=False)
    assert cleansed.exit_code == 0, cleansed.output
    assert cleansed.output.splitlines()[2].split()[:6] == ["silver.events", "1", "4", "1", "2", "1"]
    reasons = {line.split()[1]: line.split()[2] for line in cleansed.output.split("\n\n")[1].splitlines()[2:]}
    assert reasons == {"corrupt_record": "1", "unknown_event_type": "1"}

    rerun = _run(*roots, "ingest", "events")
    assert rerun.exit_code == 0 and rerun.output.splitlines()[2].split()[2:6] == ["0", "0", "0", "0"]


def test_demo_refuses_a_future_end_and_a_used_folder(tmp_path):
    future = _run("demo", "generate", "--out", str(tmp_path / "x"), "--end", "2999-01-01T00:00:00Z")
    assert future.exit_code == 2 and "is in the future" in future.output
    assert _run("demo", "generate", "--out", str(tmp_path / "y"), "--days", "1",
                "--events-per-day", "20", "--end", "2026-11-01").exit_code == 0
    used = _run("demo", "generate", "--out", str(tmp_path / "y"))
    assert used.exit_code == 2 and "already holds demo data" in used.output


@pytest.mark.parametrize("command", [["package", "--out"], ["bench", "--events", "1000", "--workdir"]])
def test_package_and_bench_refuse_a_folder_they_did_not_make(tmp_path, command):
    project = tmp_path / "project"
    (project / "conf").mkdir(parents=True)
    (project / "conf" / "prod.yaml").write_text("lakehouse: {root: s3a://bucket/lakehouse}\n")
    result = _run(*command, str(project))
    assert result.exit_code == 2, result.output
    assert f"error: {project} is not empty and was not made by `lakehouse {command[0]}`" in result.output
    assert (project / "conf" / "prod.yaml").is_file()  # nothing deleted


@pytest.mark.parametrize(("args", "message"), [
    (["stream", "--trigger", "soon"], "'soon' is not a duration (e.g. 5s, 500ms, 2m)"),
    (["stream", "--trigger", "0s"], "'0s' is not a positive duration"),
    (["stream", "--sync", "mailchimp"], "error: unknown destination"),
    (["serve", "--set-nothing"], "No such option"),
])
def test_stream_and_serve_refuse_bad_arguments_before_starting_anything(tmp_path, args, message):
    result = _run(*_roots(tmp_path), *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "lakehouse").exists()


def test_serve_refuses_a_token_key_it_cannot_read(tmp_path, monkeypatch):
    monkeypatch.delenv("LAKEHOUSE_COLLECTOR_TOKEN_KEY", raising=False)
    clients = '{"shop": {"env": "SHOP_SECRET"}}'
    monkeypatch.setenv("SHOP_SECRET", "s" * 20)
    result = _run(*_roots(tmp_path), "--set", f"collector.oauth_clients={clients}", "serve", "--port", "1")
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: collector.token_key_env: ") and "LAKEHOUSE_COLLECTOR_TOKEN_KEY" in result.output
    assert "s" * 20 not in result.output


def test_unknown_source_is_a_one_line_error(tmp_path):
    result = _run(*_roots(tmp_path), "ingest", "events", "--source", "nope")
    assert result.exit_code == 2
    assert result.output.strip() == "error: unknown events source 'nope' (configured: collector, rees46, web)"


def _script(*args, cwd):
    env = {k: v for k, v in os.environ.items() if k != "LAKEHOUSE_ENV"}
    return subprocess.run(
        [sys.executable, "-m", "jobs.cli", *args], cwd=cwd, env=env, capture_output=True,
        text=True, timeout=300, check=False,
    )


@pytest.mark.parametrize(
    ("args", "conf_text", "message"),
    [
        (["--conf", "{conf}", "tables"], "lakehouse: {root: x\n", r"error: .*bad\.yaml: invalid YAML at line 2, column 1: .*"),
        (["--conf", "{conf}", "tables"], "lakehouse: {root: x}\nlanding: {root: y}\nspark: {cores: 2}\n",
         r"error: .*bad\.yaml: spark\.cores: unknown key"),
        (["--set", "lakehouse.rooot=/tmp/x", "tables"], None, r"error: unknown setting 'lakehouse\.rooot' \(from --set\)"),
        (["--env", "staging", "tables"], None, r"error: config file not found: .*conf/staging\.yaml"),
    ],
)
def test_config_errors_exit_2_with_one_line_and_no_traceback(tmp_path, args, conf_text, message):
    import re

    if conf_text is not None:
        (tmp_path / "bad.yaml").write_text(conf_text)
    args = [a.replace("{conf}", str(tmp_path / "bad.yaml")) for a in args]
    result = _script(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and re.fullmatch(message, lines[0]), result.stderr
    assert "Traceback" not in result.stderr


def test_missing_landing_path_exits_2_from_the_console_script(tmp_path):
    result = _script(*_roots(tmp_path), "--set", "spark.profile=test", "--set", "spark.master=local[1]",
                     "ingest", "events", cwd=REPO)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: landing path not found: {tmp_path / 'landing' / 'events'} (source 'web', "
        f"landing.root={tmp_path / 'landing'})"
    ]
    assert "Traceback" not in result.stderr


def test_run_goes_through_every_stage_and_prints_segment_sizes(demo_lakehouse, spark, tmp_path):
    manifest, conf = demo_lakehouse.manifest, str(demo_lakehouse.conf)
    lines = demo_lakehouse.outputs["run"].splitlines()
    assert lines[0].split()[-3:] == ["spark", "jobs", "commits"]  # --verbose: Spark jobs and commits too
    assert [line.split()[0] for line in lines[2:9]] == [
        "ingest", "cleanse", "audit", "features", "segment", "recommend", "sync:file"]
    assert lines[2].split()[1] == f"{manifest['events']['lines'] + manifest['crm']['rows'] + manifest['catalog']['rows']:,}"
    sizes = {line.split()[0]: line.split()[1] for line in lines[12:]}
    assert set(sizes) == {"abandoned_cart_24h", "at_risk", "high_value", "nyc_electronics_25_35", "window_shoppers"}
    exports = demo_lakehouse.base / "exports"
    assert len(list(exports.glob("*/manifest.json"))) == 2  # the run's sync and the one after the second segment run
    runs = json.loads(_run("--conf", conf, "tables", "--json").output)
    assert {t["table"]: t["last_run_status"] for t in runs}["gold.segment_membership"] == "succeeded"

    copy = demo_lakehouse.copy(tmp_path)
    exports = copy.base / "exports"
    batches = sorted(exports.glob("*/*/*.jsonl"))
    again = _run("--conf", str(copy.conf), "sync", "file", catch=False)
    assert again.exit_code == 0, again.output
    rows = [line.split() for line in again.output.splitlines()[3:]]
    assert {tuple(r[1:]) for r in rows} == {("0", "0", "0", "0", "0")}
    assert batches and sorted(exports.glob("*/*/*.jsonl")) == batches  # a sync with nothing new sends nothing


def test_run_stops_at_the_first_failing_stage_and_says_which(spark, tmp_path):
    from jobs.runtime.tables import read_table

    result = _run(*_roots(tmp_path), "run")
    assert result.exit_code == 2
    assert result.output.startswith("error: stage ingest failed: landing path not found: ")
    runs = read_table(spark, str(tmp_path / "lakehouse"), "ops.job_runs").orderBy("job").collect()
    assert [(r["job"], r["status"]) for r in runs] == [("ingest", "failed"), ("run", "failed")]
    assert runs[0]["error"].startswith("InputError: landing path not found")
    assert runs[1]["error"].startswith("InputError: stage ingest failed: landing path not found")


def test_global_options_come_from_the_environment_too(tmp_path):
    conf = tmp_path / "sched.yaml"
    conf.write_text(f"lakehouse: {{root: {tmp_path / 'lh'}}}\nlanding: {{root: {tmp_path / 'from-conf'}}}\n")
    (tmp_path / "sources").symlink_to(REPO / "conf" / "sources")
    runner = CliRunner()
    from_conf = runner.invoke(cli, ["ingest", "events"], env={"LAKEHOUSE_CONF": str(conf)})
    assert (from_conf.exit_code, from_conf.output.splitlines()[0]) == (
        2, f"error: landing path not found: {tmp_path / 'from-conf' / 'events'} (source 'web', "
           f"landing.root={tmp_path / 'from-conf'})")
    overridden = runner.invoke(cli, ["ingest", "events"], env={
        "LAKEHOUSE_CONF": str(conf), "LAKEHOUSE_SET": f"landing.root={tmp_path / 'set'} lease.wait_seconds=5"})
    assert f"landing.root={tmp_path / 'set'})" in overridden.output and overridden.exit_code == 2
    flag_wins = runner.invoke(cli, ["--set", f"landing.root={tmp_path / 'flag'}", "ingest", "events"],
                              env={"LAKEHOUSE_CONF": str(conf), "LAKEHOUSE_SET": "landing.root=/nowhere"})
    assert f"landing.root={tmp_path / 'flag'})" in flag_wins.output
    assert "[env var: LAKEHOUSE_CONF]" in runner.invoke(cli, ["--help"], terminal_width=200).output


def _parse(args):
    """Parse a command line against the CLI without running it: a wrong command or option raises."""
    ctx = cli.make_context("lakehouse", list(args))
    command = cli
    while isinstance(command, click.Group):
        pending = [*ctx._protected_args, *ctx.args]  # click 8.2+: the subcommand and its arguments
        name, sub, rest = command.resolve_command(ctx, pending)
        ctx = sub.make_context(name, rest, parent=ctx)
        command = sub
    return ctx.command_path


def test_the_scheduler_examples_use_real_commands_and_options():
    import ast

    dag = ast.parse((REPO / "examples" / "airflow" / "email_lakehouse.py").read_text())
    common = next(ast.literal_eval(n.value) for n in ast.walk(dag)
                  if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "COMMON")
    calls = [[ast.literal_eval(a) for a in n.args[1:]] for n in ast.walk(dag)
             if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "lakehouse"]
    job = json.loads((REPO / "examples" / "databricks" / "email_lakehouse_job.json").read_text())
    lines = [[*common, *call] for call in calls] + [t["spark_python_task"]["parameters"] for t in job["tasks"]]
    assert len(lines) == 12
    assert {_parse(line) for line in lines} == {
        "lakehouse ingest events", "lakehouse ingest crm", "lakehouse ingest catalog", "lakehouse cleanse",
        "lakehouse features", "lakehouse segment", "lakehouse recs build", "lakehouse sync", "lakehouse run",
        "lakehouse preview"}
    with pytest.raises(click.UsageError):
        _parse(["run", "--sync-to", "klaviyo"])


def test_run_and_sync_print_one_json_document_for_a_scheduler(demo_lakehouse, tmp_path):
    copy = demo_lakehouse.copy(tmp_path)
    landed = ["--set", f"landing.root={demo_lakehouse.base / 'landing'}"]  # the streams' checkpoints name these files
    ran = CliRunner().invoke(cli, ["--conf", str(copy.conf), *landed, "run", "--as-of", DEMO_LATER, "--sync", "file",
                                   "--output", "json"])
    assert ran.exit_code == 0, ran.output
    document = json.loads(ran.stdout)
    assert [(s["stage"], s["status"]) for s in document["stages"]] == [
        (name, "succeeded") for name in ("ingest", "cleanse", "audit", "features", "segment", "recommend",
                                         "sync:file")]
    assert document["stages"][0]["rows_in"] == 0 and document["stages"][0]["commits"] == {}  # nothing new landed
    assert {s["segment"] for s in document["segments"]} == {
        "abandoned_cart_24h", "at_risk", "high_value", "nyc_electronics_25_35", "window_shoppers"}
    synced = CliRunner().invoke(cli, ["--conf", str(copy.conf), "sync", "file", "-o", "json", "--fail-on-refused"])
    assert synced.exit_code == 0, synced.output
    assert json.loads(synced.stdout)["refused"] == 0
    assert {s["adds"] + s["removes"] + s["updates"] for s in json.loads(synced.stdout)["segments"]} == {0}
    tables = json.loads(CliRunner().invoke(cli, ["--conf", str(copy.conf), "tables", "-o", "json"]).stdout)
    assert {"silver.products", "gold.product_recommendations"} <= {t["table"] for t in tables}
    report = json.loads(CliRunner().invoke(cli, ["--conf", str(copy.conf), "quality", "report", "--table",
                                                 "source:web", "-o", "json"]).stdout)
    assert [(r["expectation"], r["failed_rows"]) for r in report] == [("web_events_fresh", 0), ("web_hourly_volume", 0)]
    assert report[0]["expression"].startswith("newest event ") and report[0]["run_id"] == document["run_id"]


def test_verbose_logs_a_start_and_an_end_line_per_stage_as_json(spark, tmp_path):
    events = tmp_path / "landing" / "events"
    events.mkdir(parents=True)
    (events / "a.json").write_text(json.dumps({"event_id": "e1", "customer_id": "ann@example.com",
                                               "event_type": "page_view", "timestamp": "2026-11-19T10:00:00Z"}) + "\n")
    result = CliRunner().invoke(cli, [*_roots(tmp_path), "--set", "spark.profile=test", "-v", "--log-format", "json",
                                      "ingest", "events"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert [(r["logger"], r["level"], r["stage"], r.get("status")) for r in lines] == [
        ("jobs.run", "INFO", "ingest", None), ("jobs.run", "INFO", "ingest", "succeeded")]
    end = lines[1]
    assert (end["rows_in"], end["rows_out"], end["commits"]) == (1, 1, {"bronze.events": 2})
    assert end["run_id"] == lines[0]["run_id"] and end["seconds"] > 0 and end["run_id"] in result.stdout
    quiet = CliRunner().invoke(cli, [*_roots(tmp_path), "--set", "spark.profile=test", "ingest", "events"])
    assert quiet.stderr == ""  # the default logs warnings only


def _complete(args, incomplete):
    from click.shell_completion import ShellComplete

    completion = ShellComplete(cli, {}, "lakehouse", "_LAKEHOUSE_COMPLETE")
    return [item.value for item in completion.get_completions(list(args), incomplete)]


def test_the_shell_completes_destinations_and_segment_ids_from_the_settings_and_rules():
    assert _complete(["sync"], "") == ["file"]
    webhook = ["--set", "destinations.webhook.url=https://example.com/hook", "--set",
               "destinations.webhook.secret_env=HOOK_SECRET"]
    assert _complete([*webhook, "run", "--sync"], "") == ["file", "webhook"]
    assert _complete(["segments", "show"], "a") == ["abandoned_cart_24h", "at_risk"]
    assert _complete(["sync", "file", "--segment"], "w") == ["window_shoppers"]
    assert _complete(["--set", "rules_dir=/nowhere", "segments", "diff"], "") == []  # no rules: nothing, no error
