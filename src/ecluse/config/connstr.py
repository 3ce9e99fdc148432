"""Parse and format the libpq-style ``key=value`` strings of [databases] and [users] entries.

Grammar: pairs ``key = value`` separated by whitespace; a key is letters,
digits and underscores; a value is either a run of non-blank characters or a
single-quoted string. Inside quotes, ``''`` and ``\\'`` stand for a quote and
``\\\\`` for a backslash (PgBouncer's and libpq's escapes). Any other backslash
is kept as written: PgBouncer does not treat it specially, so a password such
as ``'a\\b'`` means the same here as there.

Errors are BadConnStr (a ValueError) with a position; the loader adds the file,
line and database name.
"""

from __future__ import annotations

from collections.abc import Mapping

_BLANK = " \t\r\n\f\v"


class BadConnStr(ValueError):
    """A connection string is malformed; ``position`` is the offending character index."""

    def __init__(self, message: str, position: int):
        super().__init__(f"{message} at character {position + 1}")
        self.position = position


def parse_connstr(text: str) -> dict[str, str]:
    """Return the pairs of ``text`` in order; a repeated key keeps its last value.

    Raises BadConnStr for a missing ``=``, a bad key or an unterminated quote.
    """
    pairs: dict[str, str] = {}
    pos = _skip_blanks(text, 0)
    while pos < len(text):
        key, pos = _read_key(text, pos)
        pos = _skip_blanks(text, pos)
        if pos >= len(text) or text[pos] != "=":
            raise BadConnStr(f"missing '=' after {key!r}", pos)
        pos = _skip_blanks(text, pos + 1)
        value, pos = _read_value(text, pos)
        pairs[key] = value
        if pos < len(text) and text[pos] not in _BLANK:
            raise BadConnStr(f"unexpected {text[pos]!r} after the value of {key!r}", pos)
        pos = _skip_blanks(text, pos)
    return pairs


def quote_connstr_value(value: str) -> str:
    """Return ``value`` quoted if it needs to be, so that parse_connstr reads it back."""
    if value and not any(ch in _BLANK or ch in "'\\" for ch in value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def format_connstr(pairs: Mapping[str, str]) -> str:
    """Return a connection string for ``pairs``; keys must be valid connstr keys."""
    return " ".join(f"{key}={quote_connstr_value(value)}" for key, value in pairs.items())


def _skip_blanks(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _BLANK:
        pos += 1
    return pos


def _is_key_char(ch: str) -> bool:
    return ch == "_" or (ch.isascii() and ch.isalnum())


def _read_key(text: str, pos: int) -> tuple[str, int]:
    start = pos
    while pos < len(text) and _is_key_char(text[pos]):
        pos += 1
    if pos == start:
        raise BadConnStr(f"expected a key, got {text[pos]!r}", pos)
    return text[start:pos], pos


def _read_value(text: str, pos: int) -> tuple[str, int]:
    if pos < len(text) and text[pos] == "'":
        return _read_quoted(text, pos)
    start = pos
    while pos < len(text) and text[pos] not in _BLANK:
        pos += 1
    return text[start:pos], pos


def _read_quoted(text: str, pos: int) -> tuple[str, int]:
    start = pos
    pos += 1
    out: list[str] = []
    while pos < len(text):
        ch = text[pos]
        nxt = text[pos + 1] if pos + 1 < len(text) else ""
        if ch == "'":
            if nxt != "'":
                return "".join(out), pos + 1
            out.append("'")
            pos += 2
        elif ch == "\\" and nxt in ("'", "\\"):
            out.append(nxt)
            pos += 2
        else:
            out.append(ch)
            pos += 1
    raise BadConnStr("unterminated quoted value", start)
