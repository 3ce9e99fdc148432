"""The admin console (virtual database pgbouncer/ecluse) with real psql and psycopg."""

from __future__ import annotations

import os
import subprocess
import threading
import time

import psycopg
import pytest

from ecluse.admin.commands import COMMANDS
from ecluse.admin.show import NEUTRAL_COLUMNS

ADMIN_SETTINGS = {"admin_users": "admin", "stats_users": "stats", "auth_type": "trust"}

# PgBouncer's columns, in its order, from https://www.pgbouncer.org/usage.html
# (doc/usage.md) checked against src/admin.c and src/stats.c (PgBouncer 1.24/1.25).
SOCKET_COLUMNS = ["type", "user", "database", "replication", "state", "addr", "port",
                  "local_addr", "local_port", "connect_time", "request_time", "wait", "wait_us",
                  "close_needed", "ptr", "link", "remote_pid", "tls", "application_name",
                  "prepared_statements", "id"]
_STATS = ["server_assignment_count", "xact_count", "query_count", "received", "sent",
          "xact_time", "query_time", "wait_time", "client_parse_count", "server_parse_count",
          "bind_count", "client_connect_count"]
PGBOUNCER_COLUMNS = {
    "SHOW VERSION": ["version"],
    "SHOW CONFIG": ["key", "value", "default", "changeable"],
    "SHOW DATABASES": ["name", "host", "port", "database", "force_user", "pool_size",
                       "min_pool_size", "reserve_pool_size", "server_lifetime", "pool_mode",
                       "load_balance_hosts", "max_connections", "current_connections",
                       "max_client_connections", "current_client_connections", "paused",
                       "disabled"],
    "SHOW POOLS": ["database", "user", "cl_active", "cl_waiting", "cl_active_cancel_req",
                   "cl_waiting_cancel_req", "sv_active", "sv_active_cancel", "sv_being_canceled",
                   "sv_idle", "sv_used", "sv_tested", "sv_login", "maxwait", "maxwait_us",
                   "pool_mode", "load_balance_hosts"],
    "SHOW CLIENTS": SOCKET_COLUMNS,
    "SHOW SERVERS": SOCKET_COLUMNS,
    "SHOW LISTS": ["list", "items"],
    "SHOW USERS": ["name", "pool_size", "reserve_pool_size", "pool_mode", "max_user_connections",
                   "current_connections", "max_user_client_connections",
                   "current_client_connections"],
    "SHOW STATS": ["database"]
    + ["total_" + {"received": "received", "sent": "sent"}.get(f, f) for f in _STATS]
    + ["avg_" + {"received": "recv", "sent": "sent"}.get(f, f) for f in _STATS],
    "SHOW STATS_TOTALS": ["database"]
    + [{"received": "bytes_received", "sent": "bytes_sent"}.get(f, f) for f in _STATS],
    "SHOW STATS_AVERAGES": ["database"]
    + [{"received": "bytes_received", "sent": "bytes_sent"}.get(f, f) for f in _STATS],
}
INT4, INT8, TEXT, NUMERIC = 23, 20, 25, 1700


def admin_conn(ec, user: str = "admin", dbname: str = "pgbouncer") -> psycopg.Connection:
    return psycopg.connect(ec.dsn(user=user, dbname=dbname), autocommit=True)


def pool_row(console: psycopg.Connection, database: str = "ecluse_test") -> dict:
    cur = console.execute("SHOW POOLS")
    names = [d.name for d in cur.description]
    for row in cur.fetchall():
        if row[0] == database:
            return dict(zip(names, row, strict=True))
    return {}


