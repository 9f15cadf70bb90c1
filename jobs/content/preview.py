"""``lakehouse preview``: a template rendered for chosen customers as of a time, and a gallery.

The contexts (see :mod:`jobs.content.templates`) are built in Spark for the chosen customers
only — named ones, or the first ``limit`` members of a segment as its rule judges the features
as of the time — and collected once (bounded by the choice, never data-sized): features as of
the time (the table when it is as of that time, else computed like ``lakehouse features``),
recommendations as of the time (likewise) joined to ``silver.products``, the abandoned cart's
and the last viewed product's catalog records.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.content.templates import CUSTOMER_FIELDS, PRODUCT_FIELDS, Templates
from jobs.rules.segments import Segment
from jobs.runtime.errors import InputError
from jobs.runtime.settings import Settings, templates_dir
from jobs.runtime.tables import read_or_empty
from jobs.stages.features import FEATURES, as_utc, compute_features, features_as_of
from jobs.stages.recommend import PRODUCTS, recommendations_at
from jobs.stages.segment import conditions, validated_segments
from transforms.segments import members


@dataclass(frozen=True)
class Rendered:
    customer_id: str
    file: Path
    products: int


def features_at(spark: SparkSession, settings: Settings, as_of: datetime) -> DataFrame:
    root = settings.lakehouse.root
    current = features_as_of(spark, root)
    if current is not None and as_utc(current) == as_of:
        return read_or_empty(spark, root, FEATURES)
    return compute_features(spark, settings, as_of)


def _product_fields() -> list[Column]:
    """A product's fields after a join to the catalog: the id stands in for a missing name."""
    return [F.coalesce("name", "product_id").alias("name") if c == "name" else F.col(c) for c in PRODUCT_FIELDS]


def choose(spark: SparkSession, settings: Settings, as_of: datetime, customer_ids: tuple[str, ...],
           segment: Segment | None, limit: int) -> DataFrame:
    """The features as of ``as_of`` of the named customers, or of the first ``limit`` members of
    ``segment`` (by customer id)."""
    features = features_at(spark, settings, as_of)
    if segment is not None:
        chosen = features.join(features.transform(members(conditions([segment], as_of))).select("customer_id"),
                               "customer_id", "left_semi")
        return chosen.orderBy("customer_id").limit(limit)
    chosen = features.where(F.col("customer_id").isin(*customer_ids))
    found = {r["customer_id"] for r in chosen.select("customer_id").collect()}  # at most the ids given
    missing = [c for c in customer_ids if c not in found]
    if missing:
        raise InputError(f"no customer {missing[0]!r} in the features as of {as_of.isoformat()}")
    return chosen


def contexts(spark: SparkSession, settings: Settings, as_of: datetime, chosen: DataFrame,
             segment: Segment | None) -> list[dict[str, Any]]:
    """One template context per chosen customer, in customer id order (one collect of those rows)."""
    chosen = chosen.persist()
    try:
        catalog = read_or_empty(spark, settings.lakehouse.root, PRODUCTS).select(*PRODUCT_FIELDS)
        recs = recommendations_at(spark, settings, as_of, chosen.select("customer_id"))
        products = (recs.join(catalog, "product_id", "left")
                    .select("customer_id", F.struct("rank", *_product_fields(), "score", "reason").alias("p"))
                    .groupBy("customer_id").agg(F.sort_array(F.collect_list("p")).alias("products")))
        cart = (chosen.select("customer_id", F.posexplode("abandoned_products").alias("pos", "product_id"))
                .join(catalog, "product_id", "left")
                .select("customer_id", F.struct("pos", *_product_fields()).alias("c"))
                .groupBy("customer_id").agg(F.sort_array(F.collect_list("c")).alias("cart")))
        viewed = (chosen.select("customer_id", F.col("last_viewed_product").alias("product_id"))
                  .where(F.col("product_id").isNotNull()).join(catalog, "product_id", "left")
                  .select("customer_id", F.struct(*_product_fields()).alias("_last_viewed")))
        rows = (chosen.join(products, "customer_id", "left").join(cart, "customer_id", "left")
                .join(viewed, "customer_id", "left").orderBy("customer_id").collect())
    finally:
        chosen.unpersist()
    found = []
    for row in rows:
        record = row.asDict(recursive=True)
        features = {k: record[k] for k in chosen.columns}
        found.append({
            "customer": {c: record[c] for c in CUSTOMER_FIELDS},
            "features": features,
            "products": record["products"] or [],
            "cart": [{k: v for k, v in item.items() if k != "pos"} for item in (record["cart"] or [])],
            "last_viewed_product": record["_last_viewed"],
            "segment": None if segment is None else {"id": segment.id, "name": segment.name,
                                                     "description": segment.description},
            "as_of": as_of,
        })
    return found


def _money(value: Any) -> Any:
    return value.quantize(Decimal("0.01")) if isinstance(value, Decimal) else value


def preview(spark: SparkSession, settings: Settings, template_name: str, as_of: datetime | None,
            customer_ids: tuple[str, ...], segment_id: str | None, limit: int, out: Path) -> list[Rendered]:
    """Render ``template_name`` for the chosen customers into ``out``: one HTML file each and an
    ``index.html`` gallery. The template is checked before any data is read."""
    templates = Templates(templates_dir(settings))
    template = templates.load(template_name)
    segment = None
    if segment_id is not None:
        known = {s.id: s for s in validated_segments(spark, settings)}
        if segment_id not in known:
            raise InputError(f"unknown segment {segment_id!r} (known: {', '.join(sorted(known))})")
        segment = known[segment_id]
    if as_of is None:
        as_of = features_as_of(spark, settings.lakehouse.root)
        if as_of is None:
            raise InputError("no customer features yet: run `lakehouse features` or give --as-of")
    as_of = as_utc(as_of)
    chosen = choose(spark, settings, as_of, customer_ids, segment, limit)
    out.mkdir(parents=True, exist_ok=True)
    rendered = []
    for context in contexts(spark, settings, as_of, chosen, segment):
        for item in [*context["products"], *context["cart"]]:
            item["price"] = _money(item["price"])
        customer_id = context["customer"]["customer_id"]
        file = out / f"{_safe(customer_id)}.html"
        file.write_text(templates.render(template, context))
        rendered.append(Rendered(customer_id, file, len(context["products"])))
    (out / "index.html").write_text(gallery(templates.path(template_name).stem, as_of, segment, rendered))
    return rendered


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def gallery(template: str, as_of: datetime, segment: Segment | None, rendered: list[Rendered]) -> str:
    """A page showing every rendered email in a frame, with a link to each."""
    title = f"{template} as of {as_of.isoformat()}" + (f", segment {segment.id}" if segment else "")
    cards = "\n".join(
        f'<figure><figcaption><a href="{html.escape(r.file.name)}">{html.escape(r.customer_id)}</a> '
        f'({r.products} products)</figcaption>'
        f'<iframe src="{html.escape(r.file.name)}" title="{html.escape(r.customer_id)}" loading="eager"></iframe>'
        f'</figure>' for r in rendered)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 24px; background: #f4f4f6; }}
main {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(420px, 1fr)); gap: 16px; }}
figure {{ margin: 0; background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 8px; }}
iframe {{ width: 100%; height: 520px; border: 0; }}
</style></head>
<body><h1>{html.escape(title)}</h1>
<p>{len(rendered)} email(s)</p>
<main>
{cards}
</main></body></html>
"""
