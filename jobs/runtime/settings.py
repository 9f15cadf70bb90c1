"""Settings: one YAML file per environment (``conf/<env>.yaml``) plus source mappings
(``conf/sources/*.yaml``), validated into frozen pydantic models.

Precedence: ``--conf PATH`` over ``--env E`` over ``$LAKEHOUSE_ENV`` over ``local``; then each
``--set dotted.key=value`` (the value is read as YAML, so ``4`` is a number and ``true`` a bool).
Every problem is a :class:`ConfigError` whose one-line message names the file (or the ``--set``)
and the key. Secrets never live in these files: a setting that needs one names the environment
variable holding it (keys ending in ``_env``).
"""

from __future__ import annotations

import codecs
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from jobs.runtime.errors import ConfigError
from transforms.bronze import COLUMNS_BY_KIND, FieldMapping
from transforms.recommendations import RecsConfig

DEFAULT_ENV = "local"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
PACKAGED = Path(__file__).resolve().parents[1] / "project"  # in an installed wheel (setup.py)
ENV_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def is_uri(path: str) -> bool:
    return "://" in path or path.startswith(("s3a:", "s3:", "hdfs:", "file:"))


def local_path(path: str) -> str | None:
    """The file-system path of a local path or a ``file:`` URI; None for any other URI."""
    if path.startswith("file:"):
        return path.removeprefix("file://").removeprefix("file:")
    return None if is_uri(path) else path


def _absolute(path: str) -> str:
    """Local paths become absolute (relative to the working directory); URIs stay as they are."""
    return path if is_uri(path) else str(Path(path).expanduser().resolve())


class RootSettings(Frozen):
    root: str = Field(description="A local path (made absolute) or a Hadoop URI such as s3a://.")

    @field_validator("root")
    @classmethod
    def _absolute_root(cls, root: str) -> str:
        return _absolute(root)


class LakehouseSettings(RootSettings):
    """Root of every Delta table: ``{root}/{layer}/{name}``."""


class LandingSettings(RootSettings):
    """Landing zone; each source reads a folder under it."""


SparkConfValue = str | int | float | bool


class SparkSettings(Frozen):
    master: str | None = Field(
        default="local[*]",
        description="Master URL; ignored under spark-submit, which sets its own.",
    )
    app_name: str = "email-lakehouse"
    profile: Literal["default", "test"] = Field(
        default="default", description="'test' adds the fast single-core test confs."
    )
    log_level: Literal["ALL", "DEBUG", "INFO", "WARN", "ERROR", "FATAL", "OFF"] = "WARN"
    ui: bool = Field(default=False, description="Start the Spark web UI (off: it costs every local run).")
    conf: dict[str, SparkConfValue] = Field(default_factory=dict)


class IngestSettings(Frozen):
    event_sources: tuple[str, ...] = ("web",)
    crm_sources: tuple[str, ...] = ("crm",)
    catalog_sources: tuple[str, ...] = Field(
        default=("catalog",), description="Product catalog feeds (-> bronze.catalog -> silver.products).")
    max_files_per_batch: int = Field(default=1000, gt=0, description="Files landed per micro-batch at most.")
    max_file_age: str = Field(
        default="3650d", pattern=r"^\d+\s*[a-z]+$",
        description="A file older than the newest seen by more than this is ignored (Spark's maxFileAge): "
                    "long, so a late file with an old modification time still lands.")


class CleanseSettings(Frozen):
    double_load_window_seconds: float = Field(
        default=2.0, gt=0, description="Same identity, type, product and url within this: one event."
    )
    bot_max_events_per_minute: int = Field(
        default=60, gt=0, description="More events than this in any minute makes a session a bot."
    )
    max_clock_skew_minutes: float = Field(
        default=10.0, ge=0, description="Events later than processing time plus this are rejected."
    )
    duplicate_lookback_days: int = Field(
        default=1, ge=1, description="A repeated event id is looked for this many days either side of its "
                                     "date (a repeat whose time moved further is judged on its own).")
    stitch_lookback_days: int = Field(
        default=30, ge=0, description="When a device logs in, its anonymous events of this many days before "
                                      "the batch get the customer id too.")
    complete_products_minutes: float = Field(
        default=10, ge=0, description="In lakehouse stream, products new events mention and no feed lists join "
        "silver.products at most this often (0: every tick); run and cleanse add them every time.")


class GoldSettings(Frozen):
    abandonment_window_minutes: float = Field(
        default=60, gt=0, description="An add-to-cart with no purchase this long after it is abandoned."
    )


