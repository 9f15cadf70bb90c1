"""The ``lakehouse`` command: one click group driving every job.

Job modules (and pyspark) are imported inside their commands, so ``lakehouse --help`` is
instant. Operator mistakes (config, paths, arguments) print one ``error:`` line and exit 2.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from jobs.runtime.errors import InputError, LakehouseError
from jobs.runtime.pii import mask

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from jobs.runtime.settings import Settings


class OperatorError(click.ClickException):
    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class LakehouseGroup(click.Group):
    """Turns a LakehouseError raised anywhere below into a one-line error (emails masked) with
    the error's exit code: 2 for bad input, 1 for a failed run."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LakehouseError as exc:
            raise OperatorError(mask(str(exc)), exc.exit_code) from None


class UtcTimestamp(click.ParamType):
    """ISO 8601 (``2026-11-20T12:00:00Z``, ``…+02:00``, ``2026-11-20``) as an aware UTC datetime."""

    name = "TIMESTAMP"

    def convert(self, value: Any, param: Any, ctx: Any) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            parsed = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
        except ValueError:
            self.fail(f"{value!r} is not an ISO 8601 timestamp (e.g. 2026-11-20T12:00:00Z)", param, ctx)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC)


class Duration(click.ParamType):
    """``5s``, ``500ms``, ``2m`` or plain seconds, as seconds."""

    name = "DURATION"
    UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        if isinstance(value, int | float):
            return float(value)
        text = str(value).strip().lower()
        number, unit = text.rstrip("smh"), text[len(text.rstrip("smh")):] or "s"
        try:
            seconds = float(number) * self.UNITS[unit]
        except (ValueError, KeyError):
            self.fail(f"{value!r} is not a duration (e.g. 5s, 500ms, 2m)", param, ctx)
        if seconds <= 0:
            self.fail(f"{value!r} is not a positive duration", param, ctx)
        return seconds


class Runtime:
    """Settings and Spark, made on first use so that ``--help`` and bad arguments stay fast."""

    def __init__(self, env: str | None, conf_path: str | None, overrides: tuple[str, ...],
                 wait: float | None = None):
        self.env, self.conf_path, self.overrides, self.wait = env, conf_path, overrides, wait
        self.hive = False  # the lakehouse's own Hive metastore backs the session catalog (see get_spark)

    @cached_property
    def settings(self) -> Settings:
        from jobs.runtime import lease
        from jobs.runtime.settings import load_settings

        settings = load_settings(self.env, self.conf_path, self.overrides)
        lease.CONFIGURED = (settings.lease if self.wait is None
                            else settings.lease.model_copy(update={"wait_seconds": self.wait}))
        return settings

    @cached_property
    def spark(self) -> SparkSession:
        from jobs.runtime.spark import get_spark

        return get_spark(self.settings.spark, s3a=self.s3a, root=self.settings.lakehouse.root, hive=self.hive)

    @property
    def s3a(self) -> bool:
        """Whether a root is on ``s3a://``: the S3A connector's jars join Delta's."""
        from jobs.runtime.jars import needs_s3a

        return needs_s3a(self.settings.lakehouse.root, self.settings.landing.root)


pass_runtime = click.make_pass_decorator(Runtime)


# -- shell completion (``eval "$(_LAKEHOUSE_COMPLETE=bash_source lakehouse)"``, see the README) ---
def _completion_settings(ctx: click.Context) -> Any:
    """The settings the command line being completed names (its --env, --conf and --set)."""
    from jobs.runtime.settings import load_settings

    root = ctx.find_root().params
    return load_settings(root.get("env"), root.get("conf_path"), root.get("overrides") or ())


