from pathlib import Path

import pytest

from jobs.runtime.errors import ConfigError
from jobs.runtime.settings import load_settings

REPO = Path(__file__).resolve().parents[2]


def _conf(tmp_path: Path, text: str, sources: dict[str, str] | None = None) -> Path:
    path = tmp_path / "conf" / "test.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    for name, body in (sources or {}).items():
        (path.parent / "sources").mkdir(exist_ok=True)
        (path.parent / "sources" / f"{name}.yaml").write_text(body)
    return path


MINIMAL = "lakehouse: {root: lh}\nlanding: {root: land}\ningest: {event_sources: [], crm_sources: [], catalog_sources: []}\n"


def test_local_env_is_the_default_and_relative_roots_become_absolute(monkeypatch, tmp_path):
    monkeypatch.delenv("LAKEHOUSE_ENV", raising=False)
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert settings.env == "local"
    assert settings.lakehouse.root == str(tmp_path / "data" / "lakehouse")
    assert settings.landing.root == str(tmp_path / "data" / "landing")
    assert set(settings.sources) >= {"web", "crm", "rees46"}


def test_env_variable_selects_the_file(monkeypatch):
    monkeypatch.setenv("LAKEHOUSE_ENV", "prod")
    settings = load_settings()
    assert settings.env == "prod"
    assert settings.lakehouse.root.startswith("s3a://")
    assert settings.spark.master is None


def test_set_overrides_are_typed_and_dict_keys_may_hold_dots():
    settings = load_settings(
        "local",
        overrides=["spark.conf.spark.sql.shuffle.partitions=3", "lakehouse.root=s3a://b/lh",
                   "spark.profile=test"],
    )
    assert settings.spark.conf["spark.sql.shuffle.partitions"] == 3
    assert settings.lakehouse.root == "s3a://b/lh"
    assert settings.spark.profile == "test"


def test_settings_are_frozen():
    settings = load_settings("local")
    with pytest.raises(Exception, match="frozen"):
        settings.lakehouse.root = "/elsewhere"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (MINIMAL + "lakehous: {root: x}\n", r"test\.yaml: lakehous: unknown key"),
        (MINIMAL.replace("lh}", "lh, rooot: 1}"), r"test\.yaml: lakehouse\.rooot: unknown key"),
        (MINIMAL + "spark: {profile: fast}\n", r"test\.yaml: spark\.profile: Input should be 'default' or 'test' \(got 'fast'\)"),
        (MINIMAL + "spark: {conf: [1, 2]}\n", r"test\.yaml: spark\.conf: .*valid dictionary"),
        ("landing: {root: land}\n", r"test\.yaml: lakehouse: required key is missing"),
        ("lakehouse: {root: lh\nlanding: x\n", r"test\.yaml: invalid YAML at line \d+, column \d+"),
        ("- just\n- a list\n", r"test\.yaml: expected a mapping of settings, got list"),
    ],
)
def test_a_bad_file_names_the_file_and_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message) as error:
        load_settings(conf_path=_conf(tmp_path, text))
    assert "\n" not in str(error.value)


def test_unknown_set_key_is_named():
    with pytest.raises(ConfigError, match=r"unknown setting 'lakehouse\.rooot' \(from --set\)"):
        load_settings("local", overrides=["lakehouse.rooot=/x"])


def test_wrong_type_from_set_names_the_override():
    with pytest.raises(ConfigError, match=r"--set spark\.master: Input should be a valid string"):
        load_settings("local", overrides=["spark.master=[1, 2]"])


def test_set_without_equals_is_refused():
    with pytest.raises(ConfigError, match="--set takes key=value, got 'lakehouse.root'"):
        load_settings("local", overrides=["lakehouse.root"])


def test_missing_env_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"config file not found: .*conf/staging\.yaml"):
        load_settings("staging")
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(conf_path=tmp_path / "nope.yaml")


def test_source_file_with_an_unknown_column_is_named(tmp_path):
    conf = _conf(tmp_path, MINIMAL, {"shop": "kind: events\nformat: csv\ncolumns: {price: amount}\n"})
    with pytest.raises(ConfigError, match=r"sources/shop\.yaml: columns: unknown bronze column 'price'"):
        load_settings(conf_path=conf)


