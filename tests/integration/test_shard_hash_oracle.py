"""routing/shardhash.shard_of against PostgreSQL: the shard it computes is the
partition PARTITION BY HASH puts the row in.

For each modulus in MODULI this module's schema holds a bigint and a text
table partitioned by hash with one partition per remainder. Generated values
are inserted (one statement per table, rolled back) and each row's
tableoid tells the partition it landed in, whose name ends in its remainder.
The int8 input rules are checked the same way: PostgreSQL reads generated
spellings as bigint (or refuses them) and parse_int8 must agree.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ecluse.routing.shardhash import parse_int8, shard_of

DB = "ecluse_test"
SCHEMA = "ecluse_shard_oracle"
MODULI = (1, 2, 3, 5, 8, 13)
INT8_MIN, INT8_MAX = -(1 << 63), (1 << 63) - 1
# The ends of int8, and both sides of the 32-bit boundaries, where hashint8
# folds the high half in (with its complement for negative values).
EDGES = [INT8_MIN, INT8_MIN + 1, INT8_MAX - 1, INT8_MAX, 0, 1, -1,
         (1 << 31) - 1, 1 << 31, -(1 << 31), -(1 << 31) - 1,
         (1 << 32) - 1, 1 << 32, (1 << 32) + 1, -(1 << 32), -(1 << 32) - 1, -(1 << 32) + 1]


def setup_sql() -> str:
    lines = [f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE", f"CREATE SCHEMA {SCHEMA}"]
    for kind, column_type in (("b", "bigint"), ("t", "text")):
        for modulus in MODULI:
            table = f"{SCHEMA}.{kind}{modulus}"
            lines.append(f"CREATE TABLE {table} (k {column_type}) PARTITION BY HASH (k)")
            lines += [f"CREATE TABLE {table}_r{r} PARTITION OF {table}"
                      f" FOR VALUES WITH (MODULUS {modulus}, REMAINDER {r})"
                      for r in range(modulus)]
    # PostgreSQL 15 has no pg_input_is_valid: catch the cast's error instead.
    lines.append(f"""CREATE FUNCTION {SCHEMA}.try_int8(s text) RETURNS bigint LANGUAGE plpgsql
        AS $$ BEGIN RETURN s::bigint; EXCEPTION WHEN others THEN RETURN NULL; END $$""")
    return ";\n".join(lines)


@pytest.fixture(scope="module")
def oracle(pg) -> Iterator[psycopg.Connection]:
    conn = psycopg.connect(pg.conninfo(dbname=DB), autocommit=True)
    try:
        conn.execute(setup_sql())
        conn.execute("SET statement_timeout = '10s'")
        yield conn
    finally:
        conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        conn.close()


def partitions_of(conn: psycopg.Connection, table: str, array_type: str,
                  values: list) -> list[tuple[object, int]]:
    """Insert values into table, rolled back; return (value, remainder) per row."""
    with conn.transaction(force_rollback=True):
        rows = conn.execute(
            f"INSERT INTO {SCHEMA}.{table} (k) SELECT unnest(%s::{array_type})"
            " RETURNING k, tableoid::regclass::text", [values]).fetchall()
    assert len(rows) == len(values)
    return [(value, int(partition.rsplit("_r", 1)[1])) for value, partition in rows]


def int8s() -> st.SearchStrategy[int]:
    return st.one_of(
        st.integers(INT8_MIN, INT8_MAX),
        st.integers(-(1 << 33), 1 << 33),
        st.sampled_from(EDGES),
        st.sampled_from(EDGES).flatmap(lambda edge: st.integers(-3, 3).map(
            lambda delta: min(INT8_MAX, max(INT8_MIN, edge + delta)))),
    )


@settings(max_examples=30, deadline=None)
@given(st.lists(int8s(), min_size=1, max_size=300))
@example(EDGES)
def test_bigint_rows_land_in_the_partition_shard_of_names(oracle, values: list[int]) -> None:
    for modulus in MODULI:
        for value, remainder in partitions_of(oracle, f"b{modulus}", "bigint[]", values):
            assert shard_of(str(value), modulus, "pg_bigint_hash") == remainder, (value, modulus)


TEXTS = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
                max_size=40)


@settings(max_examples=30, deadline=None)
@given(st.lists(TEXTS, min_size=1, max_size=200))
# Every length from 0 to 25 bytes crosses lookup3's 12-byte blocks and each
# tail length; multi-byte characters put their bytes across word boundaries.
@example([("x" * n) for n in range(26)] + ["é" * n for n in range(13)] + ["💡", "a💡b"])
def test_text_rows_land_in_the_partition_shard_of_names(oracle, values: list[str]) -> None:
    for modulus in MODULI:
        for value, remainder in partitions_of(oracle, f"t{modulus}", "text[]", values):
            assert shard_of(value, modulus, "pg_text_hash") == remainder, (value, modulus)


SPACES = st.text(st.sampled_from(" \t\n\r\f\v"), max_size=2)


@st.composite
def int8_spellings(draw: st.DrawFn) -> str:
    """Text that int8's input may or may not accept: signs, zeros, spaces, junk."""
    digits = draw(st.one_of(
        st.integers(0, INT8_MAX + 10).map(str),
        st.text(st.sampled_from("0123456789"), min_size=0, max_size=25),
    ))
    sign = draw(st.sampled_from(["", "", "-", "+", "--", "+-"]))
    zeros = "0" * draw(st.integers(0, 3))
    junk = draw(st.sampled_from(["", "", "", " 1", "x", "_0", ".0", "e1", "\u00a0", "\u2003"]))
    spelling = draw(SPACES) + sign + zeros + digits + junk + draw(SPACES)
    return spelling


@settings(max_examples=30, deadline=None)
@given(st.lists(int8_spellings(), min_size=1, max_size=100))
@example([" 42", "+7", "-0", "0042", "\t-9223372036854775808\n", "9223372036854775808",
          "-9223372036854775809", "", " ", "+", "1 2", "0x10", "1_000", "\u00a042",
          "\v7", "\f7\v", " \t\n\r\f\v-7 \t\n\r\f\v", "0" * 30 + "1"])
def test_int8_spellings_read_as_postgresql_reads_them(oracle, spellings: list[str]) -> None:
    rows = oracle.execute(
        f"SELECT s, {SCHEMA}.try_int8(s) FROM unnest(%s::text[]) WITH ORDINALITY AS u(s, n)"
        " ORDER BY n", [spellings]).fetchall()
    for spelling, number in rows:
        if number is None:
            with pytest.raises(ValueError):
                parse_int8(spelling)
            with pytest.raises(ValueError):
                shard_of(spelling, 4, "pg_bigint_hash")
        else:
            assert parse_int8(spelling) == number, spelling
            assert shard_of(spelling, 8, "pg_bigint_hash") == shard_of(str(number), 8,
                                                                     "pg_bigint_hash")
