"""Tests for the single-value parsers of ecluse.config.values."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ecluse.config.model import AuthType, PoolMode
from ecluse.config.values import (
    BadValue,
    enum_parser,
    parse_bool,
    parse_int,
    parse_list,
    parse_octal_mode,
    parse_optional_str,
    parse_seconds,
)


@pytest.mark.parametrize(("text", "value"), [("0", 0), ("7", 7), ("2147483647", 2147483647)])
def test_int_accepts_plain_digits(text: str, value: int) -> None:
    assert parse_int(text) == value


@pytest.mark.parametrize("text", ["", "abc", "-1", "+1", "1.5", "1e3", "1_000", "١٢"])
def test_int_rejects_non_integers_and_negatives(text: str) -> None:
    with pytest.raises(BadValue) as info:
        parse_int(text)
    assert info.value.expected == "a non-negative integer"


def test_int_bounds_are_named_in_the_message() -> None:
    with pytest.raises(BadValue, match="an integer from 1 to 65535"):
        parse_int("70000", minimum=1, maximum=65535)
    with pytest.raises(BadValue, match="a positive integer"):
        parse_int("0", minimum=1)


@given(st.integers(min_value=0, max_value=10**12))
def test_int_round_trips(value: int) -> None:
    assert parse_int(str(value)) == value


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30", 30.0),
        ("0", 0.0),
        ("1.5", 1.5),
        (".5", 0.5),
        ("250ms", 0.25),
        ("10s", 10.0),
        ("5 min", 300.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("3MIN", 180.0),
    ],
)
def test_seconds(text: str, seconds: float) -> None:
    assert parse_seconds(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "abc", "-1", "10 weeks", "1m", "s", "1e400", "inf", "nan"])
def test_seconds_rejects(text: str) -> None:
    with pytest.raises(BadValue, match="duration"):
        parse_seconds(text)


@pytest.mark.parametrize("text", ["1", "yes", "YES", "on", "true", "True"])
def test_bool_true(text: str) -> None:
    assert parse_bool(text) is True


@pytest.mark.parametrize("text", ["0", "no", "Off", "false", "FALSE"])
def test_bool_false(text: str) -> None:
    assert parse_bool(text) is False


@pytest.mark.parametrize("text", ["", "2", "y", "enabled"])
def test_bool_rejects(text: str) -> None:
    with pytest.raises(BadValue, match="boolean"):
        parse_bool(text)


def test_enum_is_case_insensitive_and_lists_allowed_values() -> None:
    parse = enum_parser(PoolMode)
    assert parse("Transaction") is PoolMode.TRANSACTION
    with pytest.raises(BadValue) as info:
        parse("sessions")
    assert info.value.expected == "one of session, transaction, statement"


def test_auth_type_parses_every_member() -> None:
    parse = enum_parser(AuthType)
    assert [parse(member.value) for member in AuthType] == list(AuthType)
    assert parse("scram-sha-256") is AuthType.SCRAM_SHA_256


@pytest.mark.parametrize(
    ("text", "items"),
    [("", ()), ("a", ("a",)), (" a , b,,c , ", ("a", "b", "c")), (",", ())],
)
def test_list(text: str, items: tuple[str, ...]) -> None:
    assert parse_list(text) == items


@pytest.mark.parametrize(("text", "mode"), [("0777", 0o777), ("777", 0o777), ("0o700", 0o700)])
def test_octal_mode(text: str, mode: int) -> None:
    assert parse_octal_mode(text) == mode


@pytest.mark.parametrize("text", ["", "0o", "0778", "abc", "17777", "-1"])
def test_octal_mode_rejects(text: str) -> None:
    with pytest.raises(BadValue, match="octal"):
        parse_octal_mode(text)


def test_optional_str_maps_empty_to_none() -> None:
    assert parse_optional_str("") is None
    assert parse_optional_str("/var/run/x.pid") == "/var/run/x.pid"
