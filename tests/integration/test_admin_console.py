"""The admin console (virtual database pgbouncer/ecluse) with real psql and psycopg."""

from __future__ import annotations

import os
import subprocess
import threading
import time

import psycopg
import pytest

from ecluse.admin.commands import COMMANDS
from ecluse.admin.show import EMPTY_RESULTS, NEUTRAL_COLUMNS

ADMIN_SETTINGS = {"admin_users": "admin", "stats_users": "stats", "auth_type": "trust"}

# PgBouncer's columns, in its order, from https://www.pgbouncer.org/usage.html
# (doc/usage.md) checked against src/admin.c and src/stats.c (PgBouncer 1.24/1.25).
SOCKET_COLUMNS = ["type", "user", "database", "replication", "state", "addr", "port",
                  "local_addr", "local_port", "connect_time", "request_time", "wait", "wait_us",
                  "close_needed", "ptr", "link", "remote_pid", "tls", "application_name",
                  "prepared_statements", "id"]
DEBUG_COLUMNS = ["recv_pos", "pkt_pos", "pkt_remain", "send_pos", "send_remain", "pkt_avail",
                 "send_avail"]
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
    "SHOW TOTALS": ["name", "value"],
    "SHOW SOCKETS": SOCKET_COLUMNS + DEBUG_COLUMNS,
    "SHOW ACTIVE_SOCKETS": SOCKET_COLUMNS + DEBUG_COLUMNS,
    "SHOW FDS": ["fd", "task", "user", "database", "addr", "port", "cancel", "link",
                 "client_encoding", "std_strings", "datestyle", "timezone", "password",
                 "scram_client_key", "scram_server_key"],
    "SHOW MEM": ["name", "size", "used", "free", "memtotal"],
    "SHOW DNS_HOSTS": ["hostname", "ttl", "addrs"],
    "SHOW PEERS": ["peer_id", "host", "port", "pool_size"],
    "SHOW PEER_POOLS": ["database", "cl_active_cancel_req", "cl_waiting_cancel_req",
                        "sv_active_cancel", "sv_login"],
    "SHOW DNS_ZONES": ["zonename", "serial", "count"],
}
# Results that may have no rows with one idle client: nothing buffered, nothing
# ecluse keeps (EMPTY_RESULTS in admin/show.py), no [users] section, no server host
# name to look up (the test cluster's address is an IP: test_dns.py has names), no
# [peers] (test_workers.py has them).
MAY_BE_EMPTY = {"SHOW USERS", "SHOW ACTIVE_SOCKETS", "SHOW DNS_HOSTS", "SHOW PEERS",
                "SHOW PEER_POOLS", *EMPTY_RESULTS}
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
        assert rows or command in MAY_BE_EMPTY
        if command in EMPTY_RESULTS:
            assert rows == []
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
        if query in ("PAUSE", "SUSPEND"):
            conn.execute("RESUME")  # leave the pooler as found
    return "ok"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_authorization_follows_the_command_table(ecluse_factory, name):
    """Every command of the table, as admin, stats user and unlisted user (CVE-2026-6667)."""
    ec = ecluse_factory(ADMIN_SETTINGS)
    command = COMMANDS[name]
    as_stats = _outcome(ec, "stats", name)
    if command.read_only:
        assert as_stats == "ok"
    else:
        assert as_stats == "admin access needed"
    as_other = _outcome(ec, "postgres", name)
    assert as_other.startswith("refused") and "not allowed" in as_other
    # Last: as admin, SHUTDOWN stops the pooler and KILL drops every client.
    as_admin = _outcome(ec, "admin", name)
    assert "admin access needed" not in as_admin and not as_admin.startswith("refused")


def test_unknown_commands_and_protocol(ecluse_factory):
    ec = ecluse_factory(ADMIN_SETTINGS)
    with admin_conn(ec) as console:
        for query in ("SHOW NOTHING", "DROP TABLE x", "SHOW POOLS; SHOW STATS", "PAUSE a b"):
            with pytest.raises(psycopg.Error) as info:
                console.execute(query)
            assert info.value.sqlstate == "08P01"
            assert "invalid command" in info.value.diag.message_primary
        assert console.execute("show pools;").statusmessage == "SHOW"  # case, semicolon
        # The extended protocol works too (tests/integration/test_admin_extended.py).
        assert console.execute("SHOW POOLS", prepare=True).statusmessage == "SHOW"


# --- pooler control: DISABLE/ENABLE, RECONNECT, WAIT_CLOSE, KILL, KILL_CLIENT, ---------
# --- SUSPEND, SHOW STATE, SHUTDOWN ---------------------------------------------------


