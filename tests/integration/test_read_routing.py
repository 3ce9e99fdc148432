"""Read/write split (read_db, routing/readwrite.py) against a real primary and a
real hot standby streaming from it, with psycopg, asyncpg and raw wire
messages: on_standby() in each request says where it ran (it reads
pg_last_wal_replay_lsn(), NULL on the primary; pg_is_in_recovery() itself is
always sent to the primary, routing/readonly.py).
"""

from __future__ import annotations

import asyncio
import time

import asyncpg
import psycopg
import pytest
from wire import queries_apart

from ecluse.devcluster import find_free_port
from integration.test_admin_console import ADMIN_SETTINGS, admin_conn
from integration.test_host_lists import primary_and_standby, rows  # noqa: F401 - fixture
from integration.test_reload import rewrite

SETTINGS = {**ADMIN_SETTINGS, "pool_mode": "transaction", "default_pool_size": 4}


def routed(primary, read_host: str, read_port: int) -> dict[str, str]:
    return {"app": f"host={primary.socket_dir} port={primary.port} dbname=postgres "
                   "read_db=app_ro",
            "app_ro": f"host={read_host} port={read_port} dbname=postgres"}


@pytest.fixture(scope="module")
def clusters(primary_and_standby):  # noqa: F811 - the imported fixture
    """The primary and standby, with what the tests read and write replayed."""
    primary, standby = primary_and_standby
    primary.psql("create table if not exists routed (n int); "
                 "create sequence if not exists routed_seq; "
                 "create or replace function on_standby() returns bool language sql "
                 "as 'select pg_last_wal_replay_lsn() is not null'")
    deadline = time.monotonic() + 30
    while standby.psql("select to_regprocedure('on_standby()') is not null") != "t":
        assert time.monotonic() < deadline, "the standby never replayed the function"
        time.sleep(0.1)
    return primary, standby


@pytest.fixture
def ec(ecluse_factory, clusters):
    primary, standby = clusters
    return ecluse_factory(SETTINGS, routed(primary, standby.socket_dir, primary.port))


def where(conn, sql: str, params=None):
    return conn.execute(sql, params).fetchone()


def test_reads_go_to_the_standby_and_everything_else_to_the_primary(ec):
    with psycopg.connect(ec.dsn(dbname="app"), autocommit=True) as conn:
        assert where(conn, "select on_standby()") == (True,)
        assert where(conn, "select on_standby() from routed limit 1") in (None, (True,))
        assert where(conn, "with r as (select 1) select on_standby() from r") == (True,)
        # Writes, and reads that must run on the primary.
        assert where(conn, "insert into routed values (1) returning on_standby()") \
            == (False,)
        assert where(conn, "select on_standby() from routed for update") == (False,)
        assert where(conn, "select on_standby(), nextval('routed_seq')")[0] is False
        # Several statements, one a write: all on the primary (the first result shows).
        assert where(conn, "select on_standby(); "
                           "insert into routed values (2)") == (False,)
        # A transaction block runs on the primary from its BEGIN on.
        with conn.transaction():
            assert where(conn, "select on_standby()") == (False,)
        # Parameters (the extended protocol, unnamed statement).
        assert where(conn, "select on_standby(), %s::int", (5,)) == (True, 5)
        assert where(conn, "insert into routed values (%s) returning on_standby()",
                     (3,)) == (False,)
        # Named prepared statements, prepared by psycopg on the fly.
        for _ in range(3):
            assert conn.execute("select on_standby(), %s::int", (7,),
                                prepare=True).fetchone() == (True, 7)
            assert conn.execute("insert into routed values (%s) returning on_standby()",
                                (4,), prepare=True).fetchone() == (False,)
    with admin_conn(ec) as console:
        pools = {r["database"]: r for r in rows(console, "SHOW POOLS")}
        assert pools["app_ro"]["sv_idle"] + pools["app_ro"]["sv_active"] >= 1
        assert pools["app"]["sv_idle"] + pools["app"]["sv_active"] >= 1


