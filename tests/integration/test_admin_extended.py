"""The admin console over the extended query protocol, with psycopg, asyncpg and pg8000."""

from __future__ import annotations

import asyncio
import socket

import asyncpg
import pg8000.native
import psycopg
import pytest

from ecluse.protocol import backend as be
from ecluse.protocol import frontend as fe
from ecluse.protocol.framing import Framer
from ecluse.protocol.startup import encode_startup_message

ADMIN_SETTINGS = {"admin_users": "admin", "stats_users": "stats", "auth_type": "trust"}
POOLS_COLUMNS = ["database", "user", "cl_active", "cl_waiting", "cl_active_cancel_req",
                 "cl_waiting_cancel_req", "sv_active", "sv_active_cancel", "sv_being_canceled",
                 "sv_idle", "sv_used", "sv_tested", "sv_login", "maxwait", "maxwait_us",
                 "pool_mode", "load_balance_hosts"]
_BACKEND = frozenset(b"RSKZECDTNIns1t23AGHWdcv")


def admin_conn(ec, user: str = "admin") -> psycopg.Connection:
    return psycopg.connect(ec.dsn(user=user, dbname="pgbouncer"), autocommit=True)


def test_psycopg_prepared_and_auto_prepared(ecluse_factory):
    ec = ecluse_factory(ADMIN_SETTINGS)
    with psycopg.connect(ec.dsn(), autocommit=True) as client, admin_conn(ec) as console:
        client.execute("select 1")
        # psycopg prepares a query on its 6th execution (prepare_threshold=5).
        assert not console._prepared._names  # psycopg's cache: no public API tells
        for _ in range(7):
            cur = console.execute("SHOW VERSION")
            assert cur.fetchone()[0].startswith("ecluse ")
        assert len(console._prepared._names) == 1
        simple = console.execute("SHOW POOLS").fetchall()
        cur = console.execute("SHOW POOLS", prepare=True)
        assert [d.name for d in cur.description] == POOLS_COLUMNS
        assert cur.statusmessage == "SHOW"
        rows = cur.fetchall()
        assert [r[:2] for r in rows] == [r[:2] for r in simple]
        assert any(r[0] == "ecluse_test" and isinstance(r[2], int) for r in rows)
        # The statement survives Sync: running it again uses it.
        assert console.execute("SHOW POOLS", prepare=True).fetchall()


def test_psycopg_control_commands_and_errors_extended(ecluse_factory):
    ec = ecluse_factory(ADMIN_SETTINGS)
    with admin_conn(ec) as console, admin_conn(ec, "stats") as stats:
        cur = console.execute("PAUSE ecluse_test", prepare=True)
        assert cur.statusmessage == "PAUSE" and cur.description is None
        assert console.execute("RESUME ecluse_test", prepare=True).statusmessage == "RESUME"
        with pytest.raises(psycopg.Error) as info:
            stats.execute("PAUSE", prepare=True)
        assert "admin access needed" in str(info.value)
        with pytest.raises(psycopg.Error) as info:
            console.execute("SHOW NOTHING", prepare=True)
        assert "invalid command" in str(info.value)
        with pytest.raises(psycopg.Error) as info:
            console.execute("SHOW POOLS", ["x"], prepare=True)
        assert "parameters" in str(info.value)
        # The session goes on after each error (skipped to Sync).
        assert stats.execute("SHOW STATE", prepare=True).fetchall()[0][0] == "active"


def test_asyncpg_fetch_show_pools(ecluse_factory):
    ec = ecluse_factory(ADMIN_SETTINGS)

    async def run() -> tuple[list, list, str]:
        client = await asyncpg.connect(host=ec.host, port=ec.port, user="postgres",
                                       database="ecluse_test", ssl=False,
                                       statement_cache_size=0)
        await client.fetch("select 1")
        conn = await asyncpg.connect(host=ec.host, port=ec.port, user="stats",
                                     database="pgbouncer", ssl=False)
        try:
            pools = await conn.fetch("SHOW POOLS")
            again = await conn.fetch("SHOW POOLS")  # from asyncpg's statement cache
            stats = await conn.fetch("SHOW STATS")
            version = await conn.fetchval("SHOW VERSION")
        finally:
            await conn.close()
            await client.close()
        return pools + again, stats, version

    pools, stats, version = asyncio.run(run())
    assert version.startswith("ecluse ")
    assert list(pools[0].keys()) == POOLS_COLUMNS
    row = next(r for r in pools if r["database"] == "ecluse_test")
    assert row["user"] == "postgres" and isinstance(row["sv_idle"], int)
    assert row["pool_mode"] == "transaction"
    by_db = {r["database"]: r for r in stats}
    # Numeric columns arrive in binary (asyncpg asks for it) and decode to the figures.
    assert by_db["ecluse_test"]["total_query_count"] >= 1