def psql_console(ec, command: str, user: str = "admin") -> subprocess.CompletedProcess:
    env = dict(os.environ, PGCONNECT_TIMEOUT="10")
    return subprocess.run(
        ["psql", "-X", "-A", "-h", ec.host, "-p", str(ec.port), "-U", user,
         "-d", "pgbouncer", "-c", command],
        capture_output=True, text=True, env=env, timeout=30)


def in_thread(fn) -> tuple[threading.Event, list]:
    """Run ``fn`` in a thread; return an event set when it is done and its result."""
    done, result = threading.Event(), []

    def run() -> None:
        try:
            result.append(fn())
        except Exception as exc:  # handed back to the test
            result.append(exc)
        done.set()

    threading.Thread(target=run, daemon=True).start()
    return done, result


def pid_of(conn: psycopg.Connection) -> int:
    return conn.execute("select pg_backend_pid()").fetchone()[0]


def show_state(console: psycopg.Connection) -> dict[str, str]:
    cur = console.execute("SHOW STATE")
    assert [d.name for d in cur.description] == ["key", "value"]
    return dict(cur.fetchall())


def test_disable_refuses_new_logins_and_enable_allows_them(ecluse_factory):
    ec = ecluse_factory(ADMIN_SETTINGS)
    with admin_conn(ec) as console, psycopg.connect(ec.dsn(), autocommit=True) as old:
        old.execute("select 1")
        assert console.execute("DISABLE ecluse_test").statusmessage == "DISABLE"
        with pytest.raises(psycopg.OperationalError,
                           match="database does not allow connections: ecluse_test"):
            psycopg.connect(ec.dsn())
        assert old.execute("select 1").fetchone() == (1,)  # logged-in clients go on
        with psycopg.connect(ec.dsn(dbname="postgres"), autocommit=True) as other:
            assert other.execute("select 2").fetchone() == (2,)
        dbs = {r[0]: r for r in console.execute("SHOW DATABASES").fetchall()}
        assert dbs["ecluse_test"][16] == 1 and dbs["postgres"][16] == 0
        out = psql_console(ec, "ENABLE ecluse_test")
        assert out.returncode == 0 and "ENABLE" in out.stdout, out.stderr
        with psycopg.connect(ec.dsn(), autocommit=True) as new:
            assert new.execute("select 3").fetchone() == (3,)
        for query, message in (("DISABLE", "a database is required"),
                               ("ENABLE", "a database is required"),
                               ("DISABLE nosuchdb", "no such database: nosuchdb"),
                               ("DISABLE pgbouncer", "cannot disable admin db: pgbouncer")):
            with pytest.raises(psycopg.Error, match=message):
                console.execute(query)


def test_reconnect_gives_new_backends_and_wait_close_waits(ecluse_factory):
    ec = ecluse_factory(ADMIN_SETTINGS)
    with admin_conn(ec) as console, psycopg.connect(ec.dsn(), autocommit=True) as client, \
            psycopg.connect(ec.dsn()) as busy:
        before = pid_of(client)
        busy_pid = pid_of(busy)  # a transaction holds this server
        out = psql_console(ec, "RECONNECT ecluse_test")
        assert out.returncode == 0 and "RECONNECT" in out.stdout, out.stderr
        servers = console.execute("SHOW SERVERS").fetchall()
        marked = [s for s in servers if s[2] == "ecluse_test" and s[13] == 1]
        assert [s[16] for s in marked] == [busy_pid]  # the busy one: close_needed

        def run_wait_close() -> str:
            with admin_conn(ec) as other:
                return other.execute("WAIT_CLOSE ecluse_test").statusmessage

        done, result = in_thread(run_wait_close)
        assert not done.wait(0.5), "WAIT_CLOSE answered with a marked server left"
        assert pid_of(busy) == busy_pid  # the transaction goes on on its server
        busy.commit()
        assert done.wait(5) and result == ["WAIT_CLOSE"]
        after = pid_of(client)
        assert after not in (before, busy_pid)
        assert console.execute("WAIT_CLOSE").statusmessage == "WAIT_CLOSE"
        with pytest.raises(psycopg.Error, match="cannot reconnect admin db: pgbouncer"):
            console.execute("RECONNECT pgbouncer")