_RECS = RecsConfig()  # the transform's defaults, declared there once


class RecommendationSettings(Frozen):
    """:class:`transforms.recommendations.RecsConfig`'s fields, validated, and how often run refreshes."""

    lookback_days: int = Field(default=_RECS.lookback_days, ge=1,
                               description="Sessions whose co-occurrences and popularity count.")
    seed_days: int = Field(default=_RECS.seed_days, ge=1, description="A customer's interactions of these days seed "
                           "their recs.")
    exclude_bought_days: int = Field(default=_RECS.exclude_bought_days, ge=0,
                                     description="Products bought this recently are not shown.")
    top_n: int = Field(default=_RECS.top_n, ge=1, le=100, description="Recommendations per customer.")
    max_products_per_session: int = Field(default=_RECS.max_products_per_session, ge=2,
                                          description="A longer session keeps its strongest.")
    max_similar_products: int = Field(
        default=_RECS.max_similar_products, ge=1, description="Each product's neighbourhood: the products most "
        "similar to it that its viewers can be recommended through it.")
    refresh_minutes: float = Field(
        default=60, ge=0, description="In run and stream, recommendations built less than this before the run's "
        "time are kept (no job, no commit); 0 rebuilds every run. lakehouse recs build always builds.")


class FileDestination(Frozen):
    path: str = Field(default="data/exports", description="Folder for JSON Lines exports (local or URI).")

    @field_validator("path")
    @classmethod
    def _absolute_path(cls, path: str) -> str:
        return _absolute(path)


class RetrySettings(Frozen):
    timeout_seconds: float = Field(default=30, gt=0, description="Per attempt.")
    max_attempts: int = Field(default=5, ge=1, description="Tries per request before the run fails.")
    backoff_seconds: float = Field(default=1.0, ge=0, description="First back-off; doubles, with jitter.")
    max_retry_after_seconds: float = Field(
        default=120, ge=0, description="Longest Retry-After (429, 503) honoured; a longer one fails the batch now "
        "and the next run sends it again.")
    deadline_seconds: float = Field(default=600, gt=0, description="All attempts of one request, waits included.")
    max_response_bytes: int = Field(default=10 * 1024 * 1024, gt=0, description="Largest answer body read.")


class WebhookDestination(Frozen):
    url: str = Field(description="Where batches are POSTed as JSON.")
    secret_env: str = Field(description="Name of the environment variable holding the HMAC secret.")
    retry: RetrySettings = Field(default_factory=RetrySettings)

    _secret_name = field_validator("secret_env")(classmethod(lambda cls, name: _env_var_name(name)))


SECRET_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")


def _env_var_name(name: str) -> str:
    """Credentials are named, never given: an upper-case variable name, and the value is not echoed
    back (a key pasted here by mistake must not end up in an error message)."""
    if not SECRET_ENV_NAME.match(name):
        raise ValueError("expected the NAME of an environment variable (upper-case letters, digits, _), not a value")
    return name


class KlaviyoDestination(Frozen):
    base_url: str = Field(default="https://a.klaviyo.com", description="API host (or a proxy / test server).")
    api_key_env: str = Field(default="KLAVIYO_API_KEY", description="Environment variable holding the private key.")
    revision: str = Field(default="2026-07-15", pattern=r"^\d{4}-\d{2}-\d{2}(\.\w+)?$",
                          description="The API revision sent in every request.")
    lists: dict[str, str] = Field(default_factory=dict, description="Segment id -> Klaviyo list id.")
    retry: RetrySettings = Field(default_factory=RetrySettings)
    poll_seconds: float = Field(default=2.0, ge=0, description="Wait between import-job status checks.")
    poll_timeout_seconds: float = Field(default=900, gt=0, description="Give up on an import job after this.")

    _key_name = field_validator("api_key_env")(classmethod(lambda cls, name: _env_var_name(name)))


