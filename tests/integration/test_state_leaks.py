"""Generated state-leak test (RELIABILITY.md §3.1-3.4): random session-state
actions through ecluse, checked against PostgreSQL itself.

Client A runs a random sequence of actions that change session state (SET,
SET LOCAL, SET in committed and rolled-back transactions, RESET, SET ROLE,
SET SESSION AUTHORIZATION, set_config, advisory locks, temp tables, SQL
PREPARE, WITH HOLD cursors, DISCARD ALL). The same sequence runs on a direct
connection D. After every step:

- A's outcome (ok or SQLSTATE) and A's session fingerprint equal D's: ecluse
  moved A between servers without A noticing;
- client B, sharing A's two servers, still has a fresh session's
  fingerprint: nothing A did is visible to B.

psycopg's automatic prepare is off: DISCARD ALL would drop its statements
behind its back, directly as through ecluse.
"""

from __future__ import annotations

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FINGERPRINT = """
select current_setting('statement_timeout'), current_setting('work_mem'),
       current_user::text, session_user::text, current_setting('search_path'),
       current_setting('TimeZone'), current_setting('default_transaction_read_only'),
       coalesce(current_setting('ecluse_t.x', true), ''),
       (select count(*) from pg_catalog.pg_locks
         where locktype = 'advisory' and pid = pg_catalog.pg_backend_pid()),
       (select count(*) from pg_catalog.pg_class
         where relnamespace = pg_catalog.pg_my_temp_schema()),
       (select count(*) from pg_catalog.pg_prepared_statements where from_sql),
       (select count(*) from pg_catalog.pg_cursors where is_holdable)
"""

ACTIONS: list[tuple[str, ...]] = [
    ("set statement_timeout = '1h'",),
    ("begin", "set statement_timeout = '2h'", "commit"),
    ("begin", "set local statement_timeout = '3h'", "commit"),
    ("begin", "set statement_timeout = '4h'", "rollback"),
    ("set work_mem = '5MB'",),
    ("reset work_mem",),
    ("reset all",),
    ("set role ecluse_leak_other",),
    ("reset role",),
    ("set session authorization ecluse_leak_other",),
    ("reset session authorization",),
    ("select set_config('search_path', 'evil, public', false)",),
    ("set search_path = public",),
    ("set timezone = 'Asia/Tokyo'",),
    ("set default_transaction_read_only = on",),
    ("select set_config('ecluse_t.x', 'v1', false)",),
    ("set ecluse_t.x = 'v2'",),
    ("select pg_advisory_lock({lock})",),
    ("select pg_advisory_unlock({lock})",),
    ("create temp table if not exists leak_tt (x int)",),
    ("drop table if exists pg_temp.leak_tt",),
    ("prepare leak_pp as select 1",),
    ("deallocate leak_pp",),
    ("begin", "declare leak_cc cursor with hold for select 1", "commit"),
    ("close leak_cc",),
    ("discard all",),
]


def run(conn: psycopg.Connection, statements: tuple[str, ...], lock: int) -> list[str | None]:
    """Run the statements; return each one's SQLSTATE, None when it succeeded.

    Advisory locks are shared by the whole database, so A and D lock
    different keys: otherwise D would wait for A's lock.
    """
    outcome = []
    for sql in statements:
        try:
            conn.execute(sql.format(lock=lock))
            outcome.append(None)
        except psycopg.Error as exc:
            outcome.append(exc.sqlstate)
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        conn.execute("rollback")
    return outcome


def fingerprint(conn: psycopg.Connection) -> tuple:
    return conn.execute(FINGERPRINT).fetchone()


@pytest.fixture(params=["transaction", "session"])
def setup(request, ecluse_factory, pg):
    pg.psql("do $$ begin create role ecluse_leak_other; exception when duplicate_object "
            "then null; end $$; grant create on schema public to ecluse_leak_other",
            dbname="ecluse_test")
    mode = request.param
    ec = ecluse_factory({"pool_mode": mode, "default_pool_size": 2 if mode == "transaction"
                         else 3, "query_wait_timeout": 10})
    direct = pg.conninfo(dbname="ecluse_test")
    with psycopg.connect(direct, autocommit=True, prepare_threshold=None) as fresh:
        baseline = fingerprint(fresh)
    b = psycopg.connect(ec.dsn(), autocommit=True, prepare_threshold=None)
    yield ec, direct, baseline, b
    b.close()


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(steps=st.lists(st.sampled_from(range(len(ACTIONS))), min_size=1, max_size=8))
def test_random_state_actions_never_leak(setup, steps):
    ec, direct, baseline, b = setup
    a = psycopg.connect(ec.dsn(), autocommit=True, prepare_threshold=None)
    d = psycopg.connect(direct, autocommit=True, prepare_threshold=None)
    try:
        for i in steps:
            action = ACTIONS[i]
            assert run(a, action, 7) == run(d, action, 8), action
            assert fingerprint(a) == fingerprint(d), action
            assert fingerprint(b) == baseline, action
    finally:
        a.close()
        d.close()
    # A is gone: whatever it left was cleaned before its server went to B.
    for _ in range(2):
        assert fingerprint(b) == baseline
