"""Session state in transaction mode: no client ever observes another's.

A client that SETs a setting keeps it on whichever server it gets next, and the
next client of its server does not see it. A client that makes state that
cannot move (advisory lock, temp table, SQL prepared statement, WITH HOLD
cursor, LISTEN inside a transaction) keeps its server (is pinned) until that
state is gone. Every test also runs in session mode, where the same
observations hold because each client has its own server.
"""

from __future__ import annotations

import psycopg
import pytest
from wire import RawClient

from ecluse.protocol.frontend import (
    encode_bind,
    encode_execute,
    encode_parse,
    encode_query,
    encode_sync,
)
from integration.test_copy import _types

MODES = ["transaction", "session"]


@pytest.fixture(params=MODES)
def ec(request, ecluse_factory):
    """ecluse in the mode under test; one server, so clients take turns on it."""
    size = 1 if request.param == "transaction" else 3  # session: one server per client
    return ecluse_factory({"pool_mode": request.param, "default_pool_size": size,
                           "query_wait_timeout": 10})


@pytest.fixture(params=MODES)
def ec2(request, ecluse_factory):
    """ecluse with two servers, for a pinned client beside a free one."""
    size = 2 if request.param == "transaction" else 3
    return ecluse_factory({"pool_mode": request.param, "default_pool_size": size,
                           "query_wait_timeout": 10})


def one(conn, sql, params=None):
    return conn.execute(sql, params).fetchone()[0]


def connect(ec) -> psycopg.Connection:
    return psycopg.connect(ec.dsn(), autocommit=True)


def test_set_follows_the_client_and_stays_with_it(ec):
    """Generic and tracked settings: each client sees its own values, only."""
    with connect(ec) as a, connect(ec) as b:
        default_work_mem = one(b, "show work_mem")
        default_tz = one(b, "show timezone")
        a.execute("set work_mem = '7MB'")
        a.execute("select set_config('ecluse_test.tenant', 'a''s \\ tenant', false)")
        a.execute("set search_path = pg_catalog, information_schema")
        a.execute("set timezone = 'Pacific/Chatham'")
        for _ in range(3):
            assert one(b, "show work_mem") == default_work_mem
            assert one(b, "select current_setting('ecluse_test.tenant', true)") in (None, "")
            assert one(b, "show search_path") == '"$user", public'
            assert one(b, "show timezone") == default_tz
            assert one(a, "show work_mem") == "7MB"
            assert one(a, "select current_setting('ecluse_test.tenant')") == "a's \\ tenant"
            assert one(a, "show search_path") == "pg_catalog, information_schema"
            assert one(a, "show timezone") == "Pacific/Chatham"
        a.execute("reset work_mem")
        a.execute("reset search_path")
        assert one(a, "show work_mem") == default_work_mem
        assert one(b, "show work_mem") == default_work_mem
        assert one(a, "show search_path") == '"$user", public'
        # SET LOCAL dies with its transaction, here as on PostgreSQL.
        with a.transaction():
            a.execute("set local work_mem = '9MB'")
            assert one(a, "show work_mem") == "9MB"
        assert one(a, "show work_mem") == default_work_mem


def test_set_in_a_rolled_back_transaction_is_undone(ec):
    with connect(ec) as a, connect(ec) as b:
        default = one(b, "show work_mem")
        a.execute("begin")
        a.execute("set work_mem = '11MB'")
        a.execute("rollback")
        assert one(a, "show work_mem") == default
        assert one(b, "show work_mem") == default


def no_state_here(conn) -> tuple:
    """What a client must never inherit: (advisory locks, temp relations,
    SQL prepared statements, holdable cursors, listened channels)."""
    return conn.execute(
        "select (select count(*) from pg_locks where locktype = 'advisory' "
        "        and pid = pg_backend_pid()),"
        " (select count(*) from pg_class where relnamespace = pg_my_temp_schema()),"
        " (select count(*) from pg_prepared_statements where from_sql),"
        " (select count(*) from pg_cursors where is_holdable),"
        " (select count(*) from pg_listening_channels())").fetchone()


