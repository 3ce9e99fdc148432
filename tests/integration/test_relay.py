"""Queries relayed through ecluse by psql, psycopg 3 and asyncpg."""

from __future__ import annotations

import asyncio
import subprocess

import asyncpg
import psycopg


def test_psql_runs_a_query_through_ecluse(ecluse):
    out = subprocess.run(
        ["psql", ecluse.dsn(), "-X", "-A", "-t", "-c", "select 40 + 2"],
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "42"


def test_psycopg_simple_and_extended_protocol(ecluse):
    with psycopg.connect(ecluse.dsn(), autocommit=True) as conn:
        assert conn.execute("select 'hello'").fetchone() == ("hello",)
        # Parameters make psycopg use Parse/Bind/Execute/Sync.
        assert conn.execute("select %s::int * 2", (21,)).fetchone() == (42,)
        rows = conn.execute("select g from generate_series(1, 5000) g").fetchall()
        assert [r[0] for r in rows] == list(range(1, 5001))


def test_psycopg_transaction_commits_and_rolls_back(ecluse):
    with psycopg.connect(ecluse.dsn()) as conn:
        conn.execute("create temp table if not exists t_roll (x int) on commit drop")
        conn.rollback()
    with psycopg.connect(ecluse.dsn(), autocommit=True) as conn:
        conn.execute("drop table if exists relay_t")
        conn.execute("create table relay_t (x int)")
    with psycopg.connect(ecluse.dsn()) as conn:
        conn.execute("insert into relay_t values (1)")
        conn.commit()
        conn.execute("insert into relay_t values (2)")
        conn.rollback()
        assert conn.execute("select array_agg(x) from relay_t").fetchone() == ([1],)


def test_asyncpg_queries(ecluse):
    async def run():
        conn = await asyncpg.connect(ecluse.url(), statement_cache_size=0)
        try:
            assert await conn.fetchval("select $1::int + 1", 41) == 42
            async with conn.transaction():
                assert await conn.fetchval("select 'in txn'") == "in txn"
            rows = await conn.fetch("select g from generate_series(1, 100) g")
            assert len(rows) == 100
        finally:
            await conn.close()

    asyncio.run(run())


def test_large_values_pass_through_whole(ecluse):
    with psycopg.connect(ecluse.dsn(), autocommit=True) as conn:
        blob = bytes(range(256)) * 40000  # ~10 MB, spans many reads
        got = conn.execute("select %s::bytea", (blob,)).fetchone()[0]
        assert got == blob
        text = conn.execute("select repeat('x', 5000000)").fetchone()[0]
        assert len(text) == 5000000


def test_copy_in_and_out(ecluse):
    with psycopg.connect(ecluse.dsn(), autocommit=True) as conn:
        conn.execute("drop table if exists copy_t")
        conn.execute("create table copy_t (a int, b text)")
        with conn.cursor() as cur:
            with cur.copy("copy copy_t from stdin") as copy:
                for i in range(1000):
                    copy.write_row((i, f"row {i}"))
            assert conn.execute("select count(*) from copy_t").fetchone() == (1000,)
            out = []
            with cur.copy("copy (select a from copy_t order by a) to stdout") as copy:
                for row in copy.rows():
                    out.append(int(row[0]))
        assert out == list(range(1000))
        # The server went back to the pool in a clean state.
        assert conn.execute("select 1").fetchone() == (1,)