def test_kill_drops_the_databases_clients_until_resume(ecluse_factory):
    ec = ecluse_factory(ADMIN_SETTINGS)
    with admin_conn(ec) as console, psycopg.connect(ec.dsn(), autocommit=True) as victim, \
            psycopg.connect(ec.dsn(dbname="postgres"), autocommit=True) as bystander:
        victim.execute("select 1")
        bystander.execute("select 1")
        assert console.execute("KILL ecluse_test").statusmessage == "KILL"
        with pytest.raises(psycopg.OperationalError, match="database removed"):
            victim.execute("select 1")
        assert bystander.execute("select 2").fetchone() == (2,)
        assert pool_row(console)["sv_active"] + pool_row(console)["sv_idle"] == 0

        def later() -> int:
            with psycopg.connect(ec.dsn(), autocommit=True) as conn:
                return conn.execute("select 3").fetchone()[0]

        done, result = in_thread(later)
        assert not done.wait(0.5), "a killed database served before RESUME"
        console.execute("RESUME ecluse_test")
        assert done.wait(5) and result == [3]
        with pytest.raises(psycopg.Error, match="cannot kill admin db"):
            console.execute("KILL pgbouncer")


def test_kill_client_closes_exactly_that_client(ecluse_factory):
    ec = ecluse_factory(ADMIN_SETTINGS)
    with admin_conn(ec) as console, \
            psycopg.connect(ec.dsn(application_name="victim"), autocommit=True) as victim, \
            psycopg.connect(ec.dsn(application_name="keeper"), autocommit=True) as keeper:
        victim.execute("select 1")
        keeper.execute("select 1")
        cur = console.execute("SHOW CLIENTS")
        names = [d.name for d in cur.description]
        rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
        assert len({r["id"] for r in rows}) == len(rows)  # unique
        (target,) = [r["id"] for r in rows if r["application_name"] == "victim"]
        assert console.execute(f"KILL_CLIENT {target}").statusmessage == "KILL_CLIENT"
        with pytest.raises(psycopg.OperationalError, match="admin forced disconnect"):
            victim.execute("select 1")
        assert keeper.execute("select 2").fetchone() == (2,)
        ids = [r[20] for r in console.execute("SHOW CLIENTS").fetchall()]
        assert target not in ids and len(ids) == len(rows) - 1
        with pytest.raises(psycopg.Error, match="client not found"):
            console.execute(f"KILL_CLIENT {target}")
        with pytest.raises(psycopg.Error, match="invalid client pointer supplied"):
            console.execute("KILL_CLIENT abc")


def test_suspend_stops_clients_until_resume_and_show_state(ecluse_factory):
    ec = ecluse_factory(ADMIN_SETTINGS)
    with admin_conn(ec) as console, psycopg.connect(ec.dsn(), autocommit=True) as client:
        client.execute("select 1")
        assert show_state(console) == {"active": "yes", "paused": "no", "suspended": "no"}
        assert console.execute("SUSPEND").statusmessage == "SUSPEND"
        assert show_state(console) == {"active": "no", "paused": "no", "suspended": "yes"}
        with pytest.raises(psycopg.Error, match="already suspended/paused"):
            console.execute("SUSPEND")
        done, result = in_thread(lambda: client.execute("select 5").fetchone()[0])
        assert not done.wait(0.5), "a suspended client was served"
        console.execute("RESUME")
        assert done.wait(5) and result == [5]
        assert show_state(console)["active"] == "yes"
        console.execute("PAUSE")
        assert show_state(console) == {"active": "no", "paused": "yes", "suspended": "no"}
        console.execute("RESUME")
        console.execute("PAUSE postgres")
        with pytest.raises(psycopg.Error, match="cannot suspend with paused databases"):
            console.execute("SUSPEND")
        console.execute("RESUME postgres")


def test_suspend_is_undone_when_the_console_leaves(ecluse_factory):
    ec = ecluse_factory(ADMIN_SETTINGS)
    with psycopg.connect(ec.dsn(), autocommit=True) as client:
        client.execute("select 1")
        with admin_conn(ec) as console:
            console.execute("SUSPEND")
            done, result = in_thread(lambda: client.execute("select 6").fetchone()[0])
            assert not done.wait(0.5), "a suspended client was served"
        assert done.wait(5) and result == [6]  # PgBouncer: no admin left, RESUME
        with admin_conn(ec) as console:
            assert show_state(console)["active"] == "yes"


def test_shutdown_wait_for_clients(ecluse_factory):
    ec = ecluse_factory(ADMIN_SETTINGS)
    with psycopg.connect(ec.dsn(), autocommit=True) as client:
        client.execute("select 1")
        with admin_conn(ec) as console:
            assert console.execute("SHUTDOWN WAIT_FOR_CLIENTS").statusmessage == "SHUTDOWN"
            with pytest.raises(psycopg.Error, match="pooler is shutting down"):
                console.execute("RESUME")
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(ec.dsn())  # no longer listening
        time.sleep(0.3)
        assert ec.proc.poll() is None, "exited with a client still connected"
        assert client.execute("select 2").fetchone() == (2,)
    assert ec.proc.wait(10) == 0


