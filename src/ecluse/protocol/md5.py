"""PostgreSQL's md5 password scheme: the stored secret and the salted response.

PostgreSQL stores ``"md5" + hex(md5(password + user))`` and, for a 4-byte salt
sent in AuthenticationMD5Password, expects the client to answer
``"md5" + hex(md5(hex(md5(password + user)) + salt))``. The inner hash is all a
client needs, so a pooler holding only the stored secret can still log in
(PgBouncer does this with md5 secrets in userlist.txt).

Rules:
1. Responses are compared in constant time (hmac.compare_digest).
2. Pure functions on bytes and strings: no I/O, no config, nothing from ecluse
   but errors.
"""

from __future__ import annotations

import hashlib
import hmac

MD5_PREFIX = "md5"
_HEX_DIGITS = frozenset("0123456789abcdef")


def is_md5_secret(text: str) -> bool:
    """Say whether text is a stored md5 secret: "md5" + 32 lowercase hex digits.

    The same test as PostgreSQL's isMD5(): upper-case hex is not a hash, so
    such a string is taken as a plaintext password.
    """
    return (
        len(text) == 35
        and text.startswith(MD5_PREFIX)
        and all(c in _HEX_DIGITS for c in text[3:])
    )


def _to_bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


def md5_secret(user: str | bytes, password: str | bytes) -> str:
    """Return the secret PostgreSQL stores for password: "md5" + md5(password + user).

    :param user: the role name (the salt of the stored hash).
    :param password: the plaintext password, as text or as the raw bytes a client sent.
    """
    digest = hashlib.md5(_to_bytes(password) + _to_bytes(user), usedforsecurity=False)
    return MD5_PREFIX + digest.hexdigest()


def md5_response(user: str | bytes, password_or_secret: str | bytes, salt: bytes) -> str:
    """Return the "md5..." string a client sends in reply to AuthenticationMD5Password.

    A value that is already a stored md5 secret is used as the inner hash
    (PgBouncer's way to log in with a hash only), anything else is hashed
    first as a plaintext password, exactly as PostgreSQL decides.

    :param salt: the 4 bytes of the server's request.
    """
    text = (
        password_or_secret
        if isinstance(password_or_secret, str)
        else password_or_secret.decode("utf-8", "surrogateescape")
    )
    inner = text if is_md5_secret(text) else md5_secret(user, password_or_secret)
    outer = hashlib.md5(inner[3:].encode("ascii") + salt, usedforsecurity=False)
    return MD5_PREFIX + outer.hexdigest()


def verify_md5_response(secret: str, user: str | bytes, salt: bytes, response: bytes) -> bool:
    """Check a client's md5 response against a stored secret, in constant time.

    :param secret: the stored md5 secret, or a plaintext password.
    :param response: the client's PasswordMessage content, NUL removed.
    """
    expected = md5_response(user, secret, salt).encode("ascii")
    return hmac.compare_digest(expected, bytes(response))
