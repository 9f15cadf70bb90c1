"""A real browser (headless Chromium) on a page of another origin loads collector.js: its page
view, a click on a data-track element and an add-to-cart reach bronze with the page's session."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

from jobs.collector.serve import free_port
from jobs.runtime.tables import read_table
from jobs.stages.ingest import ingest
from tests.collector.support import SITE_KEY

PAGE = """<!doctype html>
<html><head><title>Trail shoes</title>
<script src="{collector}/collector.js" data-key="{key}"></script></head>
<body>
<button id="shoe" data-track="product_click" data-product-id="p7" data-price="49.90">Trail shoe</button>
<p id="out">waiting</p>
<script>
window.addEventListener("load", function () {{
  document.getElementById("shoe").click();
  lakehouse.addToCart("p7", {{price: "49.90", quantity: "1"}});
  lakehouse.flush().then(function () {{
    document.getElementById("out").textContent = "sent session=" + lakehouse.sessionId;
  }});
}});
</script></body></html>
"""


def test_collector_js_in_chromium_lands_page_view_click_and_add_to_cart(spark, start_collector, tmp_path):
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium package is missing: run make install (it installs it)"
    site = tmp_path / "site"
    site.mkdir()
    page_port = free_port()
    origin = f"http://127.0.0.1:{page_port}"
    collector = start_collector(f"collector.sites={json.dumps({'shop': {'write_key': SITE_KEY, 'origins': [origin]}})}",
                                "collector.roll_seconds=3600")
    (site / "index.html").write_text(PAGE.format(collector=collector.url, key=SITE_KEY))
    pages = ThreadingHTTPServer(("127.0.0.1", page_port), partial(SimpleHTTPRequestHandler, directory=str(site)))
    threading.Thread(target=pages.serve_forever, daemon=True).start()
    try:
        browser = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom",
             f"{origin}/index.html"], capture_output=True, text=True, timeout=60)
    finally:
        pages.shutdown()
    found = re.search(r"sent session=([0-9a-f-]{36})", browser.stdout)
    assert found, browser.stdout[-2000:] + browser.stderr[-2000:]
    session = found.group(1)
    collector.stop()

    ingest(spark, collector.settings, "events")
    rows = read_table(spark, collector.settings.lakehouse.root, "bronze.events").collect()
    assert sorted((r["event_type"], r["product_id"]) for r in rows) == [
        ("add_to_cart", "p7"), ("page_view", None), ("product_click", "p7")]
    assert {r["session_id"] for r in rows} == {session}
    assert len({r["anonymous_id"] for r in rows}) == 1
    assert {r["url"] for r in rows} == {f"{origin}/index.html"}
    assert {r["_source"] for r in rows} == {"collector"}
    assert all("Chrome" in r["user_agent"] for r in rows)
    click = next(r for r in rows if r["event_type"] == "product_click")
    assert click["properties"]["price"] == "49.90" and click["properties"]["label"] == "Trail shoe"
