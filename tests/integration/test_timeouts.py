"""PgBouncer's timeouts that the janitor enforces, against a real PostgreSQL with real
clients: transaction_timeout, query_wait_notify, server_fast_close and
autodb_idle_timeout. Short timeouts, generous waits: the janitor looks once a
second, so nothing here asserts how fast a timeout fires, only that it does,
and to whom."""

from __future__ import annotations

import threading
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


# --- query_wait_notify ---------------------------------------------------------------

WAIT_NOTICE = "No server connection available in postgres backend, client being queued"


def notices_of(conn: psycopg.Connection) -> list[tuple[str, str, str]]:
    """Collect (severity, sqlstate, message) of every notice ``conn`` gets."""
    got: list[tuple[str, str, str]] = []
    conn.add_notice_handler(
        lambda d: got.append((d.severity_nonlocalized, d.sqlstate, d.message_primary)))
    return got


def query_while_held(holder: psycopg.Connection, waiter: psycopg.Connection,
                     hold: float) -> tuple:
    """Have ``waiter`` query while ``holder`` keeps the only server in a transaction
    for ``hold`` seconds; return its result."""
    holder.execute("select 1")  # BEGIN: the server stays with the holder
    result: dict[str, tuple] = {}
    thread = threading.Thread(
        target=lambda: result.update(row=waiter.execute("select 'served'").fetchone()))
    thread.start()
    time.sleep(hold)
    holder.commit()
    thread.join(30)
    return result["row"]


def test_query_wait_notify_tells_a_queued_client_once_per_wait(ecluse_factory):
    ec = ecluse_factory({"default_pool_size": 1, "query_wait_notify": 1,
                         "query_wait_timeout": 30})
    with psycopg.connect(ec.dsn()) as holder, \
            psycopg.connect(ec.dsn(), autocommit=True) as waiter:
        got = notices_of(waiter)
        assert waiter.execute("select 'at once'").fetchone() == ("at once",)
        assert got == []  # served without waiting: nothing to say
        assert query_while_held(holder, waiter, 3) == ("served",)
        assert got == [("NOTICE", "00000", WAIT_NOTICE)]  # once, however long it waited
        assert query_while_held(holder, waiter, 3) == ("served",)
        assert len(got) == 2  # a new wait, a new notice


def test_query_wait_notify_in_session_mode(ecluse_factory):
    """The first query of a session-mode client queued for a server held by another."""
    ec = ecluse_factory({"pool_mode": "session", "default_pool_size": 1,
                         "query_wait_notify": 1, "query_wait_timeout": 30})
    holder = psycopg.connect(ec.dsn())
    with psycopg.connect(ec.dsn(), autocommit=True) as waiter:
        got = notices_of(waiter)
        holder.execute("select 1")
        result: dict[str, tuple] = {}
        thread = threading.Thread(
            target=lambda: result.update(row=waiter.execute("select 'served'").fetchone()))
        thread.start()
        time.sleep(3)
        holder.close()  # the session ends: its server goes to the waiter
        thread.join(30)
        assert result["row"] == ("served",)
        assert got == [("NOTICE", "00000", WAIT_NOTICE)]


def test_query_wait_notify_zero_says_nothing(ecluse_factory):
    ec = ecluse_factory({"default_pool_size": 1, "query_wait_notify": 0})
    with psycopg.connect(ec.dsn()) as holder, \
            psycopg.connect(ec.dsn(), autocommit=True) as waiter:
        got = notices_of(waiter)
        assert query_while_held(holder, waiter, 3) == ("served",)
        assert got == []


# --- server_fast_close ---------------------------------------------------------------

def backend_alive(pg_conn, pid: int) -> bool:
    return pg_conn.execute("select count(*) from pg_stat_activity where pid = %s",
                           (pid,)).fetchone()[0] == 1


def test_server_fast_close_ends_a_session_at_its_transactions_end(ecluse_factory, pg_conn):
    """RECONNECT in session mode: the session in a transaction finishes it untouched;
    then its server and the client are closed, the client told why."""
    ec = ecluse_factory({**ADMIN_SETTINGS, "pool_mode": "session", "server_fast_close": 1})
    with admin_conn(ec) as console, psycopg.connect(ec.dsn()) as conn:
        pid = conn.execute("select pg_backend_pid()").fetchone()[0]  # in a transaction
        console.execute("RECONNECT", prepare=False)
        time.sleep(3)  # a few janitor passes: an open transaction is not interrupted
        assert conn.execute("select pg_backend_pid()").fetchone()[0] == pid
        conn.commit()
        assert wait_for(lambda: not backend_alive(pg_conn, pid), timeout=15)
        with pytest.raises(psycopg.OperationalError, match="database configuration changed"):
            conn.execute("select 1")
    with psycopg.connect(ec.dsn(), autocommit=True) as fresh:  # a new session, a new server
        assert fresh.execute("select pg_backend_pid()").fetchone()[0] != pid


