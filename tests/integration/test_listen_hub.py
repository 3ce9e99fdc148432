"""The pool's LISTEN hub (pool/listener.py) against a real PostgreSQL, in-process.

Each test builds a PoolRegistry from a config pointing at the session cluster,
subscribes recording sinks, and sends NOTIFY from a separate psycopg connection.
A notification on a "fence" channel, sent last, proves that everything sent
before it has been fanned out: PostgreSQL delivers a session's notifications in
commit order, and the hub fans out each one synchronously.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import psycopg
import uvloop

from ecluse.config.loader import config_from_string
from ecluse.pool.listener import ListenHub
from ecluse.pool.pool import Pool
from ecluse.pool.registry import PoolRegistry
from ecluse.protocol.backend import decode_notification_response
from ecluse.protocol.messages import ErrorResponse

FENCE = "fence"


class Sink:
    """Records (channel, payload, pid) of every notification it gets."""

    def __init__(self) -> None:
        self.got: list[tuple[str, str, int]] = []

    def deliver_notification(self, raw: bytes) -> None:
        assert raw[:1] == b"A" and int.from_bytes(raw[1:5], "big") == len(raw) - 1
        note = decode_notification_response(raw[5:])
        self.got.append((note.channel, note.payload, note.process_id))

    def payloads(self) -> list[tuple[str, str]]:
        return [(channel, payload) for channel, payload, _pid in self.got]


def make_pool(pg, port: int | None = None, user: str = "trustuser", **settings) -> Pool:
    extra = "".join(f"{key} = {value}\n" for key, value in settings.items())
    config = config_from_string(
        "[databases]\n"
        f"ecluse_test = host={pg.host} port={port or pg.port} dbname=ecluse_test user={user}\n"
        "[pgbouncer]\npool_mode = transaction\nserver_login_retry = 1\n" + extra)
    registry = PoolRegistry(config)
    db = config.database("ecluse_test")
    assert db is not None
    return registry.get_pool(db, user)


async def subscribe(hub: ListenHub, channel: str, sink: Sink) -> ErrorResponse | None:
    fut: asyncio.Future = asyncio.get_running_loop().create_future()
    hub.subscribe(channel, sink, fut.set_result)
    return await asyncio.wait_for(fut, 30)


async def until(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    """Wait for a condition the hub reaches asynchronously; fail after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


class Notifier:
    """A direct connection that sends NOTIFY and can wait for the fence to arrive."""

    def __init__(self, conn: psycopg.AsyncConnection, fence: Sink):
        self.conn = conn
        self.fence = fence
        self.fences = 0

    async def notify(self, channel: str, payload: str) -> None:
        await self.conn.execute("select pg_notify(%s, %s)", (channel, payload))

    async def sql(self, query: str, params: tuple = ()) -> list[tuple]:
        cur = await self.conn.execute(query, params)
        return await cur.fetchall() if cur.description else []

    async def flush(self) -> None:
        """Send a fence notification and wait until the hub has fanned it out."""
        self.fences += 1
        await self.notify(FENCE, str(self.fences))
        await until(lambda: (FENCE, str(self.fences)) in self.fence.payloads(), "the fence")


async def start(pg, hub: ListenHub) -> Notifier:
    fence = Sink()
    assert await subscribe(hub, FENCE, fence) is None
    conn = await psycopg.AsyncConnection.connect(pg.conninfo(dbname="ecluse_test"),
                                                 autocommit=True)
    return Notifier(conn, fence)


async def stop(notifier: Notifier, hub: ListenHub) -> None:
    await notifier.conn.close()
    server = hub.server
    hub.close()
    if server is not None:
        await until(lambda: server.transport is None or server.transport.is_closing(),
                    "the listener to close")
        await asyncio.sleep(0)  # let connection_lost run before the loop closes


