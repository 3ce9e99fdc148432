"""Classifying userlist.txt secrets as PostgreSQL's get_password_type() does."""

from __future__ import annotations

import pytest

from ecluse.auth.secrets import SecretKind, scram_secret_of, secret_kind
from ecluse.protocol.md5 import md5_secret
from ecluse.protocol.scram import scram_secret_from_password

SCRAM_TEXT = scram_secret_from_password("pw", bytes(16), 4096).format()


@pytest.mark.parametrize(("secret", "kind"), [
    ("pw", SecretKind.PLAIN),
    ("", SecretKind.PLAIN),
    (md5_secret("alice", "pw"), SecretKind.MD5),
    ("md5" + "F" * 32, SecretKind.PLAIN),  # upper-case hex is not a hash to PostgreSQL
    ("md5" + "0" * 31, SecretKind.PLAIN),
    (SCRAM_TEXT, SecretKind.SCRAM_SHA_256),
    (SCRAM_TEXT[:-4], SecretKind.PLAIN),  # a broken verifier is a plaintext password
    ("SCRAM-SHA-256$4096:abc", SecretKind.PLAIN),
])
def test_secret_kind(secret: str, kind: SecretKind) -> None:
    assert secret_kind(secret) is kind


def test_scram_secret_of() -> None:
    parsed = scram_secret_of(SCRAM_TEXT)
    assert parsed is not None
    assert parsed.format() == SCRAM_TEXT
    assert scram_secret_of("pw") is None
    assert scram_secret_of(md5_secret("a", "b")) is None
