"""Several hosts per database (host=a,b with load_balance_hosts and
target_session_attrs), against the session's real cluster.

The cluster is reached two ways, its unix-socket directory and 127.0.0.1, so
the host a server connection went to shows on the server side:
inet_client_addr() is NULL over the socket and 127.0.0.1 over TCP.
"""

from __future__ import annotations

from collections import Counter
from contextlib import ExitStack

import psycopg
import pytest

from ecluse.devcluster import PgCluster
from integration.test_admin_console import ADMIN_SETTINGS, admin_conn
from integration.test_reload import rewrite

SESSION = {**ADMIN_SETTINGS, "pool_mode": "session", "default_pool_size": 4}


def client_addrs(ec, clients: int) -> list[str | None]:
    """inet_client_addr() of ``clients`` sessions open at once (one server each)."""
    with ExitStack() as stack:
        conns = [stack.enter_context(psycopg.connect(ec.dsn(dbname="multi"), autocommit=True))
                 for _ in range(clients)]
        return [c.execute("select host(inet_client_addr())").fetchone()[0] for c in conns]


def rows(console, command: str) -> list[dict]:
    cur = console.execute(command, prepare=False)
    names = [d.name for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def test_round_robin_spreads_new_connections_over_the_hosts(ecluse_factory, pg):
    hosts = f"{pg.socket_dir},{pg.host}"
    ec = ecluse_factory(SESSION, {"multi": f"host={hosts} port={pg.port} dbname=ecluse_test",
                                  "single": f"host={pg.host} port={pg.port}"})
    with ExitStack() as stack:
        conns = [stack.enter_context(psycopg.connect(ec.dsn(dbname="multi"), autocommit=True))
                 for _ in range(4)]
        addrs = [c.execute("select host(inet_client_addr())").fetchone()[0] for c in conns]
        # Each new connection takes the next host: two over the socket, two over TCP.
        assert Counter(addrs) == {None: 2, "127.0.0.1": 2}
        with admin_conn(ec) as console:
            servers = [r for r in rows(console, "SHOW SERVERS") if r["database"] == "multi"]
            assert Counter(r["addr"] for r in servers) == {pg.socket_dir: 2, pg.host: 2}
            db = next(r for r in rows(console, "SHOW DATABASES") if r["name"] == "multi")
            assert db["host"] == hosts and db["load_balance_hosts"] == "round-robin"
            pool = next(r for r in rows(console, "SHOW POOLS") if r["database"] == "multi")
            assert pool["load_balance_hosts"] == "round-robin"
            other = next(r for r in rows(console, "SHOW DATABASES") if r["name"] == "single")
            assert other["load_balance_hosts"] is None  # a single host: NULL, as PgBouncer


def test_disable_keeps_to_one_host(ecluse_factory, pg):
    ec = ecluse_factory(SESSION, {"multi": f"host={pg.host},{pg.socket_dir} port={pg.port} "
                                           "dbname=ecluse_test load_balance_hosts=disable"})
    assert client_addrs(ec, 3) == ["127.0.0.1"] * 3
    with admin_conn(ec) as console:
        db = next(r for r in rows(console, "SHOW DATABASES") if r["name"] == "multi")
        assert db["load_balance_hosts"] == "disable"


@pytest.mark.parametrize("balance", ["round-robin", "disable"])
def test_a_dead_host_in_the_list_is_skipped(ecluse_factory, pg, tmp_path, balance):
    # A unix-socket directory with no socket in it: connecting fails at once.
    dead = tmp_path / "no-server-here"
    dead.mkdir()
    # max_db_connections=3: each launch holds one slot however many hosts it
    # tries, so three sessions fit exactly (a failed attempt keeping its slot
    # would leave the third waiting).
    ec = ecluse_factory({**SESSION, "query_wait_timeout": 5},
                        {"multi": f"host={dead},{pg.host} port={pg.port} dbname=ecluse_test "
                                  f"load_balance_hosts={balance} max_db_connections=3"})
    with ExitStack() as stack:
        conns = [stack.enter_context(psycopg.connect(ec.dsn(dbname="multi"), autocommit=True))
                 for _ in range(3)]
        addrs = [c.execute("select host(inet_client_addr())").fetchone()[0] for c in conns]
        assert addrs == ["127.0.0.1"] * 3
        with admin_conn(ec) as console:
            db = next(r for r in rows(console, "SHOW DATABASES") if r["name"] == "multi")
            assert db["current_connections"] == 3
            servers = [r for r in rows(console, "SHOW SERVERS") if r["database"] == "multi"]
            assert [r["addr"] for r in servers] == [pg.host] * 3
    assert f"to {dead} failed, trying the next host" in ec.log()
    if balance == "disable":
        # Moved on after the first failure and stayed: only one attempt at the dead host.
        assert ec.log().count(f"to {dead} failed") == 1


def test_no_host_of_the_list_answers(ecluse_factory, pg, tmp_path):
    dead = [tmp_path / "a", tmp_path / "b"]
    for d in dead:
        d.mkdir()
    ec = ecluse_factory(SESSION, {"multi": f"host={dead[0]},{dead[1]} port={pg.port} "
                                           "dbname=ecluse_test"})
    with pytest.raises(psycopg.OperationalError, match="server_login_retry"):
        psycopg.connect(ec.dsn(dbname="multi"))
    # Both were tried, in one launch: the first is logged as skipped.
    assert f"to {dead[0]} failed, trying the next host" in ec.log()


@pytest.mark.parametrize("attrs", ["any", "read-write", "primary"])
def test_target_session_attrs_accepting_the_primary(ecluse_factory, pg, attrs):
    ec = ecluse_factory(SESSION, {"multi": f"host={pg.host} port={pg.port} dbname=ecluse_test "
                                           f"target_session_attrs={attrs}"})
    with psycopg.connect(ec.dsn(dbname="multi"), autocommit=True) as c:
        assert c.execute("select pg_is_in_recovery()").fetchone() == (False,)


@pytest.mark.parametrize("attrs", ["standby", "read-only"])
def test_target_session_attrs_refusing_the_primary(ecluse_factory, pg, attrs):
    ec = ecluse_factory(SESSION, {"multi": f"host={pg.host},{pg.socket_dir} port={pg.port} "
                                           f"dbname=ecluse_test target_session_attrs={attrs}"})
    with pytest.raises(psycopg.OperationalError,
                       match=f"does not match target_session_attrs={attrs}"
                             r" \(in_hot_standby=off, default_transaction_read_only=off\)"):
        psycopg.connect(ec.dsn(dbname="multi"))


def test_target_session_attrs_is_checked_after_connect_query(ecluse_factory, pg):
    # connect_query makes the primary's sessions read-only: PostgreSQL reports the
    # new default_transaction_read_only, which read-only accepts and read-write refuses.
    query = "connect_query='SET default_transaction_read_only = on'"
    backend = f"host={pg.host} port={pg.port} dbname=ecluse_test {query}"
    ec = ecluse_factory(SESSION, {"ro": f"{backend} target_session_attrs=read-only",
                                  "rw": f"{backend} target_session_attrs=read-write"})
    with psycopg.connect(ec.dsn(dbname="ro"), autocommit=True) as c:
        assert c.execute("show default_transaction_read_only").fetchone() == ("on",)
    with pytest.raises(psycopg.OperationalError, match="target_session_attrs=read-write"):
        psycopg.connect(ec.dsn(dbname="rw"))


def test_a_failing_connect_query_is_logged_and_ignored(ecluse_factory, pg):
    """As PgBouncer documents; but a connect_query that leaves a transaction open
    gives no client that server."""
    backend = f"host={pg.host} port={pg.port} dbname=ecluse_test"
    ec = ecluse_factory(SESSION, {"failing": f"{backend} connect_query='SELECT 1/0'",
                                  "opened": f"{backend} connect_query='BEGIN'"})
    with psycopg.connect(ec.dsn(dbname="failing"), autocommit=True) as c:
        assert c.execute("select 1").fetchone() == (1,)
        assert c.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert "connect_query failed" in ec.log() and "division by zero" in ec.log()
    with pytest.raises(psycopg.OperationalError, match="connect_query left a transaction open"):
        psycopg.connect(ec.dsn(dbname="opened"))


def test_reload_of_the_host_list_reconnects(ecluse_factory, pg):
    settings = {**ADMIN_SETTINGS, "pool_mode": "transaction", "default_pool_size": 2}
    ec = ecluse_factory(settings, {"multi": f"host={pg.host} port={pg.port} dbname=ecluse_test"})
    with psycopg.connect(ec.dsn(dbname="multi"), autocommit=True) as c, admin_conn(ec) as console:
        assert c.execute("select host(inet_client_addr())").fetchone() == ("127.0.0.1",)
        rewrite(ec, (r"^multi = host=\S+", f"multi = host={pg.socket_dir},{pg.socket_dir}"))
        console.execute("RELOAD", prepare=False)
        # The same client, between transactions, now reaches the server over the socket.
        assert c.execute("select host(inet_client_addr())").fetchone() == (None,)
        db = next(r for r in rows(console, "SHOW DATABASES") if r["name"] == "multi")
        assert db["load_balance_hosts"] == "round-robin"
        pid = c.execute("select pg_backend_pid()").fetchone()[0]
        # target_session_attrs alone is a connection-settings change too.
        rewrite(ec, (r"dbname=ecluse_test$", "dbname=ecluse_test target_session_attrs=primary"))
        console.execute("RELOAD", prepare=False)
        assert c.execute("select pg_backend_pid()").fetchone()[0] != pid


@pytest.fixture(scope="module")
def primary_and_standby(tmp_path_factory):
    """A primary of our own (the session cluster's pg_hba allows no replication)
    and a hot standby streaming from it, made by pg_basebackup -R."""
    base = tmp_path_factory.mktemp("replication")
    primary = PgCluster(str(base / "primary"))
    primary.init(hba_lines=["local all all trust", "local replication all trust",
                            "host all all 127.0.0.1/32 trust"])
    primary.start()
    # The same port on another loopback address: a host list has one port, and
    # the two are told apart by their socket directories.
    standby = PgCluster(str(base / "standby"), port=primary.port, host="127.0.0.3")
    try:
        standby.init_standby_of(primary)
        standby.start()
        yield primary, standby
    finally:
        standby.stop()
        primary.stop()


@pytest.mark.parametrize(("attrs", "expected"), [
    ("standby", {True: 4}), ("read-only", {True: 4}), ("primary", {False: 4}),
    ("read-write", {False: 4}), ("any", {True: 2, False: 2})])
def test_target_session_attrs_picks_among_primary_and_standby(
        ecluse_factory, primary_and_standby, attrs, expected):
    primary, standby = primary_and_standby
    hosts = f"{primary.socket_dir},{standby.socket_dir}"
    ec = ecluse_factory(SESSION, {"multi": f"host={hosts} port={primary.port} dbname=postgres "
                                           f"target_session_attrs={attrs}"})
    with ExitStack() as stack:
        conns = [stack.enter_context(psycopg.connect(ec.dsn(dbname="multi"), autocommit=True))
                 for _ in range(4)]
        got = Counter(c.execute("select pg_is_in_recovery()").fetchone()[0] for c in conns)
    # Round-robin would alternate; a server that does not match is passed over
    # for the next host within the same launch, so every client got a match.
    assert got == expected