def test_notifications_reach_exactly_the_subscribed_sinks(pg):
    async def run():
        pool = make_pool(pg)
        hub = pool.listen_hub()
        assert pool.listen_hub() is hub
        notifier = await start(pg, hub)
        a, b, c = Sink(), Sink(), Sink()
        weird = 'We"ird Chan'  # a quoted identifier: case, space and a double quote kept
        assert await subscribe(hub, "alpha", a) is None
        assert await subscribe(hub, "alpha", b) is None
        assert await subscribe(hub, weird, c) is None
        assert hub.listening == {FENCE, "alpha", weird}
        assert hub.channels_of(a) == {"alpha"} and hub.channels_of(c) == {weird}
        # The listener counts in the cross-pool limits like a pool server.
        assert pool.registry.db_server_count("ecluse_test") == 1
        assert pool.total() == 0

        await notifier.notify("alpha", "p1")
        await notifier.notify(weird, "p2")
        await notifier.notify("nobody", "p3")
        await notifier.notify("ALPHA", "p4")  # another channel: names are case-sensitive
        await notifier.notify("alpha", "héllo ✓")
        await notifier.flush()

        assert a.payloads() == [("alpha", "p1"), ("alpha", "héllo ✓")]
        assert b.payloads() == a.payloads()
        assert c.payloads() == [(weird, "p2")]
        assert {pid for _ch, _p, pid in a.got} == {notifier.conn.info.backend_pid}
        await stop(notifier, hub)
        assert pool.registry.db_server_count("ecluse_test") == 0

    uvloop.run(run())


def test_done_means_listen_is_effective(pg):
    async def run():
        hub = make_pool(pg).listen_hub()
        notifier = await start(pg, hub)
        sink = Sink()
        # Each NOTIFY is sent the moment done(None) arrives for a channel not yet LISTENed.
        for i in range(5):
            assert await subscribe(hub, f"fresh_{i}", sink) is None
            await notifier.notify(f"fresh_{i}", str(i))
        # An identifier over 63 bytes is cut by PostgreSQL; so is NOTIFY's, so they meet.
        long_name = "l" * 70
        assert await subscribe(hub, long_name, sink) is None
        assert "l" * 63 in hub.channels_of(sink)
        await notifier.sql(f'NOTIFY "{long_name}", \'long\'')
        # A second subscriber of a channel already LISTENed is answered during the call.
        other = Sink()
        answers: list[ErrorResponse | None] = []
        hub.subscribe("fresh_0", other, answers.append)
        assert answers == [None]
        await notifier.notify("fresh_0", "again")
        await notifier.flush()
        assert sink.payloads() == [(f"fresh_{i}", str(i)) for i in range(5)] + [
            ("l" * 63, "long"), ("fresh_0", "again")]
        assert other.payloads() == [("fresh_0", "again")]
        await stop(notifier, hub)

    uvloop.run(run())


def test_unsubscribe_stops_delivery_and_last_one_unlistens(pg):
    async def run():
        hub = make_pool(pg).listen_hub()
        notifier = await start(pg, hub)
        a, b = Sink(), Sink()
        assert await subscribe(hub, "alpha", a) is None
        assert await subscribe(hub, "alpha", b) is None
        assert await subscribe(hub, "beta", a) is None

        hub.unsubscribe("alpha", a)
        assert hub.channels_of(a) == {"beta"}
        assert "alpha" in hub.listening  # b still listens
        await notifier.notify("alpha", "one")
        await notifier.flush()
        assert a.payloads() == [] and b.payloads() == [("alpha", "one")]

        hub.unsubscribe_all(b)
        assert hub.channels_of(b) == set()
        await until(lambda: "alpha" not in hub.listening, "UNLISTEN alpha")
        assert hub.listening == {FENCE, "beta"}
        assert hub.server is not None and hub.server.key is not None
        pid = hub.server.key.process_id
        rows = await notifier.sql("select query from pg_stat_activity where pid = %s", (pid,))
        assert rows == [('UNLISTEN "alpha"',)]

        await notifier.notify("alpha", "two")
        await notifier.notify("beta", "three")
        await notifier.flush()
        assert a.payloads() == [("beta", "three")]
        assert b.payloads() == [("alpha", "one")]
        hub.unsubscribe_all(a)
        await until(lambda: hub.listening == {FENCE}, "UNLISTEN beta")
        await stop(notifier, hub)

    uvloop.run(run())


