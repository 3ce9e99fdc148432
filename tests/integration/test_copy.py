"""COPY through ecluse: formats, transactions, CopyFail, errors mid-COPY, big streams.

Every test runs in transaction and in session mode over a pool of one server,
so a server left in COPY, in a transaction or with replies still due would
show up in the next client, which gets that same server.
"""

from __future__ import annotations

import asyncio
import csv
import io
from pathlib import Path

import asyncpg
import psycopg
import pytest
from wire import RawClient

from ecluse.protocol.frontend import (
    encode_bind,
    encode_copy_data,
    encode_copy_done,
    encode_describe,
    encode_execute,
    encode_parse,
    encode_query,
    encode_sync,
)

MODES = ["transaction", "session"]
ROWS = [(i, None if i % 7 == 0 else f"row {i}\twith \"quotes\", commas\nand a newline")
        for i in range(500)]
MB = 1 << 20


@pytest.fixture(params=MODES)
def ec(request, ecluse_factory):
    """ecluse with one server per pool, in the mode under test."""
    return ecluse_factory({"pool_mode": request.param, "default_pool_size": 1,
                           "query_wait_timeout": 10})


def pool_mode(ec) -> str:
    text = ec.config_path.read_text()
    return "session" if "pool_mode = session" in text else "transaction"


def fresh_table(ec, name: str, columns: str = "a int, b text") -> None:
    with psycopg.connect(ec.dsn(), autocommit=True) as conn:
        conn.execute(f"drop table if exists {name}")
        conn.execute(f"create table {name} ({columns})")


def assert_server_clean(ec, pid: int, table: str, rows: int) -> None:
    """A new client gets the same server, outside any transaction, seeing ``rows`` rows."""
    with psycopg.connect(ec.dsn(), autocommit=True) as conn:
        cur = conn.execute("select pg_backend_pid(), now() = statement_timestamp(), "
                           f"(select count(*) from {table})")
        assert cur.fetchone() == (pid, True, rows)


def _csv_bytes(rows) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    for a, b in rows:
        writer.writerow([a, "" if b is None else b])
    return buf.getvalue().encode()


@pytest.mark.parametrize("fmt", ["text", "csv", "binary"])
@pytest.mark.parametrize("in_transaction", [False, True], ids=["autocommit", "transaction"])
def test_psycopg_copy_both_directions(ec, fmt, in_transaction):
    fresh_table(ec, "copy_fmt")
    options = {"text": "", "csv": "(format csv)", "binary": "(format binary)"}[fmt]
    expected = ROWS if fmt != "csv" else [(a, b or "") for a, b in ROWS]
    with psycopg.connect(ec.dsn(), autocommit=not in_transaction) as conn:
        pid = conn.execute("select pg_backend_pid()").fetchone()[0]
        cur = conn.cursor()
        with cur.copy(f"copy copy_fmt from stdin {options}") as copy:
            if fmt == "csv":
                data = _csv_bytes(ROWS)
                for i in range(0, len(data), 4096):  # chunks that split rows
                    copy.write(data[i:i + 4096])
            else:
                copy.set_types(["int4", "text"])
                for row in ROWS:
                    copy.write_row(row)
        got: list = []
        with cur.copy(f"copy (select a, b from copy_fmt order by a) to stdout {options}") as copy:
            if fmt == "csv":
                raw = b"".join(bytes(chunk) for chunk in copy)
                got = [(int(a), b) for a, b in csv.reader(io.StringIO(raw.decode()))]
            else:
                copy.set_types(["int4", "text"])
                got = [(int(a), b) for a, b in copy.rows()]
        assert got == expected
        if in_transaction:
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
            conn.rollback()
        assert conn.execute("select count(*) from copy_fmt").fetchone() == \
            (0 if in_transaction else len(ROWS),)
        conn.rollback()
    assert_server_clean(ec, pid, "copy_fmt", 0 if in_transaction else len(ROWS))


class Boom(Exception):
    pass


@pytest.mark.parametrize("in_transaction", [False, True], ids=["autocommit", "transaction"])
def test_psycopg_copy_fail_leaves_the_server_clean(ec, in_transaction):
    """Raising inside ``with cur.copy()`` sends CopyFail; nothing of the COPY survives."""
    fresh_table(ec, "copy_abort")
    with psycopg.connect(ec.dsn(), autocommit=not in_transaction) as conn:
        pid = conn.execute("select pg_backend_pid()").fetchone()[0]
        cur = conn.cursor()
        with pytest.raises(Boom), cur.copy("copy copy_abort from stdin") as copy:
            for row in ROWS:
                copy.write_row(row)
            raise Boom
        if in_transaction:
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
            conn.rollback()
        # The same client goes on.
        assert conn.execute("select count(*) from copy_abort").fetchone() == (0,)
        conn.rollback()
        if pool_mode(ec) == "transaction":
            assert_server_clean(ec, pid, "copy_abort", 0)  # while the first client stays
    assert_server_clean(ec, pid, "copy_abort", 0)


def test_copy_error_from_bad_data_leaves_the_server_clean(ec):
    fresh_table(ec, "copy_bad")
    with psycopg.connect(ec.dsn(), autocommit=True) as conn:
        pid = conn.execute("select pg_backend_pid()").fetchone()[0]
        cur = conn.cursor()
        with pytest.raises(psycopg.errors.InvalidTextRepresentation), \
                cur.copy("copy copy_bad from stdin") as copy:
            copy.write(b"1\tok\n2\tok\nnot a number\tbad\n3\tok\n")
        assert conn.execute("select 1").fetchone() == (1,)
    assert_server_clean(ec, pid, "copy_bad", 0)


