"""Classify the secrets of userlist.txt: plaintext, md5 hash or SCRAM verifier.

Rules:
1. Classification follows PostgreSQL's get_password_type(): "md5" + exactly
   32 lowercase hex digits is an md5 hash, a string that parses as a
   SCRAM-SHA-256 verifier is one, and anything else (a malformed verifier
   included) is a plaintext password.
2. Pure functions: no I/O, no config import.
"""

from __future__ import annotations

import enum

from ecluse.protocol.md5 import is_md5_secret
from ecluse.protocol.scram import ScramSecret


class SecretKind(enum.Enum):
    """What a stored secret is, named after PostgreSQL's password types."""

    PLAIN = "plain"
    MD5 = "md5"
    SCRAM_SHA_256 = "scram-sha-256"


def secret_kind(secret: str) -> SecretKind:
    """Return whether secret is a plaintext password, an md5 hash or a SCRAM verifier."""
    if is_md5_secret(secret):
        return SecretKind.MD5
    if scram_secret_of(secret) is not None:
        return SecretKind.SCRAM_SHA_256
    return SecretKind.PLAIN


def scram_secret_of(secret: str) -> ScramSecret | None:
    """Return the parsed SCRAM verifier, or None if secret is not one."""
    try:
        return ScramSecret.parse(secret)
    except ValueError:
        return None
