"""server/state.py against a real PostgreSQL: the probe sees what a session left, and
build_settings_sync gives another session exactly the settings wanted.

Plain psycopg connections straight to the session cluster, in autocommit, so
every statement is its own transaction and the probe runs between them, as the
session runs it after a transaction ends. Probe values arrive decoded; they are
ASCII hex, so ``.encode()`` gives back the DataRow bytes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecluse.server.state import (
    PROBE_SQL,
    SessionState,
    build_probe_sql,
    build_settings_sync,
    parse_probe,
)

DB = "ecluse_test"
CUSTOM = "ecluse_test.value"


def probe(conn: psycopg.Connection, custom_names: Iterable[str] = ()) -> SessionState:
    sql = build_probe_sql(custom_names) if custom_names else PROBE_SQL
    row = conn.execute(sql).fetchone()
    assert row is not None
    return parse_probe([row[0].encode()])


@pytest.fixture
def connect(pg) -> Iterator:
    """Open autocommit connections to ecluse_test, closed at the end of the test."""
    opened: list[psycopg.Connection] = []

    def open_conn(user: str = "trustuser") -> psycopg.Connection:
        conn = psycopg.connect(pg.conninfo(user=user, dbname=DB), autocommit=True)
        opened.append(conn)
        return conn

    yield open_conn
    for conn in opened:
        conn.close()


def test_fresh_session_is_clean(connect) -> None:
    state = probe(connect(), [CUSTOM])
    assert state == SessionState({}, '"$user", public', [])


def test_probe_reports_each_kind_of_state(connect) -> None:
    conn = connect()
    conn.execute("SET work_mem = '8MB'")
    conn.execute("SELECT pg_catalog.set_config('myapp.x', 'v', false)")
    conn.execute('SET search_path = public, "Odd Schema"')
    conn.execute("SELECT pg_advisory_lock(1)")
    conn.execute("SELECT pg_advisory_lock_shared(2, 3)")
    conn.execute("CREATE TEMP TABLE t1 (a int PRIMARY KEY)")
    conn.execute("PREPARE p AS SELECT 1")
    with conn.transaction():
        conn.execute("DECLARE c CURSOR WITH HOLD FOR SELECT 1")
    conn.execute("LISTEN ch")
    state = probe(conn, ["myapp.x"])
    assert state.settings == {"work_mem": "8MB", "myapp.x": "v",
                              "search_path": 'public, "Odd Schema"'}
    assert state.search_path == 'public, "Odd Schema"'
    assert sorted(state.pins) == sorted([
        "advisory lock 1", "shared advisory lock (2, 3)", "temporary table t1",
        "prepared statement p", "WITH HOLD cursor c", "LISTEN on channel ch",
    ])
    # pg_settings hides custom settings: only a probe that names them sees them.
    assert "myapp.x" not in probe(conn).settings

    conn.execute("SELECT pg_advisory_unlock_all()")
    conn.execute("DROP TABLE t1")
    conn.execute("DEALLOCATE p")
    conn.execute("CLOSE c")
    conn.execute("UNLISTEN *")
    assert probe(conn).pins == []


def test_transaction_scoped_state_is_not_reported(connect) -> None:
    conn = connect()
    with conn.transaction():
        conn.execute("CREATE TEMP TABLE gone (a int) ON COMMIT DROP")
        conn.execute("SELECT pg_advisory_xact_lock(5)")
        conn.execute("SET LOCAL work_mem = '9MB'")
        conn.execute("SELECT pg_catalog.set_config('myapp.y', 'v', true)")
        conn.execute("DECLARE c CURSOR FOR SELECT 1")
    assert probe(conn, ["myapp.y"]) == SessionState({}, '"$user", public', [])


def test_temp_objects_of_every_kind(connect) -> None:
    conn = connect()
    conn.execute("CREATE TEMP SEQUENCE s")
    conn.execute("CREATE TEMP VIEW v AS SELECT 1 AS one")
    conn.execute("CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql AS 'SELECT 1'")
    conn.execute("CREATE TYPE pg_temp.e AS ENUM ('a')")
    pins = probe(conn).pins
    functions = [p for p in pins if p.startswith("temporary function ")]
    assert len(functions) == 1
    assert re.fullmatch(r"temporary function pg_temp_\d+\.f\(\)", functions[0])
    assert sorted(set(pins) - set(functions)) == [
        "temporary sequence s", "temporary type e", "temporary view v"]


def test_settings_ecluse_itself_sets_are_reported(connect) -> None:
    conn = connect()
    conn.execute("SET TimeZone = 'UTC'")
    conn.execute("SET client_encoding = 'LATIN1'")
    conn.execute("SELECT pg_catalog.set_config('myapp.x', 'é', false)")
    state = probe(conn, ["myapp.x"])  # the answer survives a LATIN1 client_encoding
    assert state.settings == {"TimeZone": "UTC", "client_encoding": "LATIN1", "myapp.x": "é"}


def test_role_and_session_authorization(connect) -> None:
    conn = connect("postgres")
    conn.execute("SET ROLE trustuser")
    assert probe(conn).settings == {"role": "trustuser"}
    conn.execute("RESET ROLE")
    conn.execute("SET SESSION AUTHORIZATION trustuser")
    conn.execute("SET work_mem = '5MB'")
    state = probe(conn)  # runs as trustuser now
    assert state.settings == {"session_authorization": "trustuser", "work_mem": "5MB"}

    # RESET ALL leaves session_authorization alone; DISCARD ALL does not.
    conn.execute("RESET ALL")
    assert probe(conn).settings == {"session_authorization": "trustuser"}

    other = connect("postgres")
    sql = build_settings_sync({"session_authorization": "trustuser", "role": "trustuser"},
                              probe(other).settings)
    assert sql is not None
    other.execute(sql)
    assert other.execute("SELECT session_user, current_user").fetchone() == (
        "trustuser", "trustuser")
    assert probe(other).settings == {"session_authorization": "trustuser", "role": "trustuser"}
    other.execute(build_settings_sync({}, probe(other).settings) or "")
    assert other.execute("SELECT session_user, current_user").fetchone() == (
        "postgres", "postgres")
    assert probe(other).settings == {}


def test_discard_all_clears_everything(connect) -> None:
    conn = connect("postgres")
    conn.execute("SET SESSION AUTHORIZATION trustuser")
    conn.execute("SET work_mem = '5MB'")
    conn.execute("SELECT pg_advisory_lock(1)")
    conn.execute("CREATE TEMP TABLE t (a int)")
    conn.execute("PREPARE p AS SELECT 1")
    conn.execute("LISTEN ch")
    assert probe(conn).pins
    conn.execute("DISCARD ALL")
    assert probe(conn) == SessionState({}, '"$user", public', [])


@pytest.fixture
def hostile_schema(pg) -> Iterator[str]:
    """A schema whose = operator on text is always false and whose current_setting lies."""
    with psycopg.connect(pg.conninfo(dbname=DB), autocommit=True) as admin:
        admin.execute("""
            CREATE SCHEMA hostile;
            GRANT USAGE ON SCHEMA hostile TO PUBLIC;
            CREATE FUNCTION hostile.never(text, text) RETURNS bool
                LANGUAGE sql IMMUTABLE AS 'SELECT false';
            CREATE OPERATOR hostile.= (LEFTARG = text, RIGHTARG = text,
                                       FUNCTION = hostile.never);
            CREATE FUNCTION hostile.current_setting(text) RETURNS text
                LANGUAGE sql AS 'SELECT ''lie''::text';
        """)
        try:
            yield "hostile"
        finally:
            admin.execute("DROP SCHEMA hostile CASCADE")


def test_probe_ignores_search_path(connect, hostile_schema: str) -> None:
    conn = connect()
    conn.execute(f"SET search_path = {hostile_schema}, pg_catalog")
    conn.execute("SET work_mem = '7MB'")
    # The hostile operator is in force for unqualified SQL...
    assert conn.execute(
        "SELECT count(*) FROM pg_settings WHERE source = 'session'").fetchone() == (0,)
    # ...but not for the probe.
    state = probe(conn)
    assert state.settings == {"work_mem": "7MB", "search_path": "hostile, pg_catalog"}
    assert state.search_path == "hostile, pg_catalog"


@pytest.fixture(scope="module")
def target(pg) -> Iterator[psycopg.Connection]:
    """One session that the round-trip property keeps re-syncing."""
    with psycopg.connect(pg.conninfo(user="trustuser", dbname=DB), autocommit=True) as conn:
        yield conn


_VALUE = st.text(st.characters(codec="utf-8", exclude_characters="\0"), min_size=1,
                 max_size=20) | st.sampled_from(["'", "''", "\\", "\\'", "E'x'", "$$", "é😀", " "])


@settings(max_examples=20, deadline=None)
@given(custom=st.none() | _VALUE,
       work_mem=st.sampled_from([None, "1MB", "64kB"]),
       search_path=st.sampled_from([None, "public", 'public, "O\'dd ""x"""']))
def test_sync_round_trip(target: psycopg.Connection, custom: str | None,
                         work_mem: str | None, search_path: str | None) -> None:
    wanted = {name: value for name, value in
              ((CUSTOM, custom), ("work_mem", work_mem), ("search_path", search_path))
              if value is not None}
    current = probe(target, [CUSTOM]).settings
    sql = build_settings_sync(wanted, current)
    if sql is not None:
        target.execute(sql)
    assert probe(target, [CUSTOM]).settings == wanted