def test_server_fast_close_after_a_reload_that_changes_the_connection(ecluse_factory, pg_conn):
    ec = ecluse_factory({**ADMIN_SETTINGS, "pool_mode": "session", "server_fast_close": 1})
    with admin_conn(ec) as console, psycopg.connect(ec.dsn(), autocommit=True) as conn:
        pid = conn.execute("select pg_backend_pid()").fetchone()[0]
        text = ec.config_path.read_text()
        ec.config_path.write_text(text.replace("dbname=ecluse_test",
                                               "dbname=ecluse_test application_name=moved"))
        console.execute("RELOAD", prepare=False)
        assert wait_for(lambda: not backend_alive(pg_conn, pid), timeout=15)
        with pytest.raises(psycopg.OperationalError, match="database configuration changed"):
            conn.execute("select 1")


def test_without_server_fast_close_a_session_keeps_its_server(ecluse_factory, pg_conn):
    ec = ecluse_factory({**ADMIN_SETTINGS, "pool_mode": "session"})
    with admin_conn(ec) as console:
        with psycopg.connect(ec.dsn(), autocommit=True) as conn:
            pid = conn.execute("select pg_backend_pid()").fetchone()[0]
            console.execute("RECONNECT", prepare=False)
            time.sleep(3)
            assert conn.execute("select pg_backend_pid()").fetchone()[0] == pid
        # Closed at the session's end instead.
        assert wait_for(lambda: not backend_alive(pg_conn, pid), timeout=15)


# --- autodb_idle_timeout -------------------------------------------------------------

def pools_of(console) -> set[str]:
    return {row[0] for row in console.execute("SHOW POOLS", prepare=False).fetchall()}


def test_autodb_idle_timeout_removes_unused_pools_of_the_fallback_entry(ecluse_factory, pg):
    backend = f"host={pg.host} port={pg.port}"
    ec = ecluse_factory({**ADMIN_SETTINGS, "autodb_idle_timeout": 1, "server_idle_timeout": 1},
                        databases={"*": backend, "postgres": f"{backend} dbname=postgres"})
    with admin_conn(ec) as console:
        with psycopg.connect(ec.dsn(dbname="postgres"), autocommit=True) as listed:
            listed.execute("select 1")
        with psycopg.connect(ec.dsn(dbname="ecluse_test"), autocommit=True) as auto:
            assert auto.execute("select current_database()").fetchone() == ("ecluse_test",)
            time.sleep(4)  # its server idles out; its client keeps the database in use
            assert "ecluse_test" in pools_of(console)
        # No client and, once server_idle_timeout has closed it, no server: removed.
        assert wait_for(lambda: "ecluse_test" not in pools_of(console), timeout=15)
        stats = {row[0] for row in console.execute("SHOW STATS", prepare=False).fetchall()}
        assert "ecluse_test" not in stats  # its statistics went with it, as in PgBouncer
        assert "postgres" in pools_of(console)  # a listed database stays
        with psycopg.connect(ec.dsn(dbname="ecluse_test"), autocommit=True) as back:
            assert back.execute("select 1").fetchone() == (1,)  # a new pool serves it
        assert "ecluse_test" in pools_of(console)


# --- [users] and [databases] overrides ------------------------------------------------

def test_users_entry_and_database_entry_override_the_timeouts(ecluse_factory, pg):
    """[users] client_idle_timeout closes that user's idle clients only; [databases]
    query_wait_timeout fails a client queued for that database although [pgbouncer]'s
    is off (a broken override would leave it queued for good: the thread's join sees it)."""
    backend = f"host={pg.host} port={pg.port} dbname=ecluse_test"
    ec = ecluse_factory({"client_idle_timeout": 0, "query_wait_timeout": 0},
                        databases={"ecluse_test": f"{backend} pool_size=1 query_wait_timeout=1"},
                        users={"trustuser": "client_idle_timeout=1"})
    with psycopg.connect(ec.dsn(user="trustuser"), autocommit=True) as short, \
            psycopg.connect(ec.dsn(user="postgres"), autocommit=True) as other:
        short.execute("select 1")
        other.execute("select 1")
        time.sleep(3)  # the janitor looks once a second
        with pytest.raises(psycopg.OperationalError):
            short.execute("select 2")
        assert other.execute("select 2").fetchone() == (2,)
    with psycopg.connect(ec.dsn(user="postgres")) as holder:
        holder.execute("select 1")  # a transaction holds the pool's only server
        errors: list[Exception] = []

        def queued() -> None:
            try:
                with psycopg.connect(ec.dsn(user="postgres"), autocommit=True) as conn:
                    conn.execute("select 1")
            except psycopg.Error as exc:
                errors.append(exc)

        thread = threading.Thread(target=queued, daemon=True)
        thread.start()
        thread.join(20)
        assert not thread.is_alive() and len(errors) == 1
        assert "query_wait_timeout" in str(errors[0])
