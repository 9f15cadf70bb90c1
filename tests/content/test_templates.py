"""Templates: strict rendering, the checks `rules validate` runs, and the shipped emails' logic."""

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from jobs.content.templates import Templates, email_templates
from jobs.runtime.errors import ConfigError
from tests.conftest import REPO

SHIPPED = Templates(REPO / "templates")


def product(product_id, name, price="19.90"):
    return {"product_id": product_id, "name": name, "url": f"https://shop.example/p/{product_id}",
            "image_url": f"https://shop.example/img/{product_id}.jpg", "price": Decimal(price), "currency": "USD",
            "category": "kids.toys", "brand": "Acme", "in_stock": True}


def context(last_viewed=None, cart=(), products=("P2", "P3")):
    return {
        "customer": {"customer_id": "C1", "email": "ann@example.com", "first_name": "Ann", "age": 31, "city": "Boston",
                     "country": "US", "email_consent": True},
        "features": {"customer_id": "C1"},
        "products": [{**product(p, f"Product {p}"), "rank": i, "score": 1.0 / i, "reason": "co_occurrence"}
                     for i, p in enumerate(products, start=1)],
        "cart": list(cart),
        "last_viewed_product": last_viewed,
        "segment": None,
        "as_of": datetime(2026, 11, 20, tzinfo=UTC),
    }


def test_every_shipped_template_passes_the_checks():
    names = [p.stem for p in email_templates(REPO / "templates")]
    assert names == ["abandoned_cart", "recommendations", "viewed_offer"]
    assert {name: SHIPPED.check(name) for name in names} == {name: [] for name in names}


def test_a_customer_who_viewed_product_a_gets_its_offer_and_one_who_did_not_the_default_block():
    template = SHIPPED.load("viewed_offer")
    viewed = SHIPPED.render(template, context(last_viewed=product("PA", "Product A <Deluxe>")))
    assert "20 % off</strong> Product A &lt;Deluxe&gt;" in viewed and 'alt="Product A &lt;Deluxe&gt;"' in viewed
    assert 'class="offer viewed"' in viewed and "Product P2" not in viewed

    default = SHIPPED.render(template, context())
    assert 'class="offer default"' in default and "20 % off" not in default
    assert [name in default for name in ("Product P2", "Product P3", "Product A")] == [True, True, False]


def test_the_cart_email_lists_the_cart_and_the_recommendation_block_the_top_products():
    cart = [product(f"K{i}", f"Cart item {i}", "5.00") for i in range(1, 5)]
    email = SHIPPED.render(SHIPPED.load("abandoned_cart"), context(cart=cart))
    assert [f"Cart item {i}" in email for i in range(1, 5)] == [True, True, True, False]
    assert "and 1 more" in email and "5.00 USD" in email
    block = SHIPPED.render(SHIPPED.load("recommendations"), context(products=[f"P{i}" for i in range(1, 9)]))
    assert block.count('class="product"') == 6 and "Product P6" in block and "Product P7" not in block
    assert "{{" not in block and "{%" not in block


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "typo.liquid").write_text("<p>Hi</p>\n<p>{{ customer.frist_name }}</p>\n")
    (tmp_path / "filter.liquid").write_text("{{ customer.first_name | shout }}\n")
    (tmp_path / "unknown.liquid").write_text("{% for p in produts %}{{ p.name }}{% endfor %}\n")
    (tmp_path / "broken.liquid").write_text("<p>\n{% if customer.first_name %}never closed\n")
    return tmp_path


def test_checks_name_the_file_line_and_variable_or_filter(folder):
    templates = Templates(folder)
    assert templates.check("typo") == [
        f"{folder}/typo.liquid:2:7: customer.frist_name is not a field of customer (known: customer_id, email, "
        "first_name, age, city, country, email_consent)"]
    assert templates.check("filter") == [f"{folder}/filter.liquid:1:26: unknown filter 'shout'"]
    [unknown] = templates.check("unknown")
    assert unknown.startswith(f"{folder}/unknown.liquid:1:13: 'produts' is not in the context (known: customer,")
    [broken] = templates.check("broken")
    assert broken.startswith(f"{folder}/broken.liquid:") and "endif" in broken


def test_strict_rendering_fails_on_an_undefined_variable_with_its_place(folder):
    templates = Templates(folder)
    with pytest.raises(ConfigError, match=r"typo\.liquid:2:\d+: customer\.frist_name is undefined"):
        templates.render(templates.load("typo"), context())
    with pytest.raises(ConfigError, match=r"unknown template 'nope' in .* \(known: broken, filter, typo, unknown\)"):
        templates.load("nope")