STATE_MAKERS = {
    "advisory lock": (["select pg_advisory_lock(4242)"],
                      "select pg_advisory_unlock(4242)"),
    "temp table": (["create temp table pinned_t (x int)", "insert into pinned_t values (1)"],
                   "drop table pinned_t"),
    "prepare": (["prepare pinned_p as select 41 + 1"], "deallocate pinned_p"),
    "with hold cursor": (["begin", "declare pinned_c cursor with hold for select 1",
                          "commit"], "close pinned_c"),
    "listen in a transaction": (["begin", "listen pinned_ch", "commit"], "unlisten pinned_ch"),
}


@pytest.mark.parametrize("kind", list(STATE_MAKERS))
def test_unmovable_state_pins_the_client_until_it_is_gone(ec2, kind):
    make, undo = STATE_MAKERS[kind]
    with connect(ec2) as a, connect(ec2) as b:
        for sql in make:
            a.execute(sql)
        pid = one(a, "select pg_backend_pid()")
        # The state lives on for its client, on its server...
        for _ in range(3):
            assert one(a, "select pg_backend_pid()") == pid
            assert no_state_here(b) == (0, 0, 0, 0, 0)
            assert one(b, "select pg_backend_pid()") != pid
        if kind == "temp table":
            assert one(a, "select count(*) from pinned_t") == 1
        elif kind == "prepare":
            assert one(a, "execute pinned_p") == 42
        elif kind == "with hold cursor":
            assert a.execute("fetch pinned_c").fetchone() == (1,)
        a.execute(undo)
        assert no_state_here(a) == (0, 0, 0, 0, 0)


def test_pinned_client_leaving_gives_back_a_clean_server(ec):
    with connect(ec) as probe:
        default = one(probe, "show work_mem")
    a = connect(ec)
    a.execute("select pg_advisory_lock(777)")
    a.execute("create temp table gone_t (x int)")
    a.execute("prepare gone_p as select 1")
    a.execute("set work_mem = '13MB'")
    a.close()
    with connect(ec) as b:
        assert no_state_here(b) == (0, 0, 0, 0, 0)
        assert one(b, "select pg_try_advisory_lock(777)")  # nobody holds it any more
        b.execute("select pg_advisory_unlock(777)")
        assert one(b, "show work_mem") == default


def test_deallocate_of_protocol_statements(ec):
    """DEALLOCATE name / ALL sent as SQL drop the client's protocol statements only."""
    raw = RawClient(ec)
    other = RawClient(ec)
    try:
        for client in (raw, other):
            client.send(encode_parse("s1", "select 1"), encode_sync())
            assert _types(client.read_until(b"Z")) == "1Z"
        raw.send(encode_query("deallocate s1"))
        reply = raw.read_until(b"Z")
        assert _types(reply) == "CZ" and reply[0][1].startswith(b"DEALLOCATE")
        raw.send(encode_bind("", "s1"), encode_execute(), encode_sync())
        reply = raw.read_until(b"Z")
        assert _types(reply) == "EZ" and b"C26000" in reply[0][1]
        raw.send(encode_query("deallocate s1"))  # now unknown: PostgreSQL's error
        reply = raw.read_until(b"Z")
        assert _types(reply) == "EZ" and b"C26000" in reply[0][1]
        # The other client's s1 is untouched.
        other.send(encode_bind("", "s1"), encode_execute(), encode_sync())
        assert _types(other.read_until(b"Z")) == "2DCZ"
        # DEALLOCATE ALL, then the name is free again.
        other.send(encode_query("deallocate all"))
        assert _types(other.read_until(b"Z")) == "CZ"
        other.send(encode_parse("s1", "select 2"), encode_bind("", "s1"), encode_execute(),
                   encode_sync())
        reply = other.read_until(b"Z")
        assert _types(reply) == "12DCZ" and reply[2][1].endswith(b"2")
        # In a failed transaction DEALLOCATE fails and the statement stays.
        other.send(encode_query("begin; select 1/0"))
        other.read_until(b"Z")
        other.send(encode_query("deallocate s1"))
        reply = other.read_until(b"Z")
        assert _types(reply) == "EZ" and reply[-1][1] == b"E"
        other.send(encode_query("rollback"))
        other.read_until(b"Z")
        other.send(encode_bind("", "s1"), encode_execute(), encode_sync())
        assert _types(other.read_until(b"Z")) == "2DCZ"
    finally:
        raw.close()
        other.close()