class SfmcDestination(Frozen):
    auth_url: str = Field(description="https://{subdomain}.auth.marketingcloudapis.com")
    rest_url: str = Field(description="https://{subdomain}.rest.marketingcloudapis.com")
    soap_url: str | None = Field(default=None, description="https://{subdomain}.soap.marketingcloudapis.com "
                                 "(default: the token answer's soap_instance_url); erasure deletes rows there.")
    client_id_env: str = Field(default="SFMC_CLIENT_ID", description="Environment variable holding the client id.")
    client_secret_env: str = Field(default="SFMC_CLIENT_SECRET",
                                   description="Environment variable holding the client secret.")
    account_id: str | None = Field(default=None, description="Business unit MID, when the package needs one.")
    data_extensions: dict[str, str] = Field(default_factory=dict,
                                            description="Segment id -> data extension external key.")
    retry: RetrySettings = Field(default_factory=RetrySettings)
    poll_seconds: float = Field(default=2.0, ge=0, description="Wait between async request status checks.")
    poll_timeout_seconds: float = Field(default=900, gt=0, description="Give up on an async request after this.")

    _id_name = field_validator("client_id_env", "client_secret_env")(
        classmethod(lambda cls, name: _env_var_name(name)))


class S3Destination(Frozen):
    bucket: str = Field(min_length=3, description="Bucket name.")
    prefix: str = Field(default="", description="Key prefix under which runs are written.")
    endpoint_url: str | None = Field(default=None, description="Another S3-compatible endpoint.")
    region: str | None = Field(default=None, description="AWS region (default: boto3's).")


class DestinationsSettings(Frozen):
    file: FileDestination = Field(default_factory=FileDestination)
    klaviyo: KlaviyoDestination | None = None
    sfmc: SfmcDestination | None = None
    webhook: WebhookDestination | None = None
    s3: S3Destination | None = None


class SecretsSettings(Frozen):
    aws_secret_id: str | None = Field(
        default=None, description="AWS Secrets Manager secret (a JSON object: variable name -> value) consulted "
                                  "before the environment for every credential the settings name.")
    region: str | None = Field(default=None, description="Its AWS region (default: boto3's).")
    endpoint_url: str | None = Field(default=None, description="Another Secrets Manager endpoint.")


class LeaseSettings(Frozen):
    wait_seconds: float = Field(default=0, ge=0, description="How long a writing command waits for another "
                                "writer's lease to free up before failing (the CLI's --wait overrides it).")
    ttl_seconds: float = Field(default=300, ge=10, description="A lease not renewed for this long is taken over "
                               "(its holder renews it every fifth of it).")


class PrivacySettings(Frozen):
    salt_env: str = Field(default="LAKEHOUSE_ERASURE_SALT",
                          description="Environment variable holding the salt of erased-id hashes.")
    erase_vacuum_retention_hours: float = Field(
        default=0, ge=0,
        description="VACUUM retention after an erasure: 0 makes every earlier version of a touched table "
                    "unreadable, which the right to be forgotten requires.")

    _salt_name = field_validator("salt_env")(classmethod(lambda cls, name: _env_var_name(name)))


class MaintenanceSettings(Frozen):
    time_travel_days: float = Field(
        default=30, gt=0,
        description="How far back segment history and time travel are promised to reach; no VACUUM goes shorter.")
    default_retention_hours: float | None = Field(
        default=None, ge=0, description="VACUUM retention of every table (default: the time-travel window).")
    retention_hours: dict[str, float] = Field(
        default_factory=dict, description="Per-table VACUUM retention (table key -> hours).")
    zorder: dict[str, list[str]] = Field(
        default_factory=lambda: {"bronze.events": ["customer_id"], "silver.events": ["customer_id"]},
        description="Tables OPTIMIZE clusters by Z-order (table key -> columns); the rest are compacted.")

    def retention_for(self, table: str) -> float:
        window = self.time_travel_days * 24
        return self.retention_hours.get(table, self.default_retention_hours or window)

    @model_validator(mode="after")
    def _retention_keeps_the_promise(self) -> MaintenanceSettings:
        window = self.time_travel_days * 24
        if self.default_retention_hours is not None and self.default_retention_hours < window:
            raise ValueError(f"default_retention_hours {self.default_retention_hours:g} is shorter than the "
                             f"time-travel window ({self.time_travel_days:g} days = {window:g} h, time_travel_days)")
        for table, hours in sorted(self.retention_hours.items()):
            if hours < window:
                raise ValueError(f"retention_hours.{table} {hours:g} is shorter than the time-travel window "
                                 f"({self.time_travel_days:g} days = {window:g} h, time_travel_days)")
        return self


class SyncSettings(Frozen):
    batch_size: int = Field(default=500, gt=0, description="Changes per batch sent to a destination.")
    max_remove_share: float = Field(
        default=0.5, ge=0, le=1,
        description="A run removing more than this share of a segment's synced members stops first.",
    )
    sample_rows: int = Field(default=3, ge=0, description="Sample rows per change kind in --dry-run.")
    fold_after_batches: int = Field(
        default=50, ge=1, description="Ledger batches after which a sync folds them into ops.sync_state.")
    ledger_commit_seconds: float = Field(
        default=5, ge=0, description="Acknowledged batches go into ops.sync_ledger together: one commit when "
        "this long has passed since the last one, and one at the end (a crash resends at most this long's "
        "batches, with their idempotency keys).")


