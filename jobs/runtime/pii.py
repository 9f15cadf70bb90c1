"""Masking personal data in what the suite prints and records about itself (not in the tables
whose job is to hold it): emails keep their first letter and domain, ids become short hashes."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from typing import Any

# An address's local part is anything up to the @ that is not a space or a delimiter (RFC 5322
# allows _, !, #, ~ ... and SMTPUTF8 any letter); the domain is dotted labels of word characters.
_LOCAL = r"[^\s@<>()\[\]{}\"',;:=/\\|]"
EMAIL = re.compile(rf"(?<!{_LOCAL})({_LOCAL}){_LOCAL}*@([\w-]+(?:\.[\w-]+)+)")
_ID_KEY = secrets.token_bytes(32)  # per process: a shown id cannot be looked up in a table of hashes
PERSONAL_FIELDS = ("first_name", "last_name", "birth_date", "phone")


_SECRETS: set[str] = set()


def register_secret(value: str) -> None:
    """A credential this process read: :func:`mask` scrubs it from any text from now on."""
    if len(value) >= 4:
        _SECRETS.add(value)


def mask(text: str) -> str:
    """``text`` fit to print, log or store: every credential the process read as ``***``, every
    email address as ``j***@example.com``."""
    for secret in sorted(_SECRETS, key=len, reverse=True):
        text = text.replace(secret, "***")
    return EMAIL.sub(lambda m: f"{m.group(1)}***@{m.group(2)}", text)


def hash_id(value: str) -> str:
    """A short stand-in for an id, the same for the same id within one command, keyed by a
    random per-process secret so sequential ids cannot be recovered by hashing candidates."""
    return "id:" + hmac.new(_ID_KEY, value.encode(), hashlib.sha256).hexdigest()[:12]


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