def test_asyncpg_copy_functions(ec, tmp_path: Path):
    fresh_table(ec, "copy_apg")
    records = [(a, b) for a, b in ROWS]

    async def run() -> None:
        conn = await asyncpg.connect(ec.url())
        try:
            await conn.copy_records_to_table("copy_apg", records=records)
            text = "".join(f"{i}\tfrom file {i}\n" for i in range(1000, 1100)).encode()
            await conn.copy_to_table("copy_apg", source=io.BytesIO(text))
            async with conn.transaction():
                await conn.copy_records_to_table("copy_apg", records=[(2000, "in txn")])
                assert await conn.fetchval("select count(*) from copy_apg") == 601
            out = io.BytesIO()
            await conn.copy_from_query("select a, b from copy_apg where a >= $1 order by a",
                                       1000, output=out, format="csv")
            lines = out.getvalue().decode().splitlines()
            assert lines[0] == "1000,from file 1000" and lines[-1] == "2000,in txn"
            assert len(lines) == 101
            target = tmp_path / "table.copy"
            await conn.copy_from_table("copy_apg", output=str(target))
            assert len(target.read_bytes().splitlines()) == 601  # text format escapes newlines
            got = await conn.fetch("select a, b from copy_apg where a < 500 order by a")
            assert [tuple(r) for r in got] == records
            tr = conn.transaction()
            await tr.start()
            await conn.copy_records_to_table("copy_apg", records=[(3000, "rolled back")])
            await tr.rollback()
            assert await conn.fetchval("select count(*) from copy_apg") == 601
        finally:
            await conn.close()

    asyncio.run(run())
    with psycopg.connect(ec.dsn(), autocommit=True) as conn:
        assert conn.execute("select count(*), now() = statement_timestamp() "
                            "from copy_apg").fetchone() == (601, True)


def _types(messages) -> str:
    return "".join(t.decode() for t, _ in messages)


def test_error_in_execute_copy_then_sync_without_copy_done(ec):
    """Extended-protocol COPY FROM STDIN fails on bad data; the client answers the
    error with a bare Sync. That Sync earns the only ReadyForQuery, and the server
    is free for the next client at once."""
    fresh_table(ec, "copy_ext", "a int")
    raw = RawClient(ec)
    try:
        raw.send(encode_query("select pg_backend_pid()"))
        pid = int(raw.read_until(b"Z")[1][1][6:].decode())
        raw.send(encode_parse("", "copy copy_ext from stdin"), encode_bind("", ""),
                 encode_describe(b"P", ""), encode_execute(), encode_sync())
        assert _types(raw.read_until(b"G")) == "12nG"
        raw.send(encode_copy_data(b"1\n2\n"), encode_copy_data(b"oops\n"))
        assert _types(raw.read_until(b"E")) == "E"
        raw.send(encode_sync())
        assert raw.read_until(b"Z")[-1] == (b"Z", b"I")
        if pool_mode(ec) == "transaction":
            assert_server_clean(ec, pid, "copy_ext", 0)  # released though the client stays
        raw.send(encode_query("select count(*) from copy_ext"))
        reply = raw.read_until(b"Z")
        assert _types(reply) == "TDCZ" and reply[1][1].endswith(b"0")
        # Same again, with libpq's order: CopyDone and Sync after the error.
        raw.send(encode_parse("", "copy copy_ext from stdin"), encode_bind("", ""),
                 encode_execute(), encode_sync())
        assert _types(raw.read_until(b"G")) == "12G"
        raw.send(encode_copy_data(b"bad\n"))
        raw.read_until(b"E")
        raw.send(encode_copy_done(), encode_sync())
        assert raw.read_until(b"Z")[-1] == (b"Z", b"I")
    finally:
        raw.close()
    assert_server_clean(ec, pid, "copy_ext", 0)


# --- big COPY streams with bounded memory ------------------------------------------------

def peak_rss(ec) -> int:
    """The ecluse process's peak resident set so far (VmHWM), in bytes."""
    status = Path(f"/proc/{ec.proc.pid}/status").read_text()
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


def test_large_copy_streams_with_bounded_memory(ec):
    """300 MB in and 300 MB out through ecluse; its peak memory barely moves."""
    fresh_table(ec, "copy_big", "b text")
    line = b"x" * 1023 + b"\n"
    chunk = line * 1024  # 1 MB, whole lines
    total = 300
    with psycopg.connect(ec.dsn(), autocommit=True) as conn:
        conn.execute("alter table copy_big set unlogged")
        before = peak_rss(ec)
        cur = conn.cursor()
        with cur.copy("copy copy_big from stdin") as copy:
            for _ in range(total):
                copy.write(chunk)
        assert conn.execute("select count(*) from copy_big").fetchone() == (total * 1024,)
        conn.execute("truncate copy_big")
        received = 0
        with cur.copy(f"copy (select repeat('x', 1023) from generate_series(1, {total * 1024})) "
                      "to stdout") as copy:
            for data in copy:
                received += len(data)
        assert received == total * MB
        grown = peak_rss(ec) - before
    print(f"GROWN {grown / MB:.1f} MB, before {before / MB:.0f} MB")
    assert grown < 100 * MB, f"ecluse peak RSS grew by {grown / MB:.0f} MB"