def wait_for(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.mark.parametrize("command", sorted(PGBOUNCER_COLUMNS))
def test_show_columns_are_pgbouncers(ecluse_factory, command):
    ec = ecluse_factory(ADMIN_SETTINGS)
    with psycopg.connect(ec.dsn(), autocommit=True) as client, admin_conn(ec) as console:
        client.execute("select 1")  # at least one pool, server and client to list
        cur = console.execute(command)
        assert [d.name for d in cur.description] == PGBOUNCER_COLUMNS[command]
        assert cur.statusmessage == "SHOW"
        rows = cur.fetchall()
        assert rows or command in ("SHOW USERS",)
        # SHOW LISTS names its figures in rows, the others in columns.
        names = [r[0] for r in rows] if command == "SHOW LISTS" else PGBOUNCER_COLUMNS[command]
        for name in NEUTRAL_COLUMNS.get(command, ()):
            assert name in names


def test_column_types_follow_pgbouncer(ecluse_factory):
    ec = ecluse_factory(ADMIN_SETTINGS)
    with psycopg.connect(ec.dsn(), autocommit=True) as client, admin_conn(ec) as console:
        client.execute("select 1")
        cur = console.execute("SHOW POOLS")
        types = {d.name: d.type_code for d in cur.description}
        assert types["database"] == TEXT and types["cl_active"] == INT4
        row = pool_row(console)
        assert isinstance(row["cl_active"], int) and row["pool_mode"] == "transaction"
        cur = console.execute("SHOW STATS")
        stats = {d.name: d.type_code for d in cur.description}
        assert stats["total_xact_count"] == NUMERIC
        by_db = {r[0]: r for r in cur.fetchall()}
        assert by_db["ecluse_test"][1] >= 1  # total_server_assignment_count is real


def test_psql_show_pools_and_help(ecluse_factory):
    ec = ecluse_factory(ADMIN_SETTINGS)
    env = dict(os.environ, PGCONNECT_TIMEOUT="10")
    with psycopg.connect(ec.dsn(), autocommit=True) as client:
        client.execute("select 1")
        out = subprocess.run(
            ["psql", "-X", "-A", "-h", ec.host, "-p", str(ec.port), "-U", "admin",
             "-d", "pgbouncer", "-c", "SHOW POOLS"],
            capture_output=True, text=True, env=env, timeout=30)
        assert out.returncode == 0, out.stderr
        header, *lines = out.stdout.splitlines()
        assert header.split("|") == PGBOUNCER_COLUMNS["SHOW POOLS"]
        assert any(line.startswith("ecluse_test|postgres|") for line in lines)
        out = subprocess.run(
            ["psql", "-X", "-h", ec.host, "-p", str(ec.port), "-U", "stats",
             "-d", "ecluse", "-c", "SHOW HELP"],
            capture_output=True, text=True, env=env, timeout=30)
        assert out.returncode == 0, out.stderr
        assert "Console usage" in out.stderr and "SHOW HELP|CONFIG" in out.stderr


def test_show_pools_follows_a_session_client(ecluse_factory):
    ec = ecluse_factory({**ADMIN_SETTINGS, "pool_mode": "session"})
    with admin_conn(ec) as console:
        with psycopg.connect(ec.dsn(), autocommit=True) as client:
            client.execute("select 1")
            row = pool_row(console)
            assert (row["cl_active"], row["sv_active"], row["pool_mode"]) == (1, 1, "session")
            clients = console.execute("SHOW CLIENTS").fetchall()
            assert any(c[2] == "ecluse_test" and c[4] == "active" for c in clients)
            servers = console.execute("SHOW SERVERS").fetchall()
            assert [s[4] for s in servers if s[2] == "ecluse_test"] == ["active"]
        assert wait_for(lambda: pool_row(console)["sv_active"] == 0)
        row = pool_row(console)
        assert row["cl_active"] == 0 and row["sv_idle"] + row["sv_used"] == 1


def test_pause_waits_for_transactions_and_resume_releases_queries(ecluse_factory):
    ec = ecluse_factory(ADMIN_SETTINGS)
    with admin_conn(ec) as console, psycopg.connect(ec.dsn()) as busy, \
            psycopg.connect(ec.dsn(), autocommit=True) as later:
        later.execute("select 1")
        busy.execute("select 1")  # a transaction holds a server
        paused = threading.Event()

        def run_pause() -> None:
            with admin_conn(ec) as other:
                other.execute("PAUSE")
            paused.set()

        pauser = threading.Thread(target=run_pause)
        pauser.start()
        assert not paused.wait(0.5), "PAUSE answered with a transaction in flight"
        busy.commit()
        assert paused.wait(5), "PAUSE did not answer once the transaction ended"
        pauser.join()
        assert console.execute("SHOW DATABASES").fetchall()
        done = threading.Event()
        result: list = []

        def run_query() -> None:
            result.append(later.execute("select 42").fetchone()[0])
            done.set()

        querier = threading.Thread(target=run_query)
        querier.start()
        assert not done.wait(0.5), "a query ran while paused"
        assert pool_row(console)["cl_waiting"] == 1
        console.execute("RESUME")
        assert done.wait(5)
        querier.join()
        assert result == [42]
        with pytest.raises(psycopg.Error, match="not paused"):
            console.execute("RESUME")


def test_pause_one_database(ecluse_factory):
    ec = ecluse_factory(ADMIN_SETTINGS)
    with admin_conn(ec) as console, psycopg.connect(ec.dsn(), autocommit=True) as a, \
            psycopg.connect(ec.dsn(dbname="postgres"), autocommit=True) as b:
        a.execute("select 1")
        console.execute("PAUSE postgres")
        assert a.execute("select 1").fetchone() == (1,)  # ecluse_test is not paused
        dbs = {r[0]: r for r in console.execute("SHOW DATABASES").fetchall()}
        assert dbs["postgres"][15] == 1 and dbs["ecluse_test"][15] == 0
        console.execute("RESUME postgres")
        assert b.execute("select 2").fetchone() == (2,)
        with pytest.raises(psycopg.Error, match="no such database"):
            console.execute("PAUSE nosuchdb")
        with pytest.raises(psycopg.Error, match="cannot pause admin db"):
            console.execute("PAUSE pgbouncer")


def _outcome(ec, user: str, query: str) -> str:
    """Run one console command as ``user``; say "ok", "refused" or the error message."""
    try:
        conn = admin_conn(ec, user)
    except psycopg.OperationalError as exc:
        return "refused: " + str(exc)
    with conn:
        try:
            conn.execute(query)
        except psycopg.Error as exc:
            return exc.diag.message_primary or str(exc)
        if query == "PAUSE":
            conn.execute("RESUME")  # leave the pooler as found
    return "ok"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_authorization_follows_the_command_table(ecluse_factory, name):
    """Every command of the table, as admin, stats user and unlisted user (CVE-2026-6667)."""
    ec = ecluse_factory(ADMIN_SETTINGS)
    command = COMMANDS[name]
    as_admin = _outcome(ec, "admin", name)
    assert "admin access needed" not in as_admin and not as_admin.startswith("refused")
    as_stats = _outcome(ec, "stats", name)
    if command.read_only:
        assert as_stats == "ok"
    else:
        assert as_stats == "admin access needed"
    as_other = _outcome(ec, "postgres", name)
    assert as_other.startswith("refused") and "not allowed" in as_other


def test_unknown_commands_and_protocol(ecluse_factory):
    ec = ecluse_factory(ADMIN_SETTINGS)
    with admin_conn(ec) as console:
        for query in ("SHOW NOTHING", "DROP TABLE x", "SHOW POOLS; SHOW STATS", "PAUSE a b"):
            with pytest.raises(psycopg.Error) as info:
                console.execute(query)
            assert info.value.sqlstate == "08P01"
            assert "invalid command" in info.value.diag.message_primary
        assert console.execute("show pools;").statusmessage == "SHOW"  # case, semicolon
        with pytest.raises(psycopg.OperationalError, match="simple query protocol"):
            console.execute("SHOW POOLS", prepare=True)
