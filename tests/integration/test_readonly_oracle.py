"""routing/readonly.py against PostgreSQL: what it sends to a replica, a read-only
transaction accepts.

PostgreSQL refuses writes in ``BEGIN TRANSACTION READ ONLY`` with SQLSTATE
25006 (read_only_sql_transaction), as a hot standby does. Every generated text
that sql_is_read_only calls read-only is run in such a transaction and must not
get 25006. The grammar is tests/unit/routing/test_readonly.py's, over tables
a and b (c1 int, c2 text) and a sequence s in a schema of this module's own.
Texts judged False are not run: some of them would act on the cluster.

A read-only transaction refuses less than a standby does: large-object
writes, txid_current, pg_notify and the like pass in one (PostgreSQL 15) and
fail only during recovery, so this oracle checks row writes, row locks, SELECT
INTO and sequences; the unit tests hold the rest.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from unit.routing.test_readonly import EXPR_MARK, fill, marked_readers, readers, writers

from ecluse.routing.readonly import sql_is_read_only, sql_is_read_only_uncached

DB = "ecluse_test"
SCHEMA = "ecluse_ro_oracle"
READ_ONLY_SQL_TRANSACTION = "25006"

SETUP = f"""
DROP SCHEMA IF EXISTS {SCHEMA} CASCADE;
CREATE SCHEMA {SCHEMA};
CREATE TABLE {SCHEMA}.a (c1 int PRIMARY KEY, c2 text);
CREATE TABLE {SCHEMA}.b (c1 int, c2 text);
INSERT INTO {SCHEMA}.a SELECT i, 'row ' || i FROM generate_series(1, 5) AS i;
INSERT INTO {SCHEMA}.b VALUES (1, 'x'), (2, NULL), (NULL, 'for update'), (3, 'it''s');
CREATE SEQUENCE {SCHEMA}.s;
"""


@pytest.fixture(scope="module")
def oracle(pg) -> Iterator[psycopg.Connection]:
    """One connection to ecluse_test whose unqualified names find this module's tables."""
    conn = psycopg.connect(pg.conninfo(dbname=DB), autocommit=True, prepare_threshold=None)
    try:
        conn.execute(SETUP)
        conn.execute(f"SET search_path = {SCHEMA}, pg_catalog")
        # Belt and braces: even a text that ended the test's transaction could not write.
        conn.execute("SET default_transaction_read_only = on")
        conn.execute("SET statement_timeout = '5s'")
        conn.execute("SET lock_timeout = '1s'")
        yield conn
    finally:
        conn.execute("RESET default_transaction_read_only")
        conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        conn.close()


def run_read_only(conn: psycopg.Connection, sql: str) -> str | None:
    """Run sql in a read-only transaction, rolled back; return its SQLSTATE, None if it ran."""
    conn.execute("BEGIN TRANSACTION READ ONLY")
    try:
        # No parameters: psycopg sends a simple Query, so several statements may run.
        conn.execute(sql)
        return None
    except psycopg.Error as err:
        return err.sqlstate
    finally:
        conn.execute("ROLLBACK")


@st.composite
def sequence_writers(draw: st.DrawFn) -> str:
    """A reader calling nextval or setval, which a read-only transaction refuses.

    Of PRIMARY_FUNCTIONS, these two are the ones PostgreSQL itself refuses in
    a read-only transaction; writers() seldom picks them among the others.
    """
    marked = draw(marked_readers())
    call = draw(st.sampled_from(["nextval('s')", "setval('s', 7)", "PG_CATALOG.NEXTVAL('s')"]))
    if EXPR_MARK in marked:
        return fill(marked.replace(EXPR_MARK, call, 1))
    return f"SELECT {call}::int AS c1, 'x' AS c2 UNION ALL ({fill(marked)})"


@settings(max_examples=100, deadline=None)
@given(st.one_of(readers(), writers(), sequence_writers()))
def test_read_only_verdicts_hold_in_a_read_only_transaction(oracle, sql: str) -> None:
    if sql_is_read_only(sql):
        assert run_read_only(oracle, sql) != READ_ONLY_SQL_TRANSACTION, sql


@settings(max_examples=100, deadline=None)
@given(readers())
def test_generated_readers_run_in_a_read_only_transaction(oracle, sql: str) -> None:
    # The grammar makes valid SQL for these tables, so the test above runs
    # statements to completion rather than stopping at an error. Data
    # exceptions (class 22, e.g. a LIKE pattern ending in a backslash) are the
    # data's fault, not the grammar's.
    assert sql_is_read_only(sql), sql
    sqlstate = run_read_only(oracle, sql)
    assert sqlstate is None or sqlstate.startswith("22"), (sqlstate, sql)


# PostgreSQL refuses each of these in a read-only transaction: the check above
# can fail, and the module says False for them.
REFUSED = [
    "SELECT * FROM a FOR UPDATE",
    "SELECT * FROM a WHERE c1 IN (SELECT c1 FROM b FOR KEY SHARE)",
    "SELECT c1, c2 INTO z FROM a",
    "WITH w AS (DELETE FROM b RETURNING *) SELECT * FROM w",
    "WITH w AS (UPDATE a SET c2 = 'y' RETURNING *) SELECT 1",
    "SELECT nextval('s')",
    "SELECT c1 FROM a WHERE c1 < pg_catalog.setval('s', 5)",
    "EXPLAIN ANALYZE INSERT INTO a VALUES (100, 'x')",
    "SELECT 1; INSERT INTO a VALUES (100, 'x')",
]


@pytest.mark.parametrize("sql", REFUSED)
def test_postgres_refuses_what_is_sent_to_the_primary(oracle, sql: str) -> None:
    assert run_read_only(oracle, sql) == READ_ONLY_SQL_TRANSACTION
    assert not sql_is_read_only_uncached(sql)