def test_asyncpg_named_statements_are_routed_by_their_text(ec):
    async def run() -> None:
        conn = await asyncpg.connect(ec.url(dbname="app"))
        try:
            for _ in range(3):  # asyncpg prepares each statement under a name
                assert await conn.fetchval("select on_standby()") is True
                assert await conn.fetchval(
                    "insert into routed values ($1) returning on_standby()", 9) is False
            async with conn.transaction():
                assert await conn.fetchval("select on_standby()") is False
        finally:
            await conn.close()
    asyncio.run(run())


def test_a_write_pipelined_behind_a_read_waits_for_it_and_goes_to_the_primary(ec):
    # The read is on the standby for half a second when the write arrives.
    first, second = queries_apart(ec, "app", "select on_standby() from pg_sleep(0.5)",
                                  "insert into routed values (8) returning on_standby()", 0.2)
    assert [body for t, body in first if t == b"D"] == [b"\0\x01\0\0\0\x01t"]
    assert [body for t, body in second if t == b"D"] == [b"\0\x01\0\0\0\x01f"]
    assert not [t for t, _ in first + second if t == b"E"]


def test_a_read_pool_that_cannot_serve_leaves_the_reads_to_the_primary(ecluse_factory,
                                                                       clusters):
    primary, _standby = clusters
    dead = find_free_port()  # nothing listens there
    ec = ecluse_factory({**SETTINGS, "server_login_retry": 30},
                        routed(primary, "127.0.0.1", dead))
    with psycopg.connect(ec.dsn(dbname="app"), autocommit=True) as conn:
        # Queued on the read pool, whose login fails: served by the primary instead.
        assert where(conn, "select on_standby()") == (False,)
        # Then, while the read pool is failing, reads go to the primary at once.
        assert where(conn, "select on_standby()") == (False,)
    assert "request sent to the primary" in ec.log()


def test_read_db_must_name_another_listed_database(ecluse_factory, clusters):
    primary, _standby = clusters
    ec = ecluse_factory(SETTINGS, {"app": f"host={primary.socket_dir} port={primary.port} "
                                          "read_db=nowhere"}, start=False)
    with pytest.raises(RuntimeError, match="read_db 'nowhere' is not a database"):
        ec.start()


def test_reload_starts_and_stops_the_split_for_connected_clients(ec):
    with psycopg.connect(ec.dsn(dbname="app"), autocommit=True) as conn, \
            admin_conn(ec) as console:
        assert where(conn, "select on_standby()") == (True,)
        rewrite(ec, (r" read_db=app_ro$", ""))
        console.execute("RELOAD", prepare=False)
        # The same client's next read, without read_db: the primary.
        assert where(conn, "select on_standby()") == (False,)
        # PAUSE of the read database alone also leaves reads to the primary.
        rewrite(ec, (r"^(app = .*dbname=postgres)$", r"\1 read_db=app_ro"))
        console.execute("RELOAD", prepare=False)
        assert where(conn, "select on_standby()") == (True,)
        console.execute("PAUSE app_ro", prepare=False)
        try:
            assert where(conn, "select on_standby()") == (False,)
        finally:
            console.execute("RESUME app_ro", prepare=False)
        assert where(conn, "select on_standby()") == (True,)


def test_primary_after_write_keeps_a_writers_reads_on_the_primary(ecluse_factory, clusters):
    primary, standby = clusters
    ec = ecluse_factory({**SETTINGS, "primary_after_write": 1.5},
                        routed(primary, standby.socket_dir, primary.port))
    with psycopg.connect(ec.dsn(dbname="app"), autocommit=True) as writer, \
            psycopg.connect(ec.dsn(dbname="app"), autocommit=True) as reader:
        assert where(writer, "select on_standby()") == (True,)  # no write yet
        writer.execute("insert into routed values (10)")
        # The writer's reads follow its write; another client's do not.
        assert where(writer, "select on_standby()") == (False,)
        assert where(reader, "select on_standby()") == (True,)
        time.sleep(1.6)
        assert where(writer, "select on_standby()") == (True,)
