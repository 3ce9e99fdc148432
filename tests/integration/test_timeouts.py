"""PgBouncer's timeouts that the janitor enforces, against a real PostgreSQL with real
clients: transaction_timeout, query_wait_notify, server_fast_close and
autodb_idle_timeout. Short timeouts, generous waits: the janitor looks once a
second, so nothing here asserts how fast a timeout fires, only that it does,
and to whom."""

from __future__ import annotations

import time

import psycopg
import pytest

from integration.test_admin_console import ADMIN_SETTINGS, admin_conn, wait_for


def running_sleeps(pg_conn, marker: str) -> int:
    """Backends running the query tagged ``marker`` (a comment in its text)."""
    return pg_conn.execute(
        "select count(*) from pg_stat_activity where query like %s and pid <> pg_backend_pid()",
        (f"%{marker}%",)).fetchone()[0]


@pytest.fixture
def pg_conn(pg):
    with psycopg.connect(pg.conninfo(), autocommit=True) as conn:
        yield conn


# --- transaction_timeout -----------------------------------------------------------

def test_transaction_timeout_closes_a_client_idle_in_its_transaction(ecluse_factory):
    ec = ecluse_factory({"transaction_timeout": 1})
    with psycopg.connect(ec.dsn()) as conn:  # not autocommit: psycopg opens a transaction
        conn.execute("select 1")
        time.sleep(3)  # the janitor looks once a second
        with pytest.raises(psycopg.errors.TransactionTimeout, match="transaction timeout"):
            conn.execute("select 2")
    # Other clients are served as before.
    with psycopg.connect(ec.dsn(), autocommit=True) as other:
        assert other.execute("select 3").fetchone() == (3,)


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_transaction_timeout_stops_a_long_statement_and_its_server(ecluse_factory, pg_conn,
                                                                   mode):
    """A single statement is a transaction too; as PgBouncer, its server goes with the
    client, so the statement stops running on PostgreSQL."""
    ec = ecluse_factory({"transaction_timeout": 1, "pool_mode": mode})
    with psycopg.connect(ec.dsn(), autocommit=True) as conn, \
            pytest.raises(psycopg.errors.TransactionTimeout, match="transaction timeout"):
        conn.execute("select pg_sleep(60) -- ttimeout_long")
    assert wait_for(lambda: running_sleeps(pg_conn, "ttimeout_long") == 0, timeout=15)


def test_transaction_timeout_spares_session_clients_between_transactions(ecluse_factory):
    ec = ecluse_factory({"transaction_timeout": 1, "pool_mode": "session"})
    with psycopg.connect(ec.dsn(), autocommit=True) as conn:
        pid = conn.execute("select pg_backend_pid()").fetchone()[0]
        time.sleep(3)  # holds its server, in no transaction
        assert conn.execute("select pg_backend_pid()").fetchone()[0] == pid
        with conn.transaction():  # a short transaction after the quiet spell is fine
            assert conn.execute("select 1").fetchone() == (1,)


def test_transaction_timeout_set_online_applies_to_open_transactions(ecluse_factory):
    ec = ecluse_factory(ADMIN_SETTINGS)
    with admin_conn(ec) as console, psycopg.connect(ec.dsn()) as conn:
        conn.execute("select 1")
        time.sleep(2)  # no timeout yet: nothing happens
        console.execute("SET transaction_timeout = 1", prepare=False)
        time.sleep(2)
        with pytest.raises(psycopg.errors.TransactionTimeout):
            conn.execute("select 2")
