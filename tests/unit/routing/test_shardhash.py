"""routing/shardhash.py without a server: values PostgreSQL 15 put in known
partitions, the shard's range and its independence from how an integer is
spelled, and what int8 input refuses. tests/integration/test_shard_hash_oracle.py
checks shard_of against PostgreSQL itself over generated values.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ecluse.routing.shardhash import HASH_FUNCTIONS, parse_int8, shard_of

INT8_MIN, INT8_MAX = -(1 << 63), (1 << 63) - 1
SQL_SPACE = " \t\n\r\f\v"
# Any character a PostgreSQL text may hold.
TEXT_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\0")

# Where PostgreSQL 15 put these rows in a table PARTITION BY HASH with
# MODULUS 8 partitions (read back from tableoid).
PG_MODULUS_8 = [
    ("0", "pg_bigint_hash", 0), ("1", "pg_bigint_hash", 0), ("4294967296", "pg_bigint_hash", 0),
    ("42", "pg_bigint_hash", 2), ("-1", "pg_bigint_hash", 5),
    ("9223372036854775807", "pg_bigint_hash", 6), ("-9223372036854775808", "pg_bigint_hash", 7),
    ("0123456789abcdef", "pg_text_hash", 2), ("hello world!", "pg_text_hash", 4),
    ("abc", "pg_text_hash", 5), ("", "pg_text_hash", 6), ("a", "pg_text_hash", 6),
    ("Zürich", "pg_text_hash", 6),
]


@pytest.mark.parametrize(("value", "function", "remainder"), PG_MODULUS_8)
def test_shard_of_agrees_with_postgresql(value: str, function: str, remainder: int) -> None:
    assert shard_of(value, 8, function) == remainder


@given(st.integers(INT8_MIN, INT8_MAX), st.integers(1, 100), st.sampled_from(SQL_SPACE),
       st.integers(0, 3))
def test_bigint_shard_is_in_range_and_ignores_spelling(
        value: int, shards: int, space: str, zeros: int) -> None:
    shard = shard_of(str(value), shards, "pg_bigint_hash")
    assert 0 <= shard < shards
    sign = "-" if value < 0 else "+"
    spelled = f"{space}{sign}{'0' * zeros}{abs(value)}{space}"
    assert shard_of(spelled, shards, "pg_bigint_hash") == shard
    # MODULUS 1 has one partition; any modulus divides what a multiple of it gives.
    assert shard_of(str(value), 1, "pg_bigint_hash") == 0
    assert shard_of(str(value), shards * 3, "pg_bigint_hash") % shards == shard


@given(st.text(TEXT_CHARS), st.integers(1, 100))
def test_text_shard_is_in_range(value: str, shards: int) -> None:
    shard = shard_of(value, shards, "pg_text_hash")
    assert 0 <= shard < shards
    assert shard_of(value, shards * 2, "pg_text_hash") % shards == shard


@pytest.mark.parametrize("value", [
    "", " ", "+", "-", "1.0", "1e3", "0x10", "1_000", "--1", "+-1", "1 2", "\u00a01", "\u0661",
    "9223372036854775808", "-9223372036854775809", "1" * 5000, "4\0", "x",
])
def test_shard_of_refuses_what_int8_input_refuses(value: str) -> None:
    with pytest.raises(ValueError):
        shard_of(value, 4, "pg_bigint_hash")
    with pytest.raises(ValueError):
        parse_int8(value)


def test_shard_of_refuses_bad_arguments() -> None:
    assert HASH_FUNCTIONS == ("pg_bigint_hash", "pg_text_hash")
    for shards in (0, -1):
        with pytest.raises(ValueError):
            shard_of("1", shards, "pg_bigint_hash")
    for function in ("", "pg_int_hash", "PG_BIGINT_HASH", "hashint8"):
        with pytest.raises(ValueError):
            shard_of("1", 4, function)
    for text in ("a\0b", "\ud800"):
        with pytest.raises(ValueError):
            shard_of(text, 4, "pg_text_hash")
    assert parse_int8("0" * 5000 + "7") == 7