def complete_destinations(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """The destinations the settings configure (``file`` always)."""
    try:
        destinations = _completion_settings(ctx).destinations
    except Exception:  # a half-typed command line: nothing to offer, never a traceback
        return []
    names = [name for name in type(destinations).model_fields if getattr(destinations, name) is not None]
    return [name for name in names if name.startswith(incomplete)]


def complete_segments(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """The segment ids of the rules folder (read from the rule files; no Spark)."""
    from jobs.rules.segments import load_segments
    from jobs.runtime.settings import rules_dir

    try:
        segments = load_segments(rules_dir(_completion_settings(ctx)))
    except Exception:  # a broken rule file: nothing to offer
        return []
    return [segment.id for segment in segments if segment.id.startswith(incomplete)]
OUTPUT = click.option("--output", "-o", type=click.Choice(["text", "json"]), default="text", show_default=True,
                      help="text for people; json: one JSON document on stdout for a scheduler (warnings and "
                           "errors stay on stderr).")


def _echo_json(document: Any) -> None:
    click.echo(json.dumps(document, indent=2, sort_keys=True, default=str))


def _stage_json(stage: Any) -> dict[str, Any]:
    return {"stage": stage.stage, "status": stage.status, "rows_in": stage.rows_in, "rows_out": stage.rows_out,
            "rejected": stage.rejected, "seconds": round(stage.seconds, 3), "spark_jobs": stage.spark_jobs,
            "commits": dict(stage.commits), "versions": dict(stage.versions)}


@click.group(cls=LakehouseGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--env", envvar="LAKEHOUSE_ENV", show_envvar=True,
              help="Environment: reads conf/<env>.yaml (default: local).")
@click.option("--conf", "conf_path", metavar="PATH", envvar="LAKEHOUSE_CONF", show_envvar=True,
              help="A settings file to use instead of conf/<env>.yaml.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", envvar="LAKEHOUSE_SET", show_envvar=True,
              help="Override one setting, e.g. --set lakehouse.root=/tmp/lh (repeatable; in the variable, "
                   "separated by spaces).")
@click.option("--wait", "wait", type=click.FloatRange(min=0), metavar="SECONDS", envvar="LAKEHOUSE_WAIT",
              show_envvar=True, help="If another command is writing the lakehouse, wait this long for it to end "
                                     "(default lease.wait_seconds: 0, fail at once).")
@click.option("-v", "--verbose", "verbosity", count=True,
              help="Log more on stderr: -v each stage's start and end (run id, rows, seconds), -vv debug.")
@click.option("-q", "--quiet", is_flag=True, help="Log only errors.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              envvar="LAKEHOUSE_LOG_FORMAT", show_envvar=True, help="Log lines as text or one JSON object each.")
@click.version_option(package_name="email-lakehouse", message="%(prog)s %(version)s")
@click.pass_context
def cli(ctx: click.Context, env: str | None, conf_path: str | None, overrides: tuple[str, ...],
        wait: float | None, verbosity: int, quiet: bool, log_format: str) -> None:
    """Email-personalization lakehouse: land, cleanse, model and sync customer data."""
    from jobs.runtime.logs import configure

    configure(verbosity, quiet, log_format)
    ctx.obj = Runtime(env, conf_path, overrides, wait)


# -- demo --------------------------------------------------------------------------------------
@cli.group(cls=LakehouseGroup)
def demo() -> None:
    """Generate demo data for the embedded default pipeline."""


@demo.command("generate")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write events/, crm/ and manifest.json into (e.g. the landing root).")
@click.option("--customers", default=200, show_default=True, type=click.IntRange(1),
              help="Number of CRM customers.")
@click.option("--days", default=7, show_default=True, type=click.IntRange(1),
              help="Days of events, ending at --end.")
@click.option("--events-per-day", default=1000, show_default=True, type=click.IntRange(1),
              help="Clean events per day (dirt comes on top).")
@click.option("--seed", default=42, show_default=True, type=int, help="Random seed; same seed, same files.")
@click.option("--end", type=UtcTimestamp(), default=None,
              help="End of the generated period, not in the future (default: this hour, UTC).")
def demo_generate(out: Path, customers: int, days: int, events_per_day: int, seed: int,
                  end: datetime | None) -> None:
    """Write realistic demo events and CRM exports with known dirt, plus a manifest."""
    from jobs.tools.demo import generate

    if end is not None and end > datetime.now(UTC) + timedelta(minutes=1):
        raise OperatorError(f"--end {end.isoformat()} is in the future; demo events must have happened")
    if (out / "manifest.json").exists():
        raise OperatorError(f"{out} already holds demo data (manifest.json); choose an empty folder")
    manifest = generate(out, customers=customers, days=days, events_per_day=events_per_day,
                        seed=seed, end=end)
    events, crm = manifest["events"], manifest["crm"]
    click.echo(
        f"wrote {events['lines']:,} event lines ({events['valid']:,} clean) in "
        f"{len(manifest['files']['events'])} files and {crm['rows']:,} CRM rows to {out}"
    )


@demo.command("live")
@click.option("--trigger", default="5s", show_default=True, type=Duration(), help="The stream's trigger.")
@pass_runtime
def demo_live(runtime: Runtime, trigger: float) -> None:
    """Start the collector and the stream on the demo lakehouse, send two events over HTTP, and
    watch two segment memberships change live (run `make demo` first)."""
    import threading

    from jobs.stages.stream import stop_on_signals
    from jobs.tools.live_demo import live_demo

    stop = threading.Event()
    restore = stop_on_signals(stop)
    try:
        live_demo(runtime.spark, runtime.settings, trigger, click.echo, stop)
    finally:
        restore()


# -- ingest ------------------------------------------------------------------------------------
@cli.group(cls=LakehouseGroup)
def ingest() -> None:
    """Land new files of the landing zone as bronze Delta tables, exactly once."""


def _ingest(runtime: Runtime, kind: str, source: str | None) -> None:
    from jobs.runtime.report import format_table
    from jobs.stages.ingest import check_local_landing
    from jobs.stages.ingest import ingest as run_ingest

    settings = runtime.settings
    check_local_landing(settings, kind, source)  # a wrong name or a missing folder fails before Spark starts
    result = run_ingest(runtime.spark, settings, kind, source)
    click.echo(format_table(
        ["source", "table", "files", "rows", "corrupt", "batches", "version", "run_id"],
        [[s["source"], s["table"], s["files"], s["rows"], s["corrupt"], s["batches"], s["version"], result.run_id]
         for s in result.details.get("sources", [])],
    ))
    _warn(result)


def _warn(*results: Any) -> None:
    """One ``warning:`` line on stderr per thing a stage set aside without failing (exit stays 0)."""
    for result in results:
        for line in result.details.get("warnings", []):
            click.echo(f"warning: {line}", err=True)


@ingest.command("events")
@click.option("--source", help="One event source from conf/sources (default: ingest.event_sources).")
@pass_runtime
def ingest_events(runtime: Runtime, source: str | None) -> None:
    """Land new event files into bronze.events."""
    _ingest(runtime, "events", source)


@ingest.command("catalog")
@click.option("--source", help="One catalog source from conf/sources (default: ingest.catalog_sources).")
@pass_runtime
def ingest_catalog(runtime: Runtime, source: str | None) -> None:
    """Land new product catalog files into bronze.catalog."""
    _ingest(runtime, "catalog", source)


@ingest.command("crm")
@click.option("--source", help="One CRM source from conf/sources (default: ingest.crm_sources).")
@pass_runtime
def ingest_crm(runtime: Runtime, source: str | None) -> None:
    """Land new CRM export files into bronze.crm."""
    _ingest(runtime, "crm", source)


# -- cleanse -----------------------------------------------------------------------------------
@cli.command("cleanse")
@click.option("--events", "events_only", is_flag=True,
              help="Cleanse only events and the catalog (bronze.events, bronze.catalog -> silver).")
@click.option("--customers", "customers_only", is_flag=True,
              help="Cleanse only customers (bronze.crm -> silver).")
@pass_runtime
def cleanse(runtime: Runtime, events_only: bool, customers_only: bool) -> None:
    """Cleanse new bronze commits into silver tables, every rejected row kept with its reasons."""
    from jobs.runtime.report import format_table
    from jobs.stages.cleanse import cleanse as run_cleanse

    both = not events_only and not customers_only
    result = run_cleanse(runtime.spark, runtime.settings, events=both or events_only,
                         customers=both or customers_only)
    pipelines = result.details.get("pipelines", [])
    click.echo(format_table(
        ["pipeline", "batches", "bronze rows", "silver", "rejected", "duplicates", "run_id"],
        [[table, t.batches, t.bronze_rows, t.silver_rows, t.rejected_rows, t.duplicates, result.run_id]
         for table, t in pipelines],
    ))
    reasons = [(table, reason, n) for table, t in pipelines for reason, n in sorted(t.reasons.items())]
    if reasons:
        click.echo("")
        click.echo(format_table(["pipeline", "reason", "rows"], reasons))


# -- quality -----------------------------------------------------------------------------------
@cli.group(cls=LakehouseGroup)
def quality() -> None:
    """Data-quality expectation results."""


@quality.command("report")
@click.option("--table", "table_name", help="Only this table, e.g. silver.events (source audits: source:web).")
@OUTPUT
@pass_runtime
def quality_report(runtime: Runtime, table_name: str | None, output: str) -> None:
    """Print the latest result of every data-quality expectation and source audit."""
    from jobs.runtime.report import format_table
    from jobs.tools.quality import latest_results

    rows = latest_results(runtime.spark, runtime.settings.lakehouse.root, table_name)
    if output == "json":
        _echo_json([r.asDict() for r in rows])
        return
    if not rows:
        click.echo("no data-quality results yet: run `lakehouse cleanse` first")
        return
    click.echo(format_table(
        ["table", "expectation", "action", "failed", "checked", "failed %", "run_id", "evaluated (UTC)"],
        [[r["table"], r["expectation"], r["action"], r["failed_rows"], r["checked_rows"],
          f"{100 * r['failed_rows'] / r['checked_rows']:.2f}" if r["checked_rows"] else "-",
          r["run_id"], r["evaluated_at"]] for r in rows],
    ))
    audits = [r for r in rows if r["table"].startswith("source:")]
    if audits:
        click.echo("")
        click.echo(format_table(["source", "audit", "held", "figures"], [
            [r["table"].removeprefix("source:"), r["expectation"],
             "-" if not r["checked_rows"] else "no" if r["failed_rows"] else "yes", r["expression"]]
            for r in audits]))


@quality.command("audit")
@click.option("--as-of", "as_of", type=UtcTimestamp(), help="The time to judge at (default now).")
@pass_runtime
def quality_audit(runtime: Runtime, as_of: datetime | None) -> None:
    """Judge the source audits of rules/quality.yaml (freshness, hourly volume) now or at a time."""
    from jobs.runtime.report import format_table
    from jobs.stages.audit import run_audits

    result = run_audits(runtime.spark, runtime.settings, as_of or datetime.now(UTC))
    click.echo(format_table(["source", "audit", "action", "held", "figures"], [
        [table.removeprefix("source:"), name, action, "-" if not checked else "no" if failed else "yes", figures]
        for table, name, action, figures, failed, checked in result.dq]))
    _warn(result)


# -- gold --------------------------------------------------------------------------------------
AS_OF_HELP = "Compute as of this time, ISO 8601 (default: now). Windows are [as_of - N days, as_of)."


@cli.command("features")
@click.option("--as-of", "as_of", type=UtcTimestamp(), help=AS_OF_HELP)
@pass_runtime
def features(runtime: Runtime, as_of: datetime | None) -> None:
    """Compute gold.customer_features, one row per customer, as of a time."""
    from jobs.stages.features import FEATURES, build_features

    result = build_features(runtime.spark, runtime.settings, as_of or datetime.now(UTC))
    unchanged = result.details.get("unchanged_since")
    note = f"; unchanged since the features as of {unchanged}: nothing written" if unchanged else ""
    click.echo(f"{FEATURES} version {result.versions[FEATURES]}: {result.rows_out:,} customers "
               f"as of {result.as_of.isoformat()} (run {result.run_id}){note}")


def _print_segment_run(result: Any) -> None:
    from jobs.runtime.report import format_table

    click.echo(f"gold.segment_membership version {result.versions['gold.segment_membership']} as of "
               f"{result.as_of.isoformat()} (rules {result.rules_hash}, run {result.run_id})")
    click.echo(format_table(["segment", "size", "entered", "exited"], [list(c) for c in result.segments]))


@cli.command("segment")
@click.option("--as-of", "as_of", type=UtcTimestamp(),
              help="Judge membership as of this time (default: the as_of of the current features).")
@pass_runtime
def segment(runtime: Runtime, as_of: datetime | None) -> None:
    """Evaluate every segment rule and write membership as one Delta commit."""
    from jobs.stages.segment import run_segments

    _print_segment_run(run_segments(runtime.spark, runtime.settings, as_of))


@cli.group(cls=LakehouseGroup)
def segments() -> None:
    """Inspect segments and their membership over time (Delta time travel)."""


@segments.command("list")
@OUTPUT
@pass_runtime
def segments_list(runtime: Runtime, output: str) -> None:
    """List the segment rules with their latest size."""
    from jobs.rules.segments import load_segments
    from jobs.runtime.report import format_table
    from jobs.runtime.settings import rules_dir
    from jobs.stages.segment import latest_sizes

    rules = load_segments(rules_dir(runtime.settings))
    sizes = latest_sizes(runtime.spark, runtime.settings.lakehouse.root)
    columns = ["segment", "size", "version", "name"]
    rows = [[s.id, *sizes.get(s.id, (None, None)), s.name] for s in rules]
    if output == "json":
        _echo_json([dict(zip(columns, row, strict=True)) for row in rows])
        return
    click.echo(format_table(columns, rows))


@segments.command("show")
@click.argument("segment_id", shell_complete=complete_segments)
@click.option("--version", "version", type=click.IntRange(0), help="Membership as of this Delta version.")
@click.option("--timestamp", "timestamp", type=UtcTimestamp(), help="Membership as of this time (time travel).")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(0), help="Members to print.")
@OUTPUT
@pass_runtime
def segments_show(runtime: Runtime, segment_id: str, version: int | None, timestamp: datetime | None,
                  limit: int, output: str) -> None:
    """Print a segment's members, now or at a past version or time."""
    from jobs.runtime.report import format_table
    from jobs.stages.segment import membership_at

    if version is not None and timestamp is not None:
        raise OperatorError("give --version or --timestamp, not both")
    members_df = membership_at(runtime.spark, runtime.settings.lakehouse.root, segment_id, version, timestamp)
    total = members_df.count()
    rows = members_df.orderBy("customer_id").limit(limit).collect()
    if output == "json":
        _echo_json({"segment": segment_id, "members": total, "shown": [
            {"customer_id": r["customer_id"], "entered_at": r["entered_at"], "as_of": r["as_of"]} for r in rows]})
        return
    click.echo(f"{segment_id}: {total:,} members")
    click.echo(format_table(["customer_id", "entered_at", "as_of"],
                            [[r["customer_id"], r["entered_at"], r["as_of"]] for r in rows]))


@segments.command("diff")
@click.argument("segment_id", shell_complete=complete_segments)
@click.option("--from", "from_version", required=True, type=click.IntRange(0), help="The earlier Delta version.")
@click.option("--to", "to_version", required=True, type=click.IntRange(0), help="The later Delta version.")
@OUTPUT
@pass_runtime
def segments_diff(runtime: Runtime, segment_id: str, from_version: int, to_version: int, output: str) -> None:
    """List who entered and who exited a segment between two versions."""
    from jobs.stages.segment import diff

    entered, exited = diff(runtime.spark, runtime.settings.lakehouse.root, segment_id, from_version, to_version)
    if output == "json":
        _echo_json({"segment": segment_id, "from": from_version, "to": to_version, "entered": entered,
                    "exited": exited})
        return
    click.echo(f"{segment_id} v{from_version} -> v{to_version}: {len(entered)} entered, {len(exited)} exited")
    for customer in entered:
        click.echo(f"+ {customer}")
    for customer in exited:
        click.echo(f"- {customer}")


@segments.command("history")
@click.argument("segment_id", shell_complete=complete_segments)
@OUTPUT
@pass_runtime
def segments_history(runtime: Runtime, segment_id: str, output: str) -> None:
    """Print a segment's size, entries and exits over every segment run."""
    from jobs.runtime.report import format_table
    from jobs.stages.segment import history

    fields = ("delta_version", "as_of", "size", "entered", "exited", "run_id")
    headers = ["version", *fields[1:]]
    rows = [[r[f] for f in fields] for r in history(runtime.spark, runtime.settings.lakehouse.root, segment_id)]
    if output == "json":
        _echo_json([dict(zip(headers, row, strict=True)) for row in rows])
        return
    click.echo(format_table(headers, rows))


@cli.group(cls=LakehouseGroup)
def rules() -> None:
    """Rule files (rules/): event types, bots, locations, quality, segments."""


@rules.command("validate")
@pass_runtime
def rules_validate(runtime: Runtime) -> None:
    """Check every rule file, including segment SQL, and every email template, without reading any data."""
    from jobs.content.templates import Templates, email_templates
    from jobs.rules import load_bot_rules, load_event_types, load_locations, load_quality_rules
    from jobs.runtime.settings import rules_dir, templates_dir
    from jobs.stages.segment import validated_segments

    folder = rules_dir(runtime.settings)
    load_event_types(folder)
    load_bot_rules(folder)
    load_locations(folder)
    quality_rules = load_quality_rules(folder)
    from jobs.stages.cleanse import check_expectations

    check_expectations(runtime.spark, folder, quality_rules)
    found = validated_segments(runtime.spark, runtime.settings)
    templates = Templates(templates_dir(runtime.settings))
    names = [p.stem for p in email_templates(templates.folder)]
    problems = [problem for name in names for problem in templates.check(name)]
    if problems:
        from jobs.runtime.errors import ConfigError

        raise ConfigError(f"{len(problems)} template problem(s): " + "; ".join(problems))
    click.echo(f"rules in {folder} are valid: {len(found)} segments "
               f"({', '.join(s.id for s in found)}), "
               f"{sum(len(v) for v in quality_rules.tables.values())} expectations; "
               f"{len(names)} templates in {templates.folder} ({', '.join(names)})")


# -- preview -----------------------------------------------------------------------------------
@cli.command("preview")
@click.argument("template")
@click.option("--customer", "customers", multiple=True, metavar="ID", help="A customer to render for (repeatable).")
@click.option("--segment", "segment_id", shell_complete=complete_segments,
              help="Render for members of this segment (as its rule judges the time).")
@click.option("--limit", type=click.IntRange(min=1), default=10, show_default=True,
              help="With --segment: how many members (the first by customer id).")
@click.option("--as-of", "as_of", type=UtcTimestamp(), help="The time the content is as of (default: the features').")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for one HTML file per customer and index.html.")
@pass_runtime
def preview(runtime: Runtime, template: str, customers: tuple[str, ...], segment_id: str | None, limit: int,
            as_of: datetime | None, out: Path) -> None:
    """Render a template of templates/ for customers, as of a time, and write a gallery."""
    from jobs.content.preview import preview as render_preview

    if bool(customers) == bool(segment_id):
        raise click.UsageError("give --customer ID (one or more) or --segment SEGMENT, not both")
    rendered = render_preview(runtime.spark, runtime.settings, template, as_of, customers, segment_id, limit, out)
    for item in rendered:
        click.echo(f"{item.customer_id}: {item.file} ({item.products} products)")
    click.echo(f"gallery: {out / 'index.html'} ({len(rendered)} emails)")


# -- run ---------------------------------------------------------------------------------------
@cli.command("run")
@click.option("--as-of", "as_of", type=UtcTimestamp(), help=AS_OF_HELP)
@click.option("--sync", "sync_to", multiple=True, metavar="DEST", shell_complete=complete_destinations,
              help="Then sync the changes to this destination (repeatable), e.g. --sync file.")
@click.option("--allow-large-change", is_flag=True,
              help="Let the syncs remove more of a segment than its limit (see `sync --help`).")
@click.option("--verbose", "-v", is_flag=True, help="Also show each stage's Spark jobs and Delta commits per table.")
@OUTPUT
@pass_runtime
def run(runtime: Runtime, as_of: datetime | None, sync_to: tuple[str, ...], allow_large_change: bool,
        verbose: bool, output: str) -> None:
    """Run ingest, cleanse, features, segment, recommend (and sync) in order in one Spark application."""
    from jobs.runtime.report import format_table
    from jobs.stages.pipeline import run_pipeline

    stages = run_pipeline(runtime.spark, runtime.settings, as_of or datetime.now(UTC), sync_to, allow_large_change)
    segment_stage = next(s for s in stages if s.stage == "segment")
    if output == "json":
        _echo_json({"run_id": stages[0].run_id, "status": "succeeded", "stages": [_stage_json(s) for s in stages],
                    "segments": [dict(zip(("segment", "size", "entered", "exited"), c, strict=True))
                                 for c in segment_stage.segments]})
        _warn(*stages)
        return
    headers = ["stage", "rows in", "rows out", "rejected", "seconds", "delta versions"]
    rows = [[s.stage, s.rows_in, s.rows_out, s.rejected, f"{s.seconds:.1f}",
             ", ".join(f"{k}@{v}" for k, v in sorted(s.versions.items())) or "-"] for s in stages]
    if verbose:
        headers += ["spark jobs", "commits"]
        rows = [[*row, s.spark_jobs, ", ".join(f"{k}:{n}" for k, n in sorted(s.commits.items())) or "0"]
                for row, s in zip(rows, stages, strict=True)]
    click.echo(format_table(headers, rows))
    click.echo("")
    click.echo(format_table(["segment", "size", "entered", "exited"], [list(c) for c in segment_stage.segments]))
    _warn(*stages)


# -- stream ------------------------------------------------------------------------------------
@cli.command("stream")
@click.option("--trigger", default="5s", show_default=True, type=Duration(),
              help="Start a tick this often (a slower tick is followed at once by the next).")
@click.option("--sync", "sync_to", multiple=True, metavar="DEST", shell_complete=complete_destinations,
              help="Each tick, sync the changes to this destination (repeatable).")
@click.option("--allow-large-change", is_flag=True, help="As for run: let the syncs remove more than the limit.")
@click.option("--max-ticks", type=click.IntRange(min=1), default=None, help="Stop after this many ticks.")
@click.option("--verbose", "-v", is_flag=True, help="A line for every tick, not only those that changed something.")
@pass_runtime
def stream_command(runtime: Runtime, trigger: float, sync_to: tuple[str, ...], allow_large_change: bool,
                   max_ticks: int | None, verbose: bool) -> None:
    """Keep the pipeline running: every trigger, new landing files -> bronze -> silver -> features ->
    segments (-> sync), as of that moment. Ctrl-C or SIGTERM stop it after the current tick."""
    import threading

    from jobs.destinations import destination
    from jobs.stages.stream import Tick, stop_on_signals, stream

    settings = runtime.settings
    for name in sync_to:
        destination(settings, name)  # an unknown destination fails before Spark starts
    spark = runtime.spark

    def report(tick: Tick) -> None:
        if not (verbose or tick.commits):
            return
        parts = [tick.counts(), ", ".join(tick.moves()), ", ".join(tick.synced())]
        seconds = f"{tick.seconds:.1f} s" + (
            ": " + ", ".join(f"{s.stage} {s.seconds:.1f}" for s in tick.stages) if verbose else "")
        click.echo(f"tick {tick.number} as of {tick.as_of:%Y-%m-%dT%H:%M:%SZ}: "
                   f"{'; '.join(part for part in parts if part)} ({seconds})")
        _warn(*tick.stages)

    stop = threading.Event()
    restore = stop_on_signals(stop)
    click.echo(f"streaming every {trigger:g} s (Ctrl-C stops after the current tick)", err=True)
    try:
        ticks = stream(spark, settings, trigger, sync_to, allow_large_change, stop, max_ticks, report)
    finally:
        restore()
    click.echo(f"stopped after {ticks} ticks", err=True)


# -- recs --------------------------------------------------------------------------------------
@cli.group(cls=LakehouseGroup)
def recs() -> None:
    """Product recommendations: build them, look at one customer's, evaluate them offline."""


@recs.command("build")
@click.option("--as-of", "as_of", type=UtcTimestamp(), help="Recommend as of this time (default now).")
@pass_runtime
def recs_build(runtime: Runtime, as_of: datetime | None) -> None:
    """Write gold.product_recommendations as of a time, for every customer with features."""
    from jobs.stages.recommend import RECOMMENDATIONS, build_recommendations

    result = build_recommendations(runtime.spark, runtime.settings, as_of or datetime.now(UTC))
    click.echo(f"{RECOMMENDATIONS} version {result.versions[RECOMMENDATIONS]}: {result.rows_out:,} rows as of "
               f"{result.as_of.isoformat()} ({result.seconds:.1f} s, run {result.run_id})")


@recs.command("show")
@click.option("--customer", "customer_id", required=True, help="The customer id.")
@click.option("--as-of", "as_of", type=UtcTimestamp(),
              help="Recompute them as of this time from the events before it (default: the table as built).")
@pass_runtime
def recs_show(runtime: Runtime, customer_id: str, as_of: datetime | None) -> None:
    """One customer's recommendations: rank, product, score, reason."""
    from pyspark.sql import functions as F

    from jobs.runtime.report import format_table
    from jobs.runtime.tables import read_or_empty
    from jobs.stages.recommend import RECOMMENDATIONS, compute_recommendations

    spark, settings = runtime.spark, runtime.settings
    if as_of is None:
        rows = read_or_empty(spark, settings.lakehouse.root, RECOMMENDATIONS).where(F.col("customer_id") == customer_id)
    else:
        who = spark.createDataFrame([(customer_id,)], "customer_id string")
        rows = compute_recommendations(spark, settings, as_of, customers=who)
    found = rows.orderBy("rank").collect()  # one customer's top N: a handful of rows
    if not found:
        raise OperatorError(f"no recommendations for customer {customer_id!r}"
                            + ("" if as_of else " (run `lakehouse recs build` first, or give --as-of)"), 1)
    click.echo(f"as of {found[0]['as_of'].isoformat()}Z")
    click.echo(format_table(["rank", "product", "score", "reason"],
                            [[r["rank"], r["product_id"], f"{r['score']:.4g}", r["reason"]] for r in found]))


@recs.command("evaluate")
@click.option("--as-of", "as_of", type=UtcTimestamp(), required=True,
              help="Recommend from the events before this time, judge against the ones after it.")
@click.option("--k", default=10, show_default=True, type=click.IntRange(1, 100), help="Cut-off of hit rate@K.")
@click.option("--horizon-days", default=7, show_default=True, type=click.IntRange(1),
              help="How long after --as-of a customer's next product counts.")
@click.option("--out", default="recs-evaluation.json", show_default=True, type=click.Path(dir_okay=False),
              help="Where the JSON result goes.")
@pass_runtime
def recs_evaluate(runtime: Runtime, as_of: datetime, k: int, horizon_days: int, out: str) -> None:
    """Offline evaluation: hit rate@K and MRR for each customer's next viewed, carted or bought
    product, against a popularity baseline."""
    from jobs.runtime.report import format_table
    from jobs.stages.recommend import evaluate

    result = evaluate(runtime.spark, runtime.settings, as_of, k, horizon_days)
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    rows = [[name, r["customers"], r["hits"], f"{r['hit_rate']:.3f}", f"{r['mrr']:.3f}"]
            for name, r in ((n, result[n]) for n in ("recommendations", "popularity_baseline"))]
    click.echo(format_table(["model", "customers", f"hits@{k}", f"hit rate@{k}", "MRR"], rows))
    click.echo(f"written to {out}")


# -- sync --------------------------------------------------------------------------------------
@cli.command("sync")
@click.argument("destination_name", metavar="DESTINATION", shell_complete=complete_destinations)
@click.option("--segment", "segment_ids", multiple=True, metavar="ID", shell_complete=complete_segments,
              help="Only this segment (repeatable).")
@click.option("--dry-run", is_flag=True, help="Print the adds, removes and updates it would send; send nothing.")
@click.option("--full-refresh", is_flag=True, help="Send the whole current state again, not only the changes.")
@click.option("--allow-large-change", is_flag=True,
              help="Send even if a segment would lose more of its synced members than its limit (the rule "
                   "file's sync.max_remove_share, else the config's).")
@click.option("--fail-on-refused", is_flag=True,
              help="Exit 1 when the destination refused rows (they are recorded and sent again next sync).")
@OUTPUT
@pass_runtime
def sync(runtime: Runtime, destination_name: str, segment_ids: tuple[str, ...], dry_run: bool,
         full_refresh: bool, allow_large_change: bool, fail_on_refused: bool, output: str) -> None:
    """Send segment membership and attribute changes to a destination (file, ...)."""
    from jobs.stages.sync import sync as run_sync

    def progress(done: int, total: int) -> None:
        width = 30
        filled = width * done // max(total, 1)
        click.echo(f"\rbatches [{'#' * filled}{'.' * (width - filled)}] {done}/{total}", err=True,
                   nl=done >= total)

    result = run_sync(runtime.spark, runtime.settings, destination_name, segment_ids, dry_run=dry_run,
                      full_refresh=full_refresh, allow_large_change=allow_large_change,
                      progress=progress if sys.stderr.isatty() else None)
    plan = result.details["plan"]
    refused = sum(segment.failed for segment in plan)
    if output == "json":
        _echo_json({"destination": destination_name, "run_id": result.run_id, "dry_run": dry_run,
                    "membership_version": result.details["version"], "refused": refused,
                    "segments": [{"segment": p.segment_id, "adds": p.adds, "removes": p.removes, "updates": p.updates,
                                  "failed": p.failed, "batches": p.batches} for p in plan]})
    else:
        _print_plan(destination_name, result, plan, dry_run)
    if refused and fail_on_refused:
        raise OperatorError(f"{destination_name}: {refused} row(s) refused (see ops.sync_failures); "
                            "they go again next sync", 1)


def _print_plan(destination_name: str, result: Any, plan: list[Any], dry_run: bool) -> None:
    from jobs.runtime.pii import masked_row
    from jobs.runtime.report import format_table

    head = "would send (dry run)" if dry_run else f"sent (run {result.run_id})"
    click.echo(f"{destination_name}: membership version {result.details['version']}, {head}")
    click.echo(format_table(
        ["segment", "adds", "removes", "updates", "failed", "batches"],
        [[s.segment_id, s.adds, s.removes, s.updates, s.failed, s.batches] for s in plan],
    ))
    for segment in plan:
        for action, rows in segment.samples.items():
            for row in rows:
                shown = masked_row(row)  # what would be sent, without the personal data itself
                click.echo(f"  {segment.segment_id} {action}: {json.dumps(shown, sort_keys=True, default=str)}")


# -- tables ------------------------------------------------------------------------------------
@cli.command("tables")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table (same as --output json).")
@OUTPUT
@pass_runtime
def tables(runtime: Runtime, as_json: bool, output: str) -> None:
    """List every table: path, Delta version, row count, last run."""
    from jobs.runtime.report import format_table
    from jobs.tools.catalog import table_statuses

    statuses = table_statuses(runtime.spark, runtime.settings.lakehouse.root)
    if as_json or output == "json":
        click.echo(json.dumps([s.as_json() for s in statuses], indent=2))
        return
    click.echo(format_table(
        ["table", "version", "rows", "corrupt", "last commit (UTC)", "last run", "status", "path"],
        [[s.table, s.version, s.rows, s.corrupt_rows, s.last_commit_at, s.last_run_id,
          s.last_run_status, s.path if s.exists else f"{s.path} (not created)"] for s in statuses],
    ))


@cli.group(cls=LakehouseGroup)
def catalog() -> None:
    """The tables in a SQL catalog, so spark-sql, notebooks and BI tools find them by name."""


@catalog.command("register")
@click.option("--catalog", "catalog_name", help="A catalog the session configures (spark.sql.catalog.NAME); "
                                                "default: the session's own (Hive metastore when enabled).")
@pass_runtime
def catalog_register(runtime: Runtime, catalog_name: str | None) -> None:
    """Create the bronze/silver/gold/ops schemas and register every table at its location (idempotent)."""
    from jobs.runtime.report import format_table
    from jobs.tools.catalog import register

    runtime.hive = catalog_name is None  # names outlive the command: the lakehouse's metastore
    done = register(runtime.spark, runtime.settings.lakehouse.root, catalog_name)
    click.echo(format_table(["table", "location"], [list(d) for d in done]))


@cli.command("landed")
@click.option("--source", "source_name", help="One source from conf/sources (default: every configured one).")
@pass_runtime
def landed(runtime: Runtime, source_name: str | None) -> None:
    """List every landed file with the micro-batch and bronze version that hold its rows."""
    from jobs.runtime.report import format_table
    from jobs.stages.ingest import configured_sources, landed_files

    settings = runtime.settings
    names = [source_name] if source_name else [n for kind in configured_sources(settings).values() for n in kind]
    sources = []
    for name in names:
        if name not in settings.sources:
            raise InputError(f"unknown source {name!r} (configured: {', '.join(sorted(settings.sources))})")
        sources.append(settings.sources[name])
    rows = [[f["source"], f["batch_id"], f["table"], f["version"], f["path"]]
            for source in sources for f in landed_files(runtime.spark, settings, source)]
    click.echo(format_table(["source", "batch", "table", "version", "file"], rows))


# -- jars --------------------------------------------------------------------------------------
@cli.command("jars")
@click.option("--sep", default=",", show_default=True, help="Separator between the jar paths.")
@pass_runtime
def jars(runtime: Runtime, sep: str) -> None:
    """Print the cached Delta jars (and the S3A connector's when a root is on s3a://) for
    spark-submit --jars, resolving them once."""
    from jobs.runtime.jars import spark_jars

    click.echo(sep.join(str(p) for p in spark_jars(runtime.s3a)))


# -- privacy -----------------------------------------------------------------------------------
@cli.group("privacy")
def privacy() -> None:
    """Right to be forgotten."""


@privacy.command("erase")
@click.option("--customer-id", "customer_ids", multiple=True, help="A customer to erase (repeatable).")
@click.option("--from-file", "from_file", type=click.Path(dir_okay=False),
              help="A file of customer ids, one per line.")
@pass_runtime
def privacy_erase_command(runtime: Runtime, customer_ids: tuple[str, ...], from_file: str | None) -> None:
    """Delete customers from every table and version, and from every configured email platform."""
    from jobs.runtime.pii import hash_id
    from jobs.runtime.report import format_table
    from jobs.tools.privacy import erase, read_id_file

    ids = list(customer_ids) + (read_id_file(Path(from_file)) if from_file else [])
    if not ids:
        raise click.UsageError("give --customer-id ID (repeatable) or --from-file PATH")
    settings = runtime.settings
    platforms = tuple(n for n in type(settings.destinations).model_fields
                      if getattr(settings.destinations, n) is not None)
    result = erase(runtime.spark, settings, ids, platforms)
    missing = sorted(set(result.requested) - set(result.found))
    click.echo(f"erased {len(result.found)} of {result.customers} requested customers (erasure {result.erasure_id})"
               + (f"; not found in any table: {', '.join(hash_id(i) for i in missing)}" if missing else "")
               + "; rows deleted per table:")
    click.echo(format_table(["table", "rows"], [[k, v] for k, v in sorted(result.tables.items())]))
    for name, answer in sorted(result.platforms.items()):
        click.echo(f"{name}: {answer}")


# -- maintain ----------------------------------------------------------------------------------
@cli.command("maintain")
@click.option("--table", "table", default=None, help="One table (layer.name); default: every table.")
@pass_runtime
def maintain_command(runtime: Runtime, table: str | None) -> None:
    """Compact small files (OPTIMIZE, Z-order where configured) and VACUUM with the configured retention."""
    from jobs.runtime.report import format_table
    from jobs.tools.maintain import maintain

    results = maintain(runtime.spark, runtime.settings, table)
    click.echo(format_table(
        ["table", "files before", "files after", "z-order", "retention h", "seconds"],
        [[r.table, r.files_before, r.files_after, ",".join(r.zorder) or "-", f"{r.retention_hours:g}",
          f"{r.seconds:.1f}"] for r in results]))


# -- serve -------------------------------------------------------------------------------------
@cli.command("serve")
@click.option("--host", default=None, help="Address to bind (default collector.host).")
@click.option("--port", default=None, type=click.IntRange(0, 65535), help="Port (default collector.port).")
@pass_runtime
def serve(runtime: Runtime, host: str | None, port: int | None) -> None:
    """Run the event collector: POST /api/events, /oauth/token, the Segment API, /p.gif,
    /collector.js, /healthz, /metrics. Stops gracefully (files flushed and rolled) on Ctrl-C or SIGTERM."""
    from jobs.collector.serve import serve as run_collector

    run_collector(runtime.settings, host, port)


# -- bench -------------------------------------------------------------------------------------
@cli.command("bench")
@click.option("--events", default=1_000_000, show_default=True, type=click.IntRange(min=1000),
              help="About how many event lines to generate.")
@click.option("--workdir", default="data/bench", show_default=True, type=click.Path(file_okay=False),
              help="Scratch folder for the landing zone and lakehouse (emptied first; a non-empty folder "
                   "bench did not make is refused).")
@click.option("--out", default="bench/results", show_default=True, type=click.Path(file_okay=False),
              help="Where the JSON and Markdown results go.")
@click.option("--collector", is_flag=True, help="Benchmark the event collector instead (no Spark): events/s in "
              "batches of 100, single-event requests/s, latency at half that rate.")
@click.option("--seconds", default=10.0, show_default=True, type=click.FloatRange(min=1),
              help="With --collector: length of each measurement.")
@pass_runtime
def bench(runtime: Runtime, events: int, workdir: str, out: str, collector: bool, seconds: float) -> None:
    """Benchmark the pipeline against a bare read+append floor, full and 1 % incremental."""
    from jobs.tools import owned_folder
    from jobs.tools.bench import markdown, run_bench, write

    folder = owned_folder(Path(workdir).resolve(), "bench")  # refused before Spark starts
    if collector:
        from jobs.tools import collector_bench

        result = collector_bench.run_collector_bench(runtime.settings, folder, seconds)
        json_path, md_path = write(result, Path(out), "collector", collector_bench.markdown)
        click.echo(collector_bench.markdown(result))
        click.echo(f"results: {json_path}, {md_path}")
        return
    result = run_bench(runtime.spark, runtime.settings, events, folder)
    json_path, md_path = write(result, Path(out))
    click.echo(markdown(result))
    click.echo(f"results: {json_path}, {md_path}")


# -- package -----------------------------------------------------------------------------------
@cli.command("package")
@click.option("--out", "out", default="dist/spark", show_default=True, type=click.Path(file_okay=False),
              help="Folder to write the cluster bundle to.")
@pass_runtime
def package(runtime: Runtime, out: str) -> None:
    """Build the spark-submit bundle: code zip, entry script, Delta jars (and the S3A connector's
    when a root is on s3a://), conf and rules."""
    from jobs.runtime.settings import rules_dir
    from jobs.tools.package import build

    parts = build(Path(out), rules_dir(runtime.settings), s3a=runtime.s3a)
    click.echo(f"bundle written to {out}; submit with:")
    click.echo(f"  spark-submit --master <MASTER> --jars {parts['jars']} \\\n"
               f"    --py-files {parts['py_files']} --archives {parts['archives']} \\\n"
               f"    {parts['entry']} --env prod run --sync file")


def main() -> None:
    cli.main(prog_name="lakehouse")


if __name__ == "__main__":
    sys.exit(main())
