"""Clients queued while their server is down (pool/launch.py rule 3), against
PostgreSQL clusters of this module's own, stopped and started by the tests:

- by default a server that cannot be reached fails queued clients at once, as
  PgBouncer's fast fail, and the next client after server_login_retry gets in;
- with server_down_wait, clients queued during a PostgreSQL restart keep
  waiting and all get their answers once it is back; past server_down_wait
  they are told;
- a server that answers 57P03 (here a standby with hot_standby off) holds its
  clients whatever server_down_wait is: queued, never told the login error,
  and answered once the server accepts connections.
"""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from ecluse.devcluster import PgCluster

FAST_RETRY = {"pool_mode": "transaction", "server_login_retry": 0.2,
              "server_connect_timeout": 2}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A cluster the tests may stop: the session's is shared with other tests."""
    cl = PgCluster(str(tmp_path_factory.mktemp("restarted") / "pg"))
    cl.init()
    cl.start()
    yield cl
    cl.stop()


@pytest.fixture
def running(cluster):
    """The cluster, running at the test's start and left running at its end."""
    if not cluster.is_running():
        cluster.start()
    yield cluster
    if not cluster.is_running():
        cluster.start()


def db_line(cl: PgCluster) -> dict[str, str]:
    return {"app": f"host={cl.host} port={cl.port} dbname=postgres"}


class Query(threading.Thread):
    """One client's query, run in the background: its answer or its error. Given
    a connection string, the client logs in first, in the background too."""

    def __init__(self, conn: psycopg.Connection | str, sql: str = "select 42") -> None:
        super().__init__(daemon=True)
        self.conn, self.sql = conn, sql
        self.result: object = None
        self.error: Exception | None = None
        self.elapsed = 0.0

    def run(self) -> None:
        started = time.monotonic()
        try:
            if isinstance(self.conn, str):
                with psycopg.connect(self.conn, autocommit=True, connect_timeout=60) as conn:
                    self.result = conn.execute(self.sql).fetchone()[0]
            else:
                self.result = self.conn.execute(self.sql).fetchone()[0]
        except Exception as exc:  # the test looks at it
            self.error = exc
        self.elapsed = time.monotonic() - started


def test_by_default_queued_clients_are_told_at_once_and_the_next_gets_in(
        ecluse_factory, running):
    ec = ecluse_factory(FAST_RETRY, db_line(running))
    with psycopg.connect(ec.dsn(dbname="app"), autocommit=True) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    running.stop()
    with psycopg.connect(ec.dsn(dbname="app"), autocommit=True) as conn:
        query = Query(conn)
        query.run()
    assert query.error is not None
    assert "server login has been failing" in str(query.error)
    assert query.error.sqlstate == "08006"
    running.start()
    time.sleep(0.3)  # server_login_retry
    with psycopg.connect(ec.dsn(dbname="app"), autocommit=True) as conn:
        assert conn.execute("select 2").fetchone() == (2,)


def test_server_down_wait_carries_clients_over_a_restart(ecluse_factory, running):
    ec = ecluse_factory({**FAST_RETRY, "server_down_wait": 60}, db_line(running))
    conns = [psycopg.connect(ec.dsn(dbname="app"), autocommit=True) for _ in range(6)]
    try:
        for conn in conns:  # logged in, servers pooled
            assert conn.execute("select 1").fetchone() == (1,)
        running.stop()
        queries = [Query(conn, f"select {i}") for i, conn in enumerate(conns)]
        for q in queries:
            q.start()
        time.sleep(1.5)  # several launches fail meanwhile (server_login_retry 0.2)
        assert all(q.is_alive() for q in queries), [q.error for q in queries]
        running.start()
        for q in queries:
            q.join(30)
        assert [(q.error, q.result) for q in queries] == [(None, i) for i in range(6)]
    finally:
        for conn in conns:
            conn.close()
    assert "clients keep waiting for the server to come back" in ec.log()


def test_past_server_down_wait_the_held_clients_are_told(ecluse_factory, running):
    ec = ecluse_factory({**FAST_RETRY, "server_down_wait": 1.5}, db_line(running))
    with psycopg.connect(ec.dsn(dbname="app"), autocommit=True) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        running.stop()
        query = Query(conn)
        query.run()
    assert query.error is not None and query.error.sqlstate == "08006"
    assert "server login has been failing" in str(query.error)
    # Held until server_down_wait had passed (the janitor looks once a second).
    assert query.elapsed >= 1.4, query.elapsed


@pytest.fixture(scope="module")
def cold_standby(tmp_path_factory):
    """A standby with hot_standby off: every login gets FATAL 57P03 "the database
    system is not accepting connections"."""
    base = tmp_path_factory.mktemp("coldstandby")
    primary = PgCluster(str(base / "primary"))
    primary.init(hba_lines=["local all all trust", "local replication all trust",
                            "host all all 127.0.0.1/32 trust"])
    primary.start()
    standby = PgCluster(str(base / "standby"))
    try:
        standby.init_standby_of(primary, {"hot_standby": "off"})
        standby.start()
        yield standby
    finally:
        standby.stop()
        primary.stop()


def test_a_server_not_accepting_connections_yet_holds_its_clients(ecluse_factory,
                                                                  cold_standby):
    ec = ecluse_factory({**FAST_RETRY, "query_wait_timeout": 60},
                        {"app": f"host={cold_standby.host} port={cold_standby.port} "
                                "dbname=postgres"})
    # The pool never had a server: the clients wait from their login on (the
    # welcome needs the server's parameters).
    query = Query(ec.dsn(dbname="app"), "select pg_is_in_recovery()")
    query.start()
    time.sleep(1.5)  # launches fail with 57P03 meanwhile
    assert query.is_alive(), query.error
    assert "not accepting connections" in ec.log()
    # A newcomer queues too, instead of being told the login error.
    second = Query(ec.dsn(dbname="app"), "select 7")
    second.start()
    time.sleep(0.5)
    assert second.is_alive(), second.error
    cold_standby._write_conf({"hot_standby": "on"})
    cold_standby.restart()
    query.join(30)
    second.join(30)
    assert (second.error, second.result) == (None, 7)
    assert (query.error, query.result) == (None, True)
