"""Parse PgBouncer's auth_file (userlist.txt): user names and their secrets.

Each line is ``"user" "secret"``; inside the quotes ``""`` is a literal quote.
Blank lines and lines starting with ``;`` or ``#`` are ignored. The secret is
kept as written: a plain password, ``md5`` + 32 hex digits, or a SCRAM verifier
``SCRAM-SHA-256$<iterations>:<salt>$<stored key>:<server key>``; auth/ decides
what it is. Like PgBouncer, anything after the second quoted field is ignored
(old pg_auth files carried more columns), and a repeated user keeps its last
secret.
"""

from __future__ import annotations

from collections.abc import Mapping

from ecluse.errors import ConfigError


def read_userlist(path: str) -> dict[str, str]:
    """Read the auth file at ``path`` and return user -> secret.

    Raises OSError if the file cannot be read, ConfigError for a bad line.
    """
    with open(path, encoding="utf-8-sig") as f:
        text = f.read()
    return parse_userlist(text, path)


def parse_userlist(text: str, path: str = "<string>") -> dict[str, str]:
    """Parse userlist ``text``; ``path`` is used in error messages.

    Raises ConfigError naming the file and line of a malformed line.
    """
    secrets: dict[str, str] = {}
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line or line[0] in ";#":
            continue
        try:
            user, pos = _read_quoted(line, 0)
            pos = _skip_blanks(line, pos)
            secret, _ = _read_quoted(line, pos)
        except ValueError as exc:
            raise ConfigError(f"auth file: {exc}", path=path, line=number) from None
        if not user:
            raise ConfigError("auth file: empty user name", path=path, line=number)
        secrets[user] = secret
    return secrets


def format_userlist(secrets: Mapping[str, str]) -> str:
    """Return userlist text for ``secrets``; names and secrets must not contain newlines."""
    return "".join(f"{_quote(user)} {_quote(secret)}\n" for user, secret in secrets.items())


def _quote(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def _skip_blanks(line: str, pos: int) -> int:
    while pos < len(line) and line[pos] in " \t":
        pos += 1
    return pos


def _read_quoted(line: str, pos: int) -> tuple[str, int]:
    """Return the double-quoted field starting at ``pos`` and the index after it."""
    if pos >= len(line) or line[pos] != '"':
        raise ValueError('expected \'"user" "secret"\'')
    out: list[str] = []
    pos += 1
    while pos < len(line):
        ch = line[pos]
        if ch == '"':
            if line[pos + 1 : pos + 2] != '"':
                return "".join(out), pos + 1
            pos += 1  # a doubled quote stands for one quote
        out.append(ch)
        pos += 1
    raise ValueError("unterminated quoted field")