class CollectorKey(Frozen):
    """One credential the collector accepts: the SHA-256 of the key (hex), or the name of the
    environment variable (or secret) holding the key itself. Never the key."""

    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$", description="Hex SHA-256 of the key.")
    env: str | None = Field(default=None, description="Name of the variable holding the key.")
    scopes: tuple[str, ...] = Field(default=("events:write",), description="What the key (or client) may do.")

    _env_name = field_validator("env")(classmethod(lambda cls, name: name if name is None else _env_var_name(name)))

    @model_validator(mode="after")
    def _one_way(self) -> CollectorKey:
        if (self.sha256 is None) == (self.env is None):
            raise ValueError("give exactly one of sha256 (the key's hex SHA-256) or env (the variable holding it)")
        return self


class CollectorSite(Frozen):
    """A website sending from the browser (pixel, collector.js) with a public write key."""

    write_key: str = Field(min_length=8, description="Public key the site's pages carry (not a secret).")
    origins: tuple[str, ...] = Field(default=(), description="Allowed origins, e.g. https://shop.example.com.")


class CollectorSettings(Frozen):
    host: str = Field(default="127.0.0.1", description="Address uvicorn binds (0.0.0.0 behind a load balancer).")
    port: int = Field(default=8787, ge=0, le=65535)
    instance: str | None = Field(default=None, description="Name in this instance's file names "
                                 "(default: host name and port); unique per instance writing one landing root.")
    events_path: str = Field(default="events/collector", description="Event files, under landing.root.")
    profiles_path: str = Field(default="crm/collector", description="Profile (identify) files, under landing.root.")
    spool_dir: str = Field(default="data/collector-spool", description="Local folder where files are written "
                           "and fsync'd before going up, when landing.root is on object storage.")
    max_batch_events: int = Field(default=500, gt=0, description="Events per request at most (413 above).")
    max_body_bytes: int = Field(default=1024 * 1024, gt=0, description="Request body size at most (413 above).")
    roll_bytes: int = Field(default=16 * 1024 * 1024, gt=0, description="A landing file is closed at this size...")
    roll_seconds: float = Field(default=30, gt=0, description="...or this long after its first line.")
    api_keys: dict[str, CollectorKey] = Field(default_factory=dict, description="Source name -> server-side key "
                                              "(Bearer, X-API-Key, or a Segment write key).")
    oauth_clients: dict[str, CollectorKey] = Field(default_factory=dict,
                                                   description="OAuth 2.0 client id -> its secret.")
    token_key_env: str = Field(default="LAKEHOUSE_COLLECTOR_TOKEN_KEY",
                               description="Variable holding the key that signs access tokens.")
    previous_token_key_env: str | None = Field(default=None, description="During a rotation: the variable holding "
                                               "the previous key, whose tokens stay valid until they expire.")
    token_ttl_seconds: int = Field(default=900, gt=0, le=86400, description="Lifetime of an access token.")
    sites: dict[str, CollectorSite] = Field(default_factory=dict, description="Site name -> browser write key.")
    rate_per_second: float = Field(default=500, gt=0, description="Events per second per key, sustained.")
    rate_burst: int = Field(default=2000, gt=0, description="Events per key in a burst.")
    dedup_ids: int = Field(default=200_000, ge=0, description="Recent event ids remembered, so a client's retry "
                           "of a batch already on disk is not written twice.")
    trust_forwarded_for: bool = Field(default=False, description="Take the client address from X-Forwarded-For "
                                      "(only behind a load balancer that sets it).")

    _token_names = field_validator("token_key_env", "previous_token_key_env")(
        classmethod(lambda cls, name: name if name is None else _env_var_name(name)))


