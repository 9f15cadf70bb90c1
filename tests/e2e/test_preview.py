"""`lakehouse preview` on the demo lakehouse, and the gallery it writes opened in a real browser
(headless Chromium): product names and image alt texts are there, no Liquid is left, and the
email's screenshot is not blank."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
from click.testing import CliRunner
from PIL import Image

from jobs.cli import cli
from jobs.runtime.tables import read_table


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.alts: list[str] = []
        self.frames: list[str] = []

    def handle_starttag(self, tag, attrs):
        values = dict(attrs)
        if tag == "img":
            self.alts.append(values.get("alt") or "")
        if tag == "iframe":
            self.frames.append(values["src"])


def _browser(tmp_path, *args):
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium package is missing: run make install (it installs it)"
    return subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           f"--user-data-dir={tmp_path / 'profile'}", *args], capture_output=True, text=True,
                          timeout=60)


@pytest.mark.slow
def test_a_segment_s_preview_gallery_renders_every_member_in_chromium(demo_lakehouse, spark, tmp_path):
    out = tmp_path / "gallery"
    result = CliRunner().invoke(cli, ["--conf", str(demo_lakehouse.conf), "preview", "recommendations",
                                      "--segment", "window_shoppers", "--limit", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    members = sorted(r["customer_id"] for r in read_table(spark, demo_lakehouse.root, "gold.segment_membership")
                     .where("segment_id = 'window_shoppers'").collect())[:3]
    assert f"index.html ({len(members)} emails)" in result.output

    gallery = _browser(tmp_path, "--dump-dom", (out / "index.html").as_uri())
    page = _Page()
    page.feed(gallery.stdout)
    assert page.frames == [f"{m}.html" for m in members], gallery.stderr[-2000:]

    first = out / f"{members[0]}.html"
    dom = _browser(tmp_path, "--dump-dom", first.as_uri()).stdout
    email = _Page()
    email.feed(dom)
    products = read_table(spark, demo_lakehouse.root, "silver.products")
    names = {r["name"] for r in products.collect()}
    assert email.alts and set(email.alts) <= names  # every image is a catalog product, named
    assert all(re.search(re.escape(f">{alt}</span>"), dom) for alt in email.alts)
    assert "{{" not in dom and "{%" not in dom

    shot = tmp_path / "email.png"
    _browser(tmp_path, f"--screenshot={shot}", "--window-size=700,900", first.as_uri())
    colors = Image.open(shot).convert("RGB").getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 50  # text and boxes, not one blank colour
