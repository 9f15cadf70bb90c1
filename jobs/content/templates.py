"""Liquid templates (``templates/``): loaded strict, checked against the context they get.

A template is rendered with python-liquid in strict mode: an undefined variable or filter is an
error naming the template, the line and the variable, never an empty string in a sent email.
Output is HTML-escaped unless a template asks otherwise. Files whose name starts with ``_`` are
partials (``{% render '_product', product: p %}``), not emails.

The context every template gets (:data:`CONTEXT`):

``customer``
    the profile as of the time: ``customer_id, email, first_name, age, city, country,
    email_consent``
``features``
    every column of ``gold.customer_features`` as of the time
``products``
    the customer's recommendations in rank order, each a product (below) with ``rank``,
    ``score`` and ``reason``
``cart``
    the products of the customer's abandoned cart (empty when none)
``last_viewed_product``
    the product the customer viewed last, or nil
``segment``
    ``id, name, description`` of the segment rendered for (``--segment``), or nil
``as_of``
    the time the content is as of

A product: ``product_id, name`` (the id when the catalog has no name)``, url, image_url, price,
currency, category, brand, in_stock``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from liquid import Environment, FileSystemLoader, StrictUndefined
from liquid.exceptions import LiquidError

from jobs.runtime.errors import ConfigError
from transforms.gold_features import FEATURE_COLUMNS

SUFFIX = ".liquid"
PRODUCT_FIELDS = ("product_id", "name", "url", "image_url", "price", "currency", "category", "brand", "in_stock")
CUSTOMER_FIELDS = ("customer_id", "email", "first_name", "age", "city", "country", "email_consent")
SEGMENT_FIELDS = ("id", "name", "description")
LIST_MEMBERS = ("size", "first", "last")
# name -> (fields of a record, or of each item of a list; whether it is a list). None: a plain value.
CONTEXT: dict[str, tuple[tuple[str, ...], bool] | None] = {
    "customer": (CUSTOMER_FIELDS, False),
    "features": (FEATURE_COLUMNS, False),
    "products": ((*PRODUCT_FIELDS, "rank", "score", "reason"), True),
    "cart": (PRODUCT_FIELDS, True),
    "last_viewed_product": (PRODUCT_FIELDS, False),
    "segment": (SEGMENT_FIELDS, False),
    "as_of": None,
}
_LOCATION = re.compile(r"-> .* (\d+):(\d+)$", re.MULTILINE)


def email_templates(folder: Path) -> list[Path]:
    """The emails of ``folder`` (partials, named ``_…``, left out), by name."""
    return sorted(p for p in folder.glob(f"*{SUFFIX}") if not p.name.startswith("_"))


def _line_col(source: str, index: int) -> tuple[int, int]:
    line = source.count("\n", 0, index) + 1
    return line, index - (source.rfind("\n", 0, index) + 1) + 1


@dataclass(frozen=True)
class Templates:
    """The templates of one folder, in a strict environment."""

    folder: Path

    def __post_init__(self) -> None:
        env = Environment(loader=FileSystemLoader(self.folder, ext=SUFFIX), undefined=StrictUndefined,
                          autoescape=True, strict_filters=True)
        object.__setattr__(self, "env", env)

    def path(self, name: str) -> Path:
        """A template by name (``recommendations`` or ``recommendations.liquid``) or path."""
        given = Path(name)
        candidates = [given] if given.suffix == SUFFIX and given.exists() else [
            self.folder / (name if name.endswith(SUFFIX) else name + SUFFIX)]
        if not candidates[0].is_file():
            known = ", ".join(p.stem for p in email_templates(self.folder)) or "none"
            raise ConfigError(f"unknown template {name!r} in {self.folder} (known: {known})")
        return candidates[0]

    def _where(self, template: str, exc: LiquidError) -> str:
        """``file:line:column`` of a python-liquid error (in the template or a partial it renders)."""
        token = getattr(exc, "token", None)
        found = _LOCATION.search(str(exc))
        file = template
        if token is not None and getattr(token, "source", None):
            for candidate in self.folder.glob(f"*{SUFFIX}"):
                if candidate.read_text() == token.source:
                    file = str(candidate)
            line, col = _line_col(token.source, token.start_index)
        elif found:
            line, col = int(found.group(1)), int(found.group(2))
        else:
            return file
        return f"{file}:{line}:{col}"

    def load(self, name: str) -> Any:
        path = self.path(name)
        try:
            return self.env.get_template(path.name) if path.parent == self.folder else self.env.from_string(
                path.read_text(), name=str(path))
        except LiquidError as exc:
            raise ConfigError(f"{self._where(str(path), exc)}: {str(exc).splitlines()[0]}") from None

    def check(self, name: str) -> list[str]:
        """Problems of a template, each ``file:line:column: what``: its syntax, then every filter it
        uses and every context variable it reads (:data:`CONTEXT`), partials included."""
        path = self.path(name)
        try:
            template = self.load(name)
        except ConfigError as exc:
            return [str(exc)]
        analysis = template.analyze(include_partials=True)
        problems = []
        for filter_name, spans in analysis.filters.items():
            if filter_name not in self.env.filters:
                problems += [f"{self._at(path, span)}: unknown filter {filter_name!r}" for span in spans]
        for uses in analysis.globals.values():
            for use in uses:
                problem = _context_problem([str(s) for s in use.segments])
                if problem:
                    problems.append(f"{self._at(path, use.span)}: {problem}")
        return problems

    def _at(self, path: Path, span: Any) -> str:
        source_path = path if span.template_name in (path.name, str(path)) else self.folder / (
            span.template_name if span.template_name.endswith(SUFFIX) else span.template_name + SUFFIX)
        line, col = _line_col(source_path.read_text(), span.index)
        return f"{source_path}:{line}:{col}"

    def render(self, template: Any, context: dict[str, Any]) -> str:
        try:
            return template.render(**context)
        except LiquidError as exc:
            raise ConfigError(f"{self._where(template.name, exc)}: {str(exc).splitlines()[0]}") from None


def _context_problem(segments: list[str]) -> str | None:
    root = segments[0]
    if root not in CONTEXT:
        return f"{root!r} is not in the context (known: {', '.join(CONTEXT)})"
    spec = CONTEXT[root]
    if spec is None or len(segments) == 1:
        return None
    names, is_list = spec
    rest = segments[1:]
    if is_list:
        if rest[0] == "size":
            return None
        if rest[0] not in LIST_MEMBERS and not rest[0].isdigit():
            return f"{root}.{rest[0]}: {root} is a list (use an index, first, last, size or a for loop)"
        rest = rest[1:]
    if rest and rest[0] not in names:
        return f"{root}.{rest[0]} is not a field of {root} (known: {', '.join(names)})"
    return None