class SourceSettings(Frozen):
    """One landing source: where its files are and how their fields map to bronze columns."""

    name: str
    kind: Literal["events", "crm", "catalog"]
    format: Literal["json", "csv"]
    path: str | None = Field(default=None, description="Folder under landing.root (or a URI).")
    description: str = ""
    optional: bool = Field(default=False, description="A missing folder is no new files, not an error (a "
                           "folder that exists once something writes there, like the collector's).")
    partial: bool = Field(default=False, description="crm only: a record carries only the fields it changes "
                          "(the rest are kept from the customer's previous version), like Segment identify traits.")
    options: dict[str, str] = Field(default_factory=dict, description="CSV reader options.")
    encoding: str = Field(default="UTF-8", description="Character set of a CSV source's files, header included "
                          "(JSON lines are UTF-8).")
    columns: dict[str, str] = Field(
        default_factory=dict, description="bronze column -> source field; unnamed ones map 1:1."
    )
    properties: dict[str, str] = Field(
        default_factory=dict, description="properties key -> source field (events only)."
    )
    properties_field: str | None = Field(
        default="properties", description="Source field holding a nested object of properties."
    )

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, encoding: str, info: Any) -> str:
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise ValueError(f"unknown character set {encoding!r} (e.g. UTF-8, ISO-8859-1, windows-1252)") from None
        if info.data.get("format") == "json" and codecs.lookup(encoding).name != "utf-8":
            raise ValueError("JSON lines are read as UTF-8; encoding applies to csv sources")
        return encoding

    @field_validator("columns")
    @classmethod
    def _known_columns(cls, columns: dict[str, str], info: Any) -> dict[str, str]:
        kind = info.data.get("kind")
        allowed = COLUMNS_BY_KIND.get(kind, ())
        unknown = sorted(set(columns) - set(allowed))
        if unknown:
            raise ValueError(
                f"unknown bronze column {unknown[0]!r} for a {kind} source "
                f"(expected one of {', '.join(allowed)})"
            )
        return columns

    def mapping(self) -> FieldMapping:
        return FieldMapping(self.kind, dict(self.columns), dict(self.properties), self.properties_field)


