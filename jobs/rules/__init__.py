"""Rule files in ``rules/`` (what analysts edit), loaded and validated into frozen models.

Every problem is a :class:`ConfigError` naming the file and the entry, raised before any data
is touched.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from jobs.runtime.errors import ConfigError
from jobs.runtime.settings import read_yaml

CANONICAL_EVENT_TYPES = (
    "page_view", "product_view", "product_click", "add_to_cart", "remove_from_cart",
    "cart_abandonment", "checkout_started", "purchase",
)


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def name_key(text: str) -> str:
    """How names are compared: lower case, trimmed, runs of space/-/_ as one ``_``."""
    return re.sub(r"[\s_-]+", "_", text.strip().lower())


def place_key(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


class EventTypes(Rule):
    synonyms: dict[str, str]  # name_key(synonym or canonical) -> canonical


class BotPattern(Rule):
    name: str
    pattern: str


class BotRules(Rule):
    user_agent_patterns: tuple[BotPattern, ...] = Field(min_length=1)

    @property
    def user_agent_regex(self) -> str:
        return "(?i)" + "|".join(f"(?:{p.pattern})" for p in self.user_agent_patterns)


class Locations(Rule):
    cities: dict[str, str]  # place_key(spelling) -> canonical
    countries: dict[str, str]


class Expectation(Rule):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    expect: str = Field(min_length=1)
    action: Literal["warn", "drop", "fail"]


class SourceAudit(Rule):
    """A check of a source's event stream as a whole, judged at each run's time: freshness (its
    newest event is at most ``freshness_hours`` old) or volume (its last full hour holds within
    ``volume_band`` of the mean of the same hour in the ``weeks`` weeks before)."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    freshness_hours: float | None = Field(default=None, gt=0)
    volume_band: float | None = Field(default=None, gt=0)
    weeks: int = Field(default=4, ge=1, le=52)
    action: Literal["warn", "fail"]

    @model_validator(mode="after")
    def _one_kind(self) -> SourceAudit:
        if (self.freshness_hours is None) == (self.volume_band is None):
            raise ValueError("give freshness_hours or volume_band (one of them)")
        return self


class QualityRules(Rule):
    tables: dict[str, tuple[Expectation, ...]]
    sources: dict[str, tuple[SourceAudit, ...]] = Field(default_factory=dict)

    def for_table(self, table: str) -> tuple[Expectation, ...]:
        return self.tables.get(table, ())


def _first_error(path: Path, exc: ValidationError, prefix: str = "") -> ConfigError:
    error = exc.errors()[0]
    loc = ".".join(str(p) for p in (prefix, *error["loc"]) if p != "")
    message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"].removeprefix("Value error, ")
    return ConfigError(f"{path}: {loc}: {message}")


def _mapping(path: Path) -> dict[str, Any]:
    return read_yaml(path)


def load_event_types(directory: Path) -> EventTypes:
    path = directory / "event_types.yaml"
    data = _mapping(path)
    synonyms: dict[str, str] = {}
    for canonical, names in data.items():
        if canonical not in CANONICAL_EVENT_TYPES:
            raise ConfigError(
                f"{path}: {canonical}: not a canonical event type "
                f"(expected one of {', '.join(CANONICAL_EVENT_TYPES)})"
            )
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ConfigError(f"{path}: {canonical}: expected a list of names")
        for name in [canonical, *names]:
            key = name_key(name)
            if synonyms.get(key, canonical) != canonical:
                raise ConfigError(f"{path}: {canonical}: {name!r} already maps to {synonyms[key]}")
            synonyms[key] = canonical
    for canonical in CANONICAL_EVENT_TYPES:
        synonyms.setdefault(canonical, canonical)
    return EventTypes(synonyms=synonyms)


def load_bot_rules(directory: Path) -> BotRules:
    path = directory / "bots.yaml"
    try:
        rules = BotRules.model_validate(_mapping(path))
    except ValidationError as exc:
        raise _first_error(path, exc) from None
    for index, entry in enumerate(rules.user_agent_patterns):
        try:
            re.compile(entry.pattern)
        except re.error as exc:
            raise ConfigError(
                f"{path}: user_agent_patterns.{index} ({entry.name}): bad regular expression: {exc}"
            ) from None
    return rules


def load_locations(directory: Path) -> Locations:
    path = directory / "locations.yaml"
    data = _mapping(path)
    out: dict[str, dict[str, str]] = {"cities": {}, "countries": {}}
    for section in out:
        entries = data.get(section) or {}
        if not isinstance(entries, dict):
            raise ConfigError(f"{path}: {section}: expected a mapping of name: [spellings]")
        for canonical, spellings in entries.items():
            if not isinstance(spellings, list):
                raise ConfigError(f"{path}: {section}.{canonical}: expected a list of spellings")
            for spelling in [canonical, *spellings]:
                out[section][place_key(str(spelling))] = str(canonical)
    unknown = set(data) - set(out)
    if unknown:
        raise ConfigError(f"{path}: {sorted(unknown)[0]}: unknown key")
    return Locations(**out)


def load_quality_rules(directory: Path) -> QualityRules:
    path = directory / "quality.yaml"
    data = _mapping(path)
    tables: dict[str, tuple[Expectation, ...]] = {}
    sources = data.pop("sources", None) or {}
    if not isinstance(sources, dict):
        raise ConfigError(f"{path}: sources: expected a mapping of source name: [audits]")
    for table, entries in data.items():
        tables[table] = _entries(path, table, entries, Expectation)
    audits = {source: _entries(path, f"sources.{source}", entries, SourceAudit) for source, entries in sources.items()}
    return QualityRules(tables=tables, sources=audits)


def _entries(path: Path, where: str, entries: Any, model: type[Rule]) -> tuple[Any, ...]:
    """A list of named rules of ``model``, each validated, names unique."""
    if not isinstance(entries, list):
        raise ConfigError(f"{path}: {where}: expected a list of {'audits' if model is SourceAudit else 'expectations'}")
    parsed = []
    for index, entry in enumerate(entries):
        try:
            parsed.append(model.model_validate(entry))
        except ValidationError as exc:
            raise _first_error(path, exc, f"{where}.{index}") from None
    names = [e.name for e in parsed]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise ConfigError(f"{path}: {where}: {duplicate!r} is defined twice")
    return tuple(parsed)
