"""Tests for the libpq-style connection strings of [databases] and [users] entries."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ecluse.config.connstr import BadConnStr, format_connstr, parse_connstr, quote_connstr_value


def test_parses_a_typical_database_line() -> None:
    text = "host=127.0.0.1 port=5432 dbname=x user=y password='it''s' pool_size=5"
    assert parse_connstr(text) == {
        "host": "127.0.0.1",
        "port": "5432",
        "dbname": "x",
        "user": "y",
        "password": "it's",
        "pool_size": "5",
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", {}),
        ("   ", {}),
        ("a=1", {"a": "1"}),
        ("a = 1\tb =2", {"a": "1", "b": "2"}),
        ("a=''", {"a": ""}),
        ("a=", {"a": ""}),
        ("a='x y'", {"a": "x y"}),
        (r"a='it\'s'", {"a": "it's"}),
        (r"a='back\\slash'", {"a": "back\\slash"}),
        # A lone backslash is kept as written, as PgBouncer does.
        (r"a='a\b'", {"a": "a\\b"}),
        ("a=1 a=2", {"a": "2"}),
        ("connect_query='SET x = ''y'''", {"connect_query": "SET x = 'y'"}),
        ("password=p#w;d", {"password": "p#w;d"}),
    ],
)
def test_parse(text: str, expected: dict[str, str]) -> None:
    assert parse_connstr(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("host", "missing '='"),
        ("host 5", "missing '='"),
        ("=5", "expected a key"),
        ("a='unterminated", "unterminated quoted value"),
        ("a='x''", "unterminated quoted value"),
        ("a='x'b", "unexpected 'b'"),
        ("hö=1", "missing '='"),
    ],
)
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(BadConnStr, match=message):
        parse_connstr(text)


def test_error_position_points_at_the_opening_quote() -> None:
    with pytest.raises(BadConnStr) as info:
        parse_connstr("a=1 b='open")
    assert info.value.position == 6
    assert "at character 7" in str(info.value)


@pytest.mark.parametrize(
    ("value", "quoted"),
    [("plain", "plain"), ("", "''"), ("a b", "'a b'"), ("it's", "'it''s'"), ("a\\b", "'a\\\\b'")],
)
def test_quote(value: str, quoted: str) -> None:
    assert quote_connstr_value(value) == quoted


_keys = st.from_regex(r"[A-Za-z0-9_]{1,12}", fullmatch=True)


@given(st.dictionaries(_keys, st.text(max_size=30), max_size=6))
def test_format_then_parse_round_trips(pairs: dict[str, str]) -> None:
    assert parse_connstr(format_connstr(pairs)) == pairs