def test_listener_reconnects_after_its_backend_is_killed(pg):
    async def run():
        hub = make_pool(pg).listen_hub()
        notifier = await start(pg, hub)
        a = Sink()
        assert await subscribe(hub, "alpha", a) is None
        assert hub.server is not None and hub.server.key is not None
        old_pid = hub.server.key.process_id
        rows = await notifier.sql(
            "select application_name from pg_stat_activity where pid = %s", (old_pid,))
        assert rows == [("ecluse listener",)]
        assert await notifier.sql("select pg_terminate_backend(%s)", (old_pid,)) == [(True,)]

        def relistening() -> bool:
            server = hub.server
            return server is not None and server.key is not None and \
                server.key.process_id != old_pid and hub.listening == {FENCE, "alpha"}

        await until(relistening, "the listener to reconnect and LISTEN again")
        await notifier.notify("alpha", "after")
        await notifier.flush()
        assert a.payloads() == [("alpha", "after")]
        assert hub.channels_of(a) == {"alpha"}
        await stop(notifier, hub)

    uvloop.run(run())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_subscribe_fails_when_the_server_is_unreachable(pg):
    async def run():
        hub = make_pool(pg, port=free_port()).listen_hub()
        sink = Sink()
        error = await subscribe(hub, "alpha", sink)
        assert error is not None and error.sqlstate.startswith("08")
        assert "LISTEN" in error.message
        assert hub.channels_of(sink) == set() and hub.channels() == {}
        # While connects keep failing, the next subscribe is refused at once.
        answers: list[ErrorResponse | None] = []
        hub.subscribe("beta", sink, answers.append)
        assert answers and answers[0] is not None
        assert hub.pool.registry.db_server_count("ecluse_test") == 0
        hub.close()

    uvloop.run(run())


def test_subscribe_fails_when_the_login_fails(pg):
    async def run():
        hub = make_pool(pg, user="no_such_role").listen_hub()
        error = await subscribe(hub, "alpha", Sink())
        assert error is not None and error.sqlstate == "28000"
        assert error.severity == "ERROR"  # not FATAL: the client's session goes on
        hub.close()

    uvloop.run(run())


def test_idle_listener_closes_and_close_all_closes_the_hub(pg):
    async def run():
        pool = make_pool(pg, server_idle_timeout="100ms")
        hub = pool.listen_hub()
        a = Sink()
        assert await subscribe(hub, "alpha", a) is None
        first = hub.server
        assert first is not None
        hub.unsubscribe("alpha", a)
        await until(lambda: hub.server is None and first.is_closed(), "the idle close")
        await until(lambda: pool.registry.db_server_count("ecluse_test") == 0, "slot freed")
        # A later subscribe opens a new connection.
        notifier = await start(pg, hub)
        assert await subscribe(hub, "alpha", a) is None
        assert hub.server is not first
        await notifier.notify("alpha", "back")
        await notifier.flush()
        assert a.payloads() == [("alpha", "back")]

        second = hub.server
        assert second is not None
        pool.closed = True
        pool.close_all()
        assert hub.closed and hub.channels_of(a) == set()
        await until(second.is_closed, "close_all to close the listener")
        answers: list[ErrorResponse | None] = []
        pool.listen_hub().subscribe("alpha", a, answers.append)
        assert answers and answers[0] is not None and answers[0].sqlstate == "57P01"
        await stop(notifier, hub)

    uvloop.run(run())


def test_empty_channel_name_is_refused(pg):
    async def run():
        hub = make_pool(pg).listen_hub()
        answers: list[ErrorResponse | None] = []
        hub.subscribe("", Sink(), answers.append)
        assert len(answers) == 1 and answers[0] is not None
        assert answers[0].sqlstate == "42601"
        assert hub.server is None  # nothing was connected for it
        hub.close()

    uvloop.run(run())


def test_listener_skips_a_dead_host_of_the_list(pg, tmp_path):
    # A unix-socket directory with no server in it, first in the list: the
    # listener's one connect tries it, then the next host, and LISTEN succeeds.
    dead = tmp_path / "no-server-here"
    dead.mkdir()

    async def run():
        config = config_from_string(
            "[databases]\n"
            f"ecluse_test = host={dead},{pg.host} port={pg.port} dbname=ecluse_test "
            "user=trustuser load_balance_hosts=disable\n"
            "[pgbouncer]\npool_mode = transaction\nserver_login_retry = 1\n")
        registry = PoolRegistry(config)
        db = config.database("ecluse_test")
        assert db is not None
        pool = registry.get_pool(db, "trustuser")
        hub = pool.listen_hub()
        notifier = await start(pg, hub)
        assert hub.server is not None and hub.server.host == pg.host
        # Two attempts, one slot: the failed one handed its slot to the next.
        assert registry.db_server_count("ecluse_test") == 1
        # The picker was told: the pool's next launch goes straight to the live host.
        assert pool.hosts.pick() == pg.host
        sink = Sink()
        assert await subscribe(hub, "alpha", sink) is None
        await notifier.notify("alpha", "p1")
        await notifier.flush()
        assert sink.payloads() == [("alpha", "p1")]
        await stop(notifier, hub)
        assert registry.db_server_count("ecluse_test") == 0

    uvloop.run(run())