def test_shutdown_wait_for_servers(ecluse_factory):
    ec = ecluse_factory(ADMIN_SETTINGS)
    with psycopg.connect(ec.dsn()) as busy:
        busy.execute("select 1")  # a transaction holds a server
        with admin_conn(ec) as console:
            assert console.execute("SHUTDOWN WAIT_FOR_SERVERS").statusmessage == "SHUTDOWN"
        time.sleep(0.3)
        assert ec.proc.poll() is None, "exited with a server busy"
        assert busy.execute("select 2").fetchone() == (2,)
        busy.commit()
        assert ec.proc.wait(10) == 0


def test_shutdown(ecluse_factory):
    ec = ecluse_factory(ADMIN_SETTINGS)
    with admin_conn(ec) as console:
        with pytest.raises(psycopg.Error, match="invalid command"):
            console.execute("SHUTDOWN NOW")
        with pytest.raises(psycopg.OperationalError):
            console.execute("SHUTDOWN")  # no reply: the connection closes
    assert ec.proc.wait(10) == 0


def _stats_totals(console: psycopg.Connection, database: str = "ecluse_test") -> dict:
    cur = console.execute("SHOW STATS_TOTALS", prepare=False)
    names = [d.name for d in cur.description]
    rows = {r[0]: dict(zip(names, r, strict=True)) for r in cur.fetchall()}
    return {k: int(v) for k, v in rows[database].items() if k != "database"}


def test_stats_count_real_traffic(ecluse_factory):
    """Transactions, queries, bytes, parses, binds and times move as the client works."""
    ec = ecluse_factory(ADMIN_SETTINGS)
    with admin_conn(ec) as console:
        with psycopg.connect(ec.dsn(), autocommit=True) as client:
            client.execute("select 1")
            before = _stats_totals(console)
            for i in range(10):
                # extended protocol, unnamed: one Parse and one Bind each
                client.execute("select %s::int", (i,), prepare=False)
            with client.transaction():
                client.execute("select 1")
                client.execute("select pg_sleep(0.05)")
            after = _stats_totals(console)
        delta = {k: after[k] - before[k] for k in after}
        assert delta["xact_count"] == 11  # ten autocommit statements, one block
        assert delta["query_count"] >= 14  # BEGIN, two statements, COMMIT inside
        assert delta["bind_count"] >= 10 and delta["server_parse_count"] >= 10
        assert delta["client_parse_count"] >= 10
        assert delta["bytes_received"] > 10 * len("select $1::int")
        assert delta["bytes_sent"] > 0
        assert delta["xact_time"] >= 50_000  # the block slept 50 ms
        assert delta["query_time"] >= 50_000
        assert delta["server_assignment_count"] >= 11
        assert after["client_connect_count"] >= 1


def test_stats_averages_follow_stats_period(ecluse_factory):
    ec = ecluse_factory({**ADMIN_SETTINGS, "stats_period": "1"})
    with admin_conn(ec) as console, psycopg.connect(ec.dsn(), autocommit=True) as client:
        def busy_average() -> bool:
            for _ in range(50):
                client.execute("select 1")
            cur = console.execute("SHOW STATS_AVERAGES", prepare=False)
            names = [d.name for d in cur.description]
            rows = {r[0]: dict(zip(names, r, strict=True)) for r in cur.fetchall()}
            return int(rows.get("ecluse_test", {}).get("xact_count", 0)) > 0
        assert wait_for(busy_average, timeout=10.0)


# --- SHOW TOTALS, sockets, server ids, ecluse's PREPARED_STATEMENTS and POOL_WAITS ------


def _name_values(console: psycopg.Connection, command: str) -> dict[str, int]:
    return {name: int(value) for name, value in console.execute(command).fetchall()}


def test_show_totals_sums_show_stats(ecluse_factory):
    ec = ecluse_factory(ADMIN_SETTINGS)
    with admin_conn(ec) as console:
        with psycopg.connect(ec.dsn(), autocommit=True) as client:
            for i in range(5):
                client.execute("select %s::int", (i,), prepare=False)
        totals = _name_values(console, "SHOW TOTALS")
        cur = console.execute("SHOW STATS")
        names = [d.name for d in cur.description]
        stats = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    assert list(totals)[:3] == ["total_server_assignment_count", "total_xact_count",
                                "total_query_count"]
    assert len(totals) == 24 and "avg_ps_bind_count" in totals
    assert totals["total_xact_count"] == sum(int(r["total_xact_count"]) for r in stats) >= 5
    assert totals["total_client_bytes"] == sum(int(r["total_received"]) for r in stats) > 0
    assert totals["total_server_bytes"] == sum(int(r["total_sent"]) for r in stats) > 0
    assert totals["total_ps_bind_count"] >= 5


