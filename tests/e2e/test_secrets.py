"""A full run with real secrets in play — the Klaviyo key, the erasure salt — leaves them in no
output, log, table, Delta log or export file."""

from __future__ import annotations

import json

from click.testing import CliRunner

from jobs.runtime.tables import REGISTRY, is_delta_table, read_table, table_path
from tests.conftest import DEMO_LATER
from tests.fakes.klaviyo import FakeKlaviyo

KEY = "pk_live_1d9e8c7b6a5f4e3d2c1b"
SALT = "salt-7c1e-never-to-be-seen"
SEGMENTS = ("abandoned_cart_24h", "at_risk", "high_value", "nyc_electronics_25_35", "window_shoppers")


def test_no_secret_in_any_output_log_table_or_file_of_a_full_run(demo_lakehouse, spark, tmp_path, monkeypatch,
                                                                  capfd):
    from jobs.cli import cli

    monkeypatch.setenv("TEST_KLAVIYO_KEY", KEY)
    monkeypatch.setenv("TEST_ERASURE_SALT", SALT)
    server = FakeKlaviyo(KEY, fault_rate=0.1)
    url = server.start()
    try:
        lists = ", ".join(f"{s}: L{i}" for i, s in enumerate(SEGMENTS))
        conf = demo_lakehouse.copy(tmp_path, top="privacy: {salt_env: TEST_ERASURE_SALT}\n", destinations=(
            f"  klaviyo: {{base_url: '{url}', api_key_env: TEST_KLAVIYO_KEY, lists: {{{lists}}}, poll_seconds: 0.01,\n"
            "            retry: {timeout_seconds: 1, max_attempts: 8, backoff_seconds: 0.01}}\n")).conf
        runner = CliRunner()
        outputs = []
        for args in (["--conf", str(conf), "run", "--as-of", DEMO_LATER, "--sync", "klaviyo", "--sync", "file"],
                     ["--conf", str(conf), "sync", "klaviyo", "--dry-run", "--full-refresh"],
                     ["--conf", str(conf), "privacy", "erase", "--customer-id", "C000001"]):
            result = runner.invoke(cli, args, catch_exceptions=False)
            assert result.exit_code == 0, result.output
            outputs.append(result.output)
        assert any(c.headers.get("authorization", "").endswith(KEY) for c in server.calls)  # the key was used
        assert server.violations == [] and server.lists  # and Klaviyo got the segments' lists
    finally:
        server.stop()

    captured = capfd.readouterr()  # the JVM's log lines too: they go straight to file descriptors 1 and 2
    texts = {"cli output": "\n".join(outputs), "stdout": captured.out, "stderr": captured.err}
    root = str(tmp_path / "lakehouse")
    for key in REGISTRY:
        if is_delta_table(spark, table_path(root, key)):
            texts[key] = "\n".join(json.dumps(r.asDict(), default=str) for r in read_table(spark, root, key).collect())
    for path in tmp_path.rglob("*"):  # Delta logs (commit info, userMetadata), exports, manifests
        readable = path.suffix in (".json", ".jsonl", ".crc", ".log") or "_delta_log" in path.parts
        if path.is_file() and readable:
            texts[str(path.relative_to(tmp_path))] = path.read_bytes().decode(errors="replace")
    assert len(texts) > 20
    leaks = [name for name, text in texts.items() if KEY in text or SALT in text]
    assert leaks == []