def test_ingest_must_name_configured_sources(tmp_path):
    conf = _conf(tmp_path, MINIMAL.replace("event_sources: []", "event_sources: [shop]"))
    with pytest.raises(ConfigError, match=r"ingest\.event_sources: no source 'shop'"):
        load_settings(conf_path=conf)


def test_source_lookup_checks_the_kind():
    settings = load_settings("local")
    assert settings.source("rees46", "events").format == "csv"
    with pytest.raises(ConfigError, match="source 'crm' holds crm, not events"):
        settings.source("crm", "events")
    with pytest.raises(ConfigError, match=r"unknown events source 'nope' \(configured: collector, rees46, web\)"):
        settings.source("nope", "events")


def test_shipped_environments_all_load():
    for path in sorted((REPO / "conf").glob("*.yaml")):
        assert load_settings(conf_path=path).config_file == str(path)


def test_local_python_workers_run_the_interpreter_the_command_runs(monkeypatch):
    import sys

    from jobs.runtime.spark import session_confs

    monkeypatch.delenv("PYSPARK_PYTHON", raising=False)
    local = load_settings("local").spark
    assert session_confs(local)["spark.pyspark.python"] == sys.executable  # not whatever python3 PATH finds first
    monkeypatch.setenv("PYSPARK_PYTHON", "/opt/python/bin/python3")  # configured: left to Spark
    assert "spark.pyspark.python" not in session_confs(local)
    cluster = local.model_copy(update={"master": "spark://head:7077"})
    monkeypatch.delenv("PYSPARK_PYTHON")
    assert "spark.pyspark.python" not in session_confs(cluster)


def test_sessions_that_look_names_up_get_the_lakehouses_own_hive_metastore(monkeypatch, tmp_path):
    from jobs.runtime.spark import session_confs

    for variable in ("PYSPARK_GATEWAY_PORT", "SPARK_CONF_DIR", "HIVE_CONF_DIR", "HADOOP_CONF_DIR", "SPARK_HOME"):
        monkeypatch.delenv(variable, raising=False)
    local = load_settings("local").spark
    root = str(tmp_path / "lakehouse")
    reader = session_confs(local, root=root, hive=True)
    assert reader["spark.sql.catalogImplementation"] == "hive"
    assert reader["spark.hadoop.javax.jdo.option.ConnectionURL"] == (
        f"jdbc:derby:;databaseName={tmp_path}/lakehouse/_catalog/metastore_db;create=true")
    assert reader["spark.sql.warehouse.dir"] == f"{tmp_path}/lakehouse/_catalog/warehouse"
    assert session_confs(local, root=f"file:{root}", hive=True)["spark.sql.warehouse.dir"] == reader["spark.sql.warehouse.dir"]
    # Jobs write by path and never open the metastore: their catalog stays in memory.
    assert "spark.sql.catalogImplementation" not in session_confs(local, root=root)
    # The user's conf wins; an object-storage root, the test profile and spark-submit leave the catalog alone.
    mine = local.model_copy(update={"conf": {**local.conf, "spark.sql.catalogImplementation": "in-memory"}})
    assert session_confs(mine, root=root, hive=True)["spark.sql.catalogImplementation"] == "in-memory"
    assert "spark.sql.catalogImplementation" not in session_confs(local, root="s3a://bucket/lakehouse", hive=True)
    test = local.model_copy(update={"profile": "test"})
    assert "spark.sql.catalogImplementation" not in session_confs(test, root=root, hive=True)
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "hive-site.xml").write_text("<configuration/>")  # a metastore of the user's own
    monkeypatch.setenv("HIVE_CONF_DIR", str(tmp_path / "conf"))
    theirs = session_confs(local, root=root, hive=True)
    assert theirs["spark.sql.catalogImplementation"] == "hive" and "spark.hadoop.javax.jdo.option.ConnectionURL" not in theirs
    monkeypatch.delenv("HIVE_CONF_DIR")
    monkeypatch.setenv("PYSPARK_GATEWAY_PORT", "1")
    assert "spark.sql.catalogImplementation" not in session_confs(local, root=root, hive=True)
