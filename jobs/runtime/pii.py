"""Masking personal data in what the suite prints and records about itself (not in the tables
whose job is to hold it): emails keep their first letter and domain, ids become short hashes."""

from __future__ import annotations

import hashlib
import re
from typing import Any

EMAIL = re.compile(r"\b([A-Za-z0-9])[A-Za-z0-9._%+-]*@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)\b")
PERSONAL_FIELDS = ("first_name", "last_name", "birth_date", "phone")


def mask(text: str) -> str:
    """Every email address in ``text`` as ``j***@example.com``."""
    return EMAIL.sub(lambda m: f"{m.group(1)}***@{m.group(2)}", text)


def hash_id(value: str) -> str:
    return "id:" + hashlib.sha256(value.encode()).hexdigest()[:12]


def masked_row(row: dict[str, Any]) -> dict[str, Any]:
    """A change row fit for a terminal or a log: id hashed, email masked, names dropped."""
    shown: dict[str, Any] = {}
    for name, value in row.items():
        if value is None or name in PERSONAL_FIELDS:
            shown[name] = None if value is None else "***"
        elif name == "customer_id":
            shown[name] = hash_id(str(value))
        elif isinstance(value, str):
            shown[name] = mask(value)
        else:
            shown[name] = value
    return shown