def test_pg8000_runs_console_commands(ecluse_factory):
    ec = ecluse_factory(ADMIN_SETTINGS)
    with psycopg.connect(ec.dsn(), autocommit=True) as client:
        client.execute("select 1")
        conn = pg8000.native.Connection("admin", host=ec.host, port=ec.port,
                                        database="pgbouncer")
        try:
            rows = conn.run("SHOW POOLS")
            assert [c["name"] for c in conn.columns] == POOLS_COLUMNS
            assert any(r[0] == "ecluse_test" for r in rows)
            assert conn.run("SHOW VERSION")[0][0].startswith("ecluse ")
            conn.run("PAUSE ecluse_test")
            conn.run("RESUME ecluse_test")
            with pytest.raises(pg8000.native.DatabaseError, match="invalid command"):
                conn.run("SELECT 1")
            assert conn.run("SHOW STATE")[0] == ["active", "yes"]
        finally:
            conn.close()


class RawConsole:
    """A console connection speaking the protocol by hand, for what drivers never send."""

    def __init__(self, ec, user: str = "admin"):
        self.sock = socket.create_connection((ec.host, ec.port), timeout=10)
        self.framer = Framer(_BACKEND, _BACKEND, 1 << 24)
        self.sock.sendall(encode_startup_message({"user": user, "database": "pgbouncer"}))
        self.read_until_ready()

    def read_until_ready(self, count: int = 1) -> list[tuple[str, bytes]]:
        out: list[tuple[str, bytes]] = []
        while sum(1 for t, _ in out if t == "Z") < count:
            data = self.sock.recv(65536)
            assert data, "connection closed"
            out += [(chr(t), bytes(raw[5:])) for t, raw, start, _ in self.framer.feed(data)
                    if start]
        return out

    def send(self, *messages: bytes) -> None:
        self.sock.sendall(b"".join(messages))

    def close(self) -> None:
        self.sock.close()


def test_raw_extended_sequences(ecluse_factory):
    ec = ecluse_factory(ADMIN_SETTINGS)
    raw = RawConsole(ec)
    try:
        # Named statement, described, bound twice, portal executed in two steps.
        raw.send(fe.encode_parse("s1", "SHOW LISTS"), fe.encode_describe(b"S", "s1"),
                 fe.encode_bind("p1", "s1"), fe.encode_describe(b"P", "p1"),
                 fe.encode_execute("p1", 3), fe.encode_execute("p1", 0), fe.encode_sync())
        got = raw.read_until_ready()
        kinds = [t for t, _ in got]
        assert kinds[:5] == ["1", "t", "T", "2", "T"]
        assert be.decode_parameter_description(got[1][1]) == ()
        assert [f.name for f in be.decode_row_description(got[2][1])] == ["list", "items"]
        assert kinds[5:9] == ["D", "D", "D", "s"]  # three rows, then PortalSuspended
        assert kinds[-2:] == ["C", "Z"] and "T" not in kinds[5:]
        assert kinds.count("D") == 14  # SHOW LISTS has 14 rows
        # After Sync the portal is gone; the statement stays.
        raw.send(fe.encode_execute("p1"), fe.encode_sync())
        got = raw.read_until_ready()
        assert [t for t, _ in got] == ["E", "Z"]
        assert b"34000" in got[0][1]
        # An error discards everything up to Sync: one ReadyForQuery, no other replies.
        raw.send(fe.encode_parse("", "NOT A COMMAND"), fe.encode_bind("", ""),
                 fe.encode_execute(""), fe.encode_sync(),
                 fe.encode_bind("", "s1"), fe.encode_execute(""), fe.encode_sync())
        got = raw.read_until_ready(2)
        assert [t for t, _ in got][:2] == ["E", "Z"]
        assert [t for t, _ in got][2:] == ["2"] + ["D"] * 14 + ["C", "Z"]
        # A second Parse of the same name fails; Close frees it.
        raw.send(fe.encode_parse("s1", "SHOW STATE"), fe.encode_sync(),
                 fe.encode_close(b"S", "s1"), fe.encode_parse("s1", "SHOW STATE"),
                 fe.encode_bind("", "s1", result_formats=[1]), fe.encode_execute(""),
                 fe.encode_sync())
        got = raw.read_until_ready(2)
        kinds = [t for t, _ in got]
        assert kinds[:2] == ["E", "Z"] and b"42P05" in got[0][1]
        assert kinds[2:] == ["3", "1", "2", "D", "D", "D", "C", "Z"]
        # Bind with a parameter is refused with a clear error.
        raw.send(fe.encode_parse("", "SHOW POOLS"), fe.encode_bind("", "", [b"1"]),
                 fe.encode_sync())
        got = raw.read_until_ready()
        assert [t for t, _ in got] == ["1", "E", "Z"] and b"parameters" in got[1][1]
        # Empty query: NoData, then EmptyQueryResponse.
        raw.send(fe.encode_parse("", ""), fe.encode_bind("", ""), fe.encode_describe(b"P", ""),
                 fe.encode_execute(""), fe.encode_sync())
        assert [t for t, _ in raw.read_until_ready()] == ["1", "2", "n", "I", "Z"]
    finally:
        raw.close()
