"""Session, transaction and statement pooling, queueing and pool limits."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest


def backend_pid(conn: psycopg.Connection) -> int:
    return conn.execute("select pg_backend_pid()").fetchone()[0]


def test_transaction_mode_shares_one_server_between_clients(ecluse_factory):
    ec = ecluse_factory({"pool_mode": "transaction", "default_pool_size": 1})
    with psycopg.connect(ec.dsn(), autocommit=True) as a, \
            psycopg.connect(ec.dsn(), autocommit=True) as b:
        pids = {backend_pid(a), backend_pid(b), backend_pid(a)}
        assert len(pids) == 1


def test_transaction_mode_keeps_server_for_whole_transaction(ecluse_factory):
    ec = ecluse_factory({"pool_mode": "transaction", "default_pool_size": 2})
    with psycopg.connect(ec.dsn()) as a, psycopg.connect(ec.dsn(), autocommit=True) as b:
        first = backend_pid(a)  # opens a transaction: a now holds its server
        assert backend_pid(b) != first
        assert backend_pid(a) == first
        a.commit()


def test_session_mode_pins_server_until_disconnect(ecluse_factory):
    ec = ecluse_factory({"pool_mode": "session", "default_pool_size": 2})
    with psycopg.connect(ec.dsn(), autocommit=True) as a, \
            psycopg.connect(ec.dsn(), autocommit=True) as b:
        pa, pb = backend_pid(a), backend_pid(b)
        assert pa != pb
        assert backend_pid(a) == pa and backend_pid(b) == pb


def test_session_mode_resets_server_between_clients(ecluse_factory):
    ec = ecluse_factory({"pool_mode": "session", "default_pool_size": 1})
    with psycopg.connect(ec.dsn(), autocommit=True) as a:
        pid = backend_pid(a)
        a.execute("set statement_timeout = 1234")
        a.execute("create temp table session_tmp (x int)")
    with psycopg.connect(ec.dsn(), autocommit=True) as b:
        assert backend_pid(b) == pid  # same server, reused
        assert b.execute("show statement_timeout").fetchone() == ("0",)
        with pytest.raises(psycopg.errors.UndefinedTable):
            b.execute("select * from session_tmp")


def test_statement_mode_refuses_transaction_blocks(ecluse_factory):
    ec = ecluse_factory({"pool_mode": "statement", "default_pool_size": 1})
    with psycopg.connect(ec.dsn(), autocommit=True) as a:
        assert a.execute("select 1").fetchone() == (1,)
        # ecluse sends the error and closes right after BEGIN's ReadyForQuery, so the
        # client sees either the error text or the closed connection on its next call.
        with pytest.raises(psycopg.Error,
                           match=r"transaction blocks not allowed|closed the connection"):
            a.execute("begin")
            a.execute("select 1")
    assert "transaction blocks not allowed in statement pooling mode" in ec.log()
    with psycopg.connect(ec.dsn(), autocommit=True) as b:
        assert b.execute("select 2").fetchone() == (2,)
        # The refused transaction did not leak: the shared server is idle.
        assert b.execute("select now() = statement_timestamp()").fetchone() == (True,)


def _second_client_must_wait(ec, dbname: str, user: str) -> bool:
    """Hold one server with a first client; report whether a second one times out."""
    with psycopg.connect(ec.dsn(dbname=dbname, user=user), autocommit=True) as a:
        backend_pid(a)
        try:
            with psycopg.connect(ec.dsn(dbname=dbname, user=user), autocommit=True) as b:
                backend_pid(b)
        except psycopg.OperationalError as exc:
            assert "query_wait_timeout" in str(exc)
            return True
        return False


def test_pool_mode_per_database_and_per_user(ecluse_factory, pg):
    backend = f"host={pg.host} port={pg.port} dbname=ecluse_test"
    ec = ecluse_factory(
        {"pool_mode": "transaction", "default_pool_size": 1, "query_wait_timeout": 1},
        databases={"sess": f"{backend} pool_mode=session", "txn": backend},
        users={"trustuser": "pool_mode=session"},
    )
    assert _second_client_must_wait(ec, "sess", "postgres")  # database says session
    assert not _second_client_must_wait(ec, "txn", "postgres")  # global transaction
    assert _second_client_must_wait(ec, "txn", "trustuser")  # user says session


def test_query_wait_timeout_fails_queued_client(ecluse_factory):
    ec = ecluse_factory({"pool_mode": "session", "default_pool_size": 1,
                         "query_wait_timeout": 1})
    with psycopg.connect(ec.dsn(), autocommit=True) as holder:
        backend_pid(holder)
        start = time.monotonic()
        with pytest.raises(psycopg.OperationalError, match="query_wait_timeout"), \
                psycopg.connect(ec.dsn(), autocommit=True) as waiter:
            waiter.execute("select 1")
        assert time.monotonic() - start < 10
    with psycopg.connect(ec.dsn(), autocommit=True) as later:
        assert later.execute("select 3").fetchone() == (3,)


def test_queued_clients_are_served_in_turn_and_pool_size_holds(ecluse_factory, pg):
    ec = ecluse_factory({"pool_mode": "transaction", "default_pool_size": 2,
                         "application_name_add_host": 0})
    errors: list[BaseException] = []
    peak = []

    def worker(n: int) -> None:
        try:
            with psycopg.connect(ec.dsn(), autocommit=True) as conn:
                for _ in range(5):
                    conn.execute("select pg_sleep(0.02)")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        count = int(pg.psql("select count(*) from pg_stat_activity "
                            "where datname = 'ecluse_test' and backend_type = 'client backend'"))
        peak.append(count)
        time.sleep(0.02)
    for t in threads:
        t.join()
    assert not errors
    assert max(peak) <= 2


def test_min_pool_size_keeps_servers_warm(ecluse_factory, pg):
    backend = f"host={pg.host} port={pg.port} dbname=ecluse_test user=trustuser"
    ecluse_factory({"min_pool_size": 3, "default_pool_size": 5},
                   databases={"warm": backend})
    deadline = time.monotonic() + 10
    count = 0
    while time.monotonic() < deadline:
        count = int(pg.psql("select count(*) from pg_stat_activity where usename = 'trustuser' "
                            "and datname = 'ecluse_test'"))
        if count >= 3:
            break
        time.sleep(0.2)
    assert count == 3


def test_max_db_connections_caps_servers_across_users(ecluse_factory, pg):
    ec = ecluse_factory({"pool_mode": "transaction", "default_pool_size": 5,
                         "max_db_connections": 1, "query_wait_timeout": 5})
    with psycopg.connect(ec.dsn(user="postgres")) as a:
        backend_pid(a)  # holds the only server in an open transaction
        result: list = []

        def other() -> None:
            try:
                with psycopg.connect(ec.dsn(user="trustuser"), autocommit=True) as b:
                    result.append(b.execute("select current_user").fetchone()[0])
            except BaseException as exc:
                result.append(exc)

        t = threading.Thread(target=other)
        t.start()
        time.sleep(1.0)
        assert result == []  # still queued: the database is at its limit
        a.commit()
    t.join(10)
    assert result == ["trustuser"]