class Settings(Frozen):
    env: str
    config_file: str
    lakehouse: LakehouseSettings
    landing: LandingSettings
    spark: SparkSettings = Field(default_factory=SparkSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    cleanse: CleanseSettings = Field(default_factory=CleanseSettings)
    gold: GoldSettings = Field(default_factory=GoldSettings)
    recommendations: RecommendationSettings = Field(default_factory=RecommendationSettings)
    sync: SyncSettings = Field(default_factory=SyncSettings)
    privacy: PrivacySettings = Field(default_factory=PrivacySettings)
    lease: LeaseSettings = Field(default_factory=LeaseSettings)
    secrets: SecretsSettings = Field(default_factory=SecretsSettings)
    maintenance: MaintenanceSettings = Field(default_factory=MaintenanceSettings)
    destinations: DestinationsSettings = Field(default_factory=DestinationsSettings)
    collector: CollectorSettings = Field(default_factory=CollectorSettings)
    rules_dir: str = Field(default="", description="Folder of rule files (default: the project's rules/).")
    templates_dir: str = Field(default="", description="Folder of Liquid email templates (default: the project's "
                               "templates/).")
    sources: dict[str, SourceSettings] = Field(default_factory=dict)

    def source(self, name: str, kind: str) -> SourceSettings:
        source = self.sources.get(name)
        if source is None:
            known = ", ".join(sorted(n for n, s in self.sources.items() if s.kind == kind))
            raise ConfigError(f"unknown {kind} source {name!r} (configured: {known or 'none'})")
        if source.kind != kind:
            raise ConfigError(f"source {name!r} holds {source.kind}, not {kind}")
        return source

    def source_path(self, source: SourceSettings) -> str:
        folder = source.path or source.name
        if is_uri(folder) or folder.startswith("/"):
            return folder
        return f"{self.landing.root.rstrip('/')}/{folder}"


def _project_folder(name: str, configured: str = "") -> Path:
    """A folder of the project (``conf``, ``rules``, ``templates``): the setting, else
    ``$LAKEHOUSE_{NAME}_DIR`` (the spark-submit bundle's entry script sets it), else the
    checkout's own, else the working directory's, else the defaults an installed wheel carries
    (``jobs/project/``, see setup.py)."""
    configured = configured or os.environ.get(f"LAKEHOUSE_{name.upper()}_DIR", "")
    if configured:
        return Path(configured)
    for candidate in (PROJECT_ROOT / name, Path.cwd() / name, PACKAGED / name):
        if candidate.is_dir():
            return candidate
    return Path.cwd() / name


def rules_dir(settings: Settings) -> Path:
    return _project_folder("rules", settings.rules_dir)


def templates_dir(settings: Settings | None) -> Path:
    return _project_folder("templates", settings.templates_dir if settings is not None else "")


def conf_dir() -> Path:
    return _project_folder("conf")


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    return data


def _field_is_free_mapping(annotation: Any) -> bool:
    return get_origin(annotation) is dict or annotation is dict


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _split_key(key: str) -> list[str]:
    """Split a dotted --set key along the Settings model; a dict field takes the rest whole.

    ``spark.conf.spark.sql.shuffle.partitions`` -> ``[spark, conf, spark.sql.shuffle.partitions]``.
    """
    parts = key.split(".")
    model: type[BaseModel] | None = Settings
    out: list[str] = []
    while parts:
        head = parts.pop(0)
        out.append(head)
        field = model.model_fields.get(head) if model else None
        if field is None:
            if model is not None:
                raise ConfigError(f"unknown setting {key!r} (from --set)")
            continue
        if _field_is_free_mapping(field.annotation) and parts:
            out.append(".".join(parts))
            break
        model = _model_of(field.annotation)
    return out


def parse_overrides(pairs: Iterable[str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set takes key=value, got {pair!r}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        overrides[key.strip()] = value
    return overrides


def _apply(data: dict[str, Any], key: str, value: Any) -> None:
    parts = _split_key(key)
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def _describe(error: Mapping[str, Any]) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown key"
    if error["type"] == "missing":
        return "required key is missing"
    message = error["msg"].removeprefix("Value error, ")
    value = error.get("input")
    secret_like = str(error["loc"][-1]).endswith("_env") if error["loc"] else False
    if value is not None and not isinstance(value, dict | list) and not secret_like:
        message += f" (got {value!r})"
    return message


def _loc(error: Mapping[str, Any]) -> str:
    return ".".join(str(part) for part in error["loc"])


def _load_sources(directory: Path) -> dict[str, SourceSettings]:
    sources: dict[str, SourceSettings] = {}
    if not directory.is_dir():
        return sources
    for path in sorted(directory.glob("*.yaml")):
        data = read_yaml(path)
        data.setdefault("name", path.stem)
        try:
            source = SourceSettings.model_validate(data)
        except ValidationError as exc:
            error = exc.errors()[0]
            raise ConfigError(f"{path}: {_loc(error)}: {_describe(error)}") from None
        if source.name in sources:
            raise ConfigError(f"{path}: source {source.name!r} is defined twice")
        sources[source.name] = source
    return sources


def load_settings(
    env: str | None = None,
    conf_path: str | os.PathLike[str] | None = None,
    overrides: Iterable[str] | Mapping[str, Any] = (),
) -> Settings:
    """Load, override and validate the settings; raise ConfigError with a one-line message."""
    env = env or os.environ.get("LAKEHOUSE_ENV") or DEFAULT_ENV
    if conf_path is not None:
        path = Path(conf_path)
    else:
        if not ENV_VAR_NAME.match(env.replace("-", "_")):
            raise ConfigError(f"--env must be a plain name, got {env!r}")
        path = conf_dir() / f"{env}.yaml"
    data = read_yaml(path)
    for reserved in ("env", "config_file", "sources"):
        if reserved in data:
            raise ConfigError(f"{path}: {reserved}: unknown key (it is set by the loader)")
    if not isinstance(overrides, Mapping):
        overrides = parse_overrides(overrides)
    for key in overrides:
        if key.split(".")[0] in ("env", "config_file", "sources"):
            raise ConfigError(f"unknown setting {key!r} (from --set)")
        _apply(data, key, overrides[key])
    data["env"] = env
    data["config_file"] = str(path)
    data["sources"] = _load_sources(path.parent / "sources")
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = _loc(error)
        overridden = next(
            (k for k in overrides if loc == k or loc.startswith(k + ".") or k.startswith(loc + ".")),
            None,
        )
        where = f"--set {overridden}" if overridden else f"{path}: {loc}"
        raise ConfigError(f"{where}: {_describe(error)}") from None
    if "catalog_sources" not in settings.ingest.model_fields_set:  # the default names a feed only where there is one
        present = tuple(n for n in settings.ingest.catalog_sources if n in settings.sources)
        ingest = settings.ingest.model_copy(update={"catalog_sources": present})
        settings = settings.model_copy(update={"ingest": ingest})
    for kind in ("event_sources", "crm_sources", "catalog_sources"):
        for name in getattr(settings.ingest, kind):
            if name not in settings.sources:
                raise ConfigError(
                    f"{path}: ingest.{kind}: no source {name!r} in {path.parent / 'sources'}"
                )
    return settings