def test_show_servers_ids_are_stable_counters(ecluse_factory):
    ec = ecluse_factory({**ADMIN_SETTINGS, "pool_mode": "session"})
    with admin_conn(ec) as console, psycopg.connect(ec.dsn(), autocommit=True) as a, \
            psycopg.connect(ec.dsn(), autocommit=True) as b:
        a.execute("select 1")
        b.execute("select 1")
        first = {r[14]: r[20] for r in console.execute("SHOW SERVERS").fetchall()}
        second = {r[14]: r[20] for r in console.execute("SHOW SERVERS").fetchall()}
    assert first == second and len(first) == 2
    ids = sorted(first.values())
    assert ids[0] >= 1 and ids[0] != ids[1] and ids[1] < 1000  # a counter, not an address


def test_sockets_list_clients_and_servers(ecluse_factory):
    ec = ecluse_factory({**ADMIN_SETTINGS, "pool_mode": "session"})
    with admin_conn(ec) as console, psycopg.connect(ec.dsn(), autocommit=True) as client:
        client.execute("select 1")
        cur = console.execute("SHOW SOCKETS")
        rows = [dict(zip([d.name for d in cur.description], r, strict=True))
                for r in cur.fetchall()]
        states = sorted(r["state"] for r in rows)
        assert states == ["cl_active", "sv_active"]  # the console itself is not listed
        active = console.execute("SHOW ACTIVE_SOCKETS").fetchall()
        assert all(r[26] or r[27] for r in active)  # pkt_avail or send_avail


def test_stats_user_cannot_show_fds(ecluse_factory):
    ec = ecluse_factory(ADMIN_SETTINGS)
    with admin_conn(ec, user="stats") as console:
        with pytest.raises(psycopg.Error, match="admin access needed"):
            console.execute("SHOW FDS")
        assert console.execute("SHOW MEM").fetchall() == []


def test_show_prepared_statements_and_pool_waits(ecluse_factory):
    ec = ecluse_factory(ADMIN_SETTINGS)
    with admin_conn(ec) as console:
        with psycopg.connect(ec.dsn(), autocommit=True) as client:
            for i in range(3):
                client.execute("select %s::int + 1", (i,), prepare=True)
                client.execute("select %s::text", (str(i),), prepare=True)
            cur = console.execute("SHOW PREPARED_STATEMENTS")
            assert [d.name for d in cur.description] == ["database", "user", "name", "servers",
                                                         "pool_servers"]
            rows = [r for r in cur.fetchall() if r[0] == "ecluse_test"]
            assert len(rows) == 2  # two distinct statements, pooler-wide names
            assert all(r[3] >= 1 and r[4] >= r[3] for r in rows)
            servers = console.execute("SHOW SERVERS").fetchall()
            held = sum(s[19] for s in servers if s[2] == "ecluse_test")
            assert held >= 2
        cur = console.execute("SHOW POOL_WAITS")
        names = [d.name for d in cur.description]
        assert names == ["database", "user", "wait_count", "wait_p50_us", "wait_p90_us",
                         "wait_p99_us", "query_count", "query_p50_us", "query_p99_us"]
        row = dict(zip(names, next(r for r in cur.fetchall() if r[0] == "ecluse_test"),
                       strict=True))
    assert row["wait_count"] >= 6 and row["query_count"] >= 6
    # Quantiles are bucket bounds (stats/counters.py TIME_BUCKETS), in microseconds.
    assert 100 <= row["query_p50_us"] <= row["query_p99_us"] <= 60_000_000
    assert row["wait_p50_us"] <= row["wait_p90_us"] <= row["wait_p99_us"]


def test_show_users_gives_the_overrides_and_null_for_the_rest(ecluse_factory):
    ec = ecluse_factory(ADMIN_SETTINGS, users={"postgres": "pool_size=3 reserve_pool_size=2",
                                               "other": "pool_mode=session"})
    with admin_conn(ec) as console:
        rows = {r[0]: r[1:4] for r in console.execute("SHOW USERS")}
    assert rows["postgres"] == ("3", "2", None)
    assert rows["other"] == (None, None, "session")
