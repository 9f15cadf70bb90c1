"""What the suite prints and records about itself masks addresses of every shape and keys its id
stand-ins, so neither can be read back."""

import hashlib

import pytest

from jobs.runtime.pii import hash_id, mask


@pytest.mark.parametrize(("text", "shown"), [
    ("to ann.lee@example.com.", "to a***@example.com."),
    ("_jane@example.com", "_***@example.com"),  # starts with a non-alphanumeric
    ("élodie.martin@exämple.fr", "é***@exämple.fr"),  # non-ASCII
    ("<!bob#1@mail.example.org>", "<!***@mail.example.org>"),
    ("path/jane.doe@example.com/conf.yaml", "path/j***@example.com/conf.yaml"),
])
def test_every_address_is_masked(text, shown):
    assert mask(text) == shown


def test_an_id_stand_in_is_stable_within_a_command_and_not_a_plain_hash():
    assert hash_id("C000001") == hash_id("C000001") != hash_id("C000002")
    assert hash_id("C000001")[3:] != hashlib.sha256(b"C000001").hexdigest()[:12]
