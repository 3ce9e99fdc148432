"""LISTEN/NOTIFY through ecluse with real drivers.

In transaction mode a LISTEN sent on its own goes to the pool's listener
connection (pool/listener.py): the client keeps no server, yet gets every
notification of its channels. In session mode LISTEN runs on the client's own
server, as on PostgreSQL. Both must look the same to the client.
"""

from __future__ import annotations

import asyncio
import threading

import asyncpg
import psycopg
import pytest

MODES = ["transaction", "session"]


@pytest.fixture(params=MODES)
def ec(request, ecluse_factory):
    return ecluse_factory({"pool_mode": request.param, "default_pool_size": 4,
                           "query_wait_timeout": 10})


def connect(ec) -> psycopg.Connection:
    return psycopg.connect(ec.dsn(), autocommit=True)


def receive(conn: psycopg.Connection, count: int, timeout: float = 10.0) -> list[tuple[str, str]]:
    got = []
    for n in conn.notifies(timeout=timeout, stop_after=count):
        got.append((n.channel, n.payload))
    return got


def test_psycopg_listen_notify_unlisten(ec):
    with connect(ec) as listener, connect(ec) as other, connect(ec) as sender:
        listener.execute("LISTEN ch_one")
        listener.execute('listen "Ch Two"')
        other.execute("listen ch_one")
        sender.execute("notify ch_one, 'hello'")
        sender.execute("""notify "Ch Two", 'é unicode'""")
        sender.execute("select pg_notify('ch_one', 'third')")
        assert receive(listener, 3) == [("ch_one", "hello"), ("Ch Two", "é unicode"),
                                        ("ch_one", "third")]
        assert receive(other, 2) == [("ch_one", "hello"), ("ch_one", "third")]
        listener.execute("unlisten ch_one")
        sender.execute("notify ch_one, 'after unlisten'")
        sender.execute("""notify "Ch Two", 'still here'""")
        assert receive(listener, 1) == [("Ch Two", "still here")]
        assert receive(other, 1) == [("ch_one", "after unlisten")]
        listener.execute("unlisten *")
        sender.execute("""notify "Ch Two", 'nobody'""")
        sender.execute("notify ch_one, 'other only'")
        assert receive(other, 1) == [("ch_one", "other only")]
        assert receive(listener, 1, timeout=0.5) == []


def test_notification_during_a_query_arrives_after_it(ec):
    with connect(ec) as listener, connect(ec) as sender:
        listener.execute("listen busy_ch")
        # The NOTIFY commits while the listener's query runs; it must not cut
        # into the query's result.
        timer = threading.Timer(0.2, lambda: sender.execute("notify busy_ch, 'during'"))
        timer.start()
        rows = listener.execute(
            "select repeat('x', 1000) from generate_series(1, 2000), pg_sleep(0.5)").fetchall()
        timer.join()
        assert len(rows) == 2000
        assert receive(listener, 1) == [("busy_ch", "during")]


def test_listening_clients_hold_no_server_in_transaction_mode(ecluse_factory):
    """Five listeners on a pool of one server: other clients still get that server."""
    ec = ecluse_factory({"pool_mode": "transaction", "default_pool_size": 1,
                         "query_wait_timeout": 5})
    listeners = [connect(ec) for _ in range(5)]
    try:
        for i, conn in enumerate(listeners):
            conn.execute(f"listen fan_{i % 2}")
        with connect(ec) as worker:
            for _ in range(3):
                assert worker.execute("select 1").fetchone() == (1,)
            worker.execute("notify fan_0, 'even'")
            worker.execute("notify fan_1, 'odd'")
        for i, conn in enumerate(listeners):
            assert receive(conn, 1) == [(f"fan_{i % 2}", "even" if i % 2 == 0 else "odd")]
        # A listener that disconnects stops being a subscriber; the rest go on.
        listeners.pop(0).close()
        with connect(ec) as worker:
            worker.execute("notify fan_0, 'again'")
        assert receive(listeners[1], 1) == [("fan_0", "again")]
    finally:
        for conn in listeners:
            conn.close()


def test_listen_then_query_in_one_batch(ec):
    """A pipelined LISTEN followed by a query: answers in order."""
    with connect(ec) as conn, connect(ec) as sender:
        with conn.pipeline():
            conn.execute("listen piped_ch")
            cur = conn.execute("select %s::int + 1", (1,))
        assert cur.fetchone() == (2,)
        sender.execute("notify piped_ch, 'p'")
        assert receive(conn, 1) == [("piped_ch", "p")]


def test_asyncpg_add_listener(ec):
    """asyncpg LISTENs with the extended protocol: in transaction mode the LISTEN
    runs on a server and pins the client, whose notifications then come from
    that server, also while ecluse probes it after each transaction."""
    async def main() -> list[tuple[str, str]]:
        conn = await asyncpg.connect(ec.url())
        sender = await asyncpg.connect(ec.url())
        got: asyncio.Queue = asyncio.Queue()
        try:
            await conn.add_listener("apg_ch", lambda _c, _pid, ch, payload:
                                    got.put_nowait((ch, payload)))
            assert await conn.fetchval("select 40 + 2") == 42
            await sender.execute("notify apg_ch, 'one'")
            await sender.execute("select pg_notify('apg_ch', 'two')")
            first = await asyncio.wait_for(got.get(), 10)
            second = await asyncio.wait_for(got.get(), 10)
            return [first, second]
        finally:
            await conn.close()
            await sender.close()

    assert asyncio.run(main()) == [("apg_ch", "one"), ("apg_ch", "two")]


def test_client_encoding_applies_to_notifications(ec):
    with psycopg.connect(ec.dsn(), autocommit=True) as conn, connect(ec) as sender:
        conn.execute("set client_encoding to 'LATIN1'")
        conn.execute("listen enc_ch")
        sender.execute("notify enc_ch, 'café'")
        assert receive(conn, 1) == [("enc_ch", "café")]
