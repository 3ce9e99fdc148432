"""Parsers for single configuration values: integers, durations, booleans, enums, lists, modes.

Each parser takes the stripped text of one value and returns the typed value,
or raises BadValue whose message says what was expected ("a non-negative
integer"). The caller knows the file, line and key and builds the ConfigError;
this module knows nothing about files.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Callable
from typing import TypeVar

E = TypeVar("E", bound=enum.Enum)

# A plain number means seconds, as in PgBouncer; the suffixes are ecluse's
# convenience and match PostgreSQL's GUC time units.
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-z]*)", re.IGNORECASE)
_UNIT_SECONDS = {"": 1.0, "ms": 0.001, "s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}

_TRUE = frozenset({"1", "yes", "on", "true"})
_FALSE = frozenset({"0", "no", "off", "false"})


class BadValue(ValueError):
    """A value does not have the expected form; str() says what was expected."""

    def __init__(self, expected: str):
        super().__init__(expected)
        self.expected = expected


def parse_int(text: str, *, minimum: int = 0, maximum: int | None = None) -> int:
    """Return ``text`` as a decimal integer within [minimum, maximum].

    Only plain digits are accepted: no sign, underscores or exponent, so a typo
    such as "1e3" or "-1" is reported rather than guessed at.
    """
    if maximum is not None:
        expected = f"an integer from {minimum} to {maximum}"
    elif minimum == 0:
        expected = "a non-negative integer"
    elif minimum == 1:
        expected = "a positive integer"
    else:
        expected = f"an integer of at least {minimum}"
    if not text.isascii() or not text.isdigit():
        raise BadValue(expected)
    value = int(text)
    if value < minimum or (maximum is not None and value > maximum):
        raise BadValue(expected)
    return value


def int_parser(*, minimum: int = 0, maximum: int | None = None) -> Callable[[str], int]:
    """Return a parse_int with its bounds bound."""

    def parse(text: str) -> int:
        return parse_int(text, minimum=minimum, maximum=maximum)

    return parse


def parse_seconds(text: str) -> float:
    """Return a non-negative duration in seconds: "30", "1.5", "250ms", "5 min", "2h", "1d"."""
    match = _DURATION.fullmatch(text)
    factor = _UNIT_SECONDS.get(match.group(2).lower()) if match else None
    if match is None or factor is None:
        raise BadValue("a duration in seconds, optionally with a unit (ms, s, min, h, d)")
    value = float(match.group(1)) * factor
    if not math.isfinite(value):
        raise BadValue("a finite duration")
    return value


def parse_bool(text: str) -> bool:
    """Return a boolean from 1/0, yes/no, on/off or true/false, in any case."""
    lowered = text.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise BadValue("a boolean (1/0, yes/no, on/off, true/false)")


def enum_parser(enum_cls: type[E]) -> Callable[[str], E]:
    """Return a parser for the string values of ``enum_cls``, case-insensitively."""
    by_value = {str(member.value).lower(): member for member in enum_cls}
    expected = "one of " + ", ".join(str(member.value) for member in enum_cls)

    def parse(text: str) -> E:
        try:
            return by_value[text.lower()]
        except KeyError:
            raise BadValue(expected) from None

    return parse


def parse_list(text: str) -> tuple[str, ...]:
    """Return the comma-separated items of ``text``, stripped, without empty items."""
    return tuple(item for item in (part.strip() for part in text.split(",")) if item)


def parse_octal_mode(text: str) -> int:
    """Return a file mode written in octal: "0777", "777" or "0o777"."""
    digits = text[2:] if text[:2].lower() == "0o" else text
    if not digits or any(ch not in "01234567" for ch in digits) or int(digits, 8) > 0o7777:
        raise BadValue("an octal file mode such as 0777")
    return int(digits, 8)


def parse_str(text: str) -> str:
    """Return the text unchanged (the ini reader has already stripped it)."""
    return text


def parse_optional_str(text: str) -> str | None:
    """Return the text, or None when it is empty (PgBouncer's "not set")."""
    return text or None


# PgBouncer's *_tls_protocols keywords; "legacy" and "all" both allow every version.
_TLS_VERSIONS = ("tlsv1.0", "tlsv1.1", "tlsv1.2", "tlsv1.3")
_TLS_KEYWORDS = {"secure": ("tlsv1.2", "tlsv1.3"), "all": _TLS_VERSIONS,
                 "legacy": _TLS_VERSIONS}


def parse_tls_protocols(text: str) -> tuple[str, ...]:
    """Return the TLS versions named by "secure", "all", "legacy" or a list like "tlsv1.2,tlsv1.3".

    The result is sorted oldest first. "tlsv1" is accepted for "tlsv1.0", as
    PgBouncer does.
    """
    expected = ('"secure", "all", "legacy" or a comma-separated list of tlsv1.0, tlsv1.1, '
                'tlsv1.2, tlsv1.3')
    lowered = text.strip().lower()
    if lowered in _TLS_KEYWORDS:
        return _TLS_KEYWORDS[lowered]
    found: set[str] = set()
    for item in parse_list(lowered.replace(":", ",")):
        name = "tlsv1.0" if item == "tlsv1" else item
        if name in _TLS_KEYWORDS:
            found.update(_TLS_KEYWORDS[name])
        elif name in _TLS_VERSIONS:
            found.add(name)
        else:
            raise BadValue(expected)
    if not found:
        raise BadValue(expected)
    return tuple(v for v in _TLS_VERSIONS if v in found)
