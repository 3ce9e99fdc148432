"""disable_pqexec: the simple Query protocol refused, as PgBouncer refuses it.

PgBouncer closes a client that sends a Query with FATAL 08P01 "PQexec
disallowed", on the admin console too; the extended protocol keeps working.
ecluse's own simple queries (parameter sync, the control links between
workers) are not client Queries and keep working.
"""

from __future__ import annotations

import asyncio
import subprocess

import asyncpg
import psycopg
import pytest
from wire import RawClient, read_until_closed, split_messages

from ecluse.protocol import frontend as fe

FATAL = (b"E", b"SFATAL\0VFATAL\0C08P01\0MPQexec disallowed\0\0")


def run_psql(conninfo: str, sql: str) -> subprocess.CompletedProcess:
    return subprocess.run(["psql", "-X", "-At", "-d", conninfo, "-c", sql],
                          capture_output=True, text=True, timeout=30)


@pytest.fixture
def pg_conn(pg):
    with psycopg.connect(pg.conninfo(dbname="ecluse_test"), autocommit=True) as conn:
        yield conn


@pytest.fixture(params=["transaction", "session"])
def ec(request, ecluse_factory):
    # Transaction mode: one server for all, so parameters are synced on it.
    return ecluse_factory({"pool_mode": request.param,
                           "default_pool_size": 1 if request.param == "transaction" else 3,
                           "disable_pqexec": 1, "admin_users": "postgres"})


def test_extended_protocol_works_and_a_query_closes_the_client(ec):
    with psycopg.connect(ec.dsn(options="-c TimeZone=Asia/Tokyo"), autocommit=True) as a, \
            psycopg.connect(ec.dsn(), autocommit=True) as b:
        # Parameters ecluse syncs with its own simple queries, on one shared server
        # in transaction mode.
        assert a.execute("select current_setting('TimeZone') where %s", (True,)).fetchone() \
            == ("Asia/Tokyo",)
        assert b.execute("select current_setting('TimeZone') where %s", (True,)).fetchone() \
            != ("Asia/Tokyo",)
        # psycopg sends a query without parameters as a simple Query.
        with pytest.raises(psycopg.OperationalError, match="PQexec disallowed") as info:
            a.execute("select 1")
        assert info.value.sqlstate == "08P01"
        assert a.closed or a.broken
        assert b.execute("select %s::int", (2,)).fetchone() == (2,)
    result = run_psql(ec.dsn(), "select 1")
    assert result.returncode != 0 and "PQexec disallowed" in result.stderr


def test_raw_query_gets_fatal_08p01_then_close_and_its_batch_does_not_run(ec, pg_conn):
    pg_conn.execute("create table if not exists pqexec_t (x int)")
    pg_conn.execute("truncate pqexec_t")
    client = RawClient(ec)
    try:
        client.send(fe.encode_parse("", "insert into pqexec_t values (1)"), fe.encode_bind("", ""),
                    fe.encode_execute(), fe.encode_sync(), fe.encode_query("select 1"))
        assert split_messages(client.buf + read_until_closed(client.sock)) == [FATAL]
    finally:
        client.close()
    assert pg_conn.execute("select count(*) from pqexec_t").fetchone() == (0,)
    # Linked to a server (session mode: after a first request), then a Query.
    client = RawClient(ec)
    try:
        client.send(fe.encode_parse("", "select 1"), fe.encode_bind("", ""),
                    fe.encode_execute(), fe.encode_sync())
        assert client.read_until(b"Z")[-1] == (b"Z", b"I")
        client.send(fe.encode_query("select 2"))
        assert split_messages(client.buf + read_until_closed(client.sock)) == [FATAL]
    finally:
        client.close()


def test_asyncpg_prepared_works_and_its_simple_execute_is_refused(ec):
    async def run() -> None:
        conn = await asyncpg.connect(ec.url())
        try:
            assert await conn.fetchval("select $1::int + 1", 41) == 42
            with pytest.raises((asyncpg.PostgresError, ConnectionError)) as info:
                await conn.execute("select 1")  # no arguments: a simple Query
            assert "PQexec disallowed" in str(info.value)
        finally:
            conn.terminate()

    asyncio.run(run())


def test_the_admin_console_refuses_a_query_too_and_answers_extended(ecluse_factory):
    """As in PgBouncer, whose check comes before its console; with several
    workers the console still asks the others (simple queries over ecluse's own
    control links, not refused)."""
    ec = ecluse_factory({"disable_pqexec": 1, "admin_users": "postgres", "workers": 2})
    result = run_psql(ec.dsn(dbname="pgbouncer"), "SHOW VERSION")
    assert result.returncode != 0 and "PQexec disallowed" in result.stderr
    with psycopg.connect(ec.dsn(dbname="pgbouncer"), autocommit=True) as console:
        cur = console.execute("SHOW CONFIG", prepare=True)
        config = {row[0]: row for row in cur.fetchall()}
        assert config["disable_pqexec"][1:] == ("1", "0", "no")  # restart-only
        pools = console.execute("SHOW POOLS", prepare=True).fetchall()
        assert pools is not None
        with pytest.raises(psycopg.OperationalError, match="PQexec disallowed"):
            console.execute("SHOW VERSION")


def test_off_by_default(ecluse):
    with psycopg.connect(ecluse.dsn(), autocommit=True) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    assert run_psql(ecluse.dsn(), "select 1").stdout.strip() == "1"
