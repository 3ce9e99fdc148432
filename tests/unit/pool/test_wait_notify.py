"""query_wait_notify: the janitor's Pool.notify_long_waits tells each client queued
longer than the setting, once per wait and in arrival order, whatever clients
queue, leave or are served between the passes; nothing when it is 0 or the pool
is paused. A session says so with PgBouncer's NoticeResponse, only while it waits
for a server for a request."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st
from wire import FakeTransport, split_messages

from ecluse.config import config_from_string
from ecluse.frontend.context import ClientContext
from ecluse.frontend.session import ClientState, FrontendSession
from ecluse.pool.registry import PoolRegistry
from ecluse.pool.waiters import Waiter
from ecluse.protocol.backend import decode_error_fields
from ecluse.protocol.startup import encode_startup_message

CONFIG = """
[databases]
app = host=127.0.0.1 port=1 dbname=app
[pgbouncer]
auth_type = trust
pool_mode = transaction
"""

AFTER = 5.0


class Client:
    def __init__(self, index: int, told: list[int]) -> None:
        self.index = index
        self.told = told

    def on_server_assigned(self, server) -> None:
        raise AssertionError("no server exists in this test")

    def on_wait_failed(self, error: Exception) -> None:
        raise AssertionError("nobody times out in this test")

    def on_long_wait(self) -> None:
        self.told.append(self.index)


def _pool():
    config = config_from_string(CONFIG)
    return PoolRegistry(config).get_pool(config.database("app"), "postgres")


# One step of the janitor's life: a client queues ("push"), a queued one leaves or is
# served ("end", the index taken modulo the queue), time passes, or a pass runs.
_STEPS = st.lists(st.one_of(
    st.tuples(st.just("push"), st.just(0)),
    st.tuples(st.just("end"), st.integers(0, 50)),
    st.tuples(st.just("wait"), st.integers(0, 4)),
    st.tuples(st.just("pass"), st.just(0))), max_size=40)


@settings(max_examples=300, deadline=None)
@given(steps=_STEPS)
def test_each_wait_is_told_once_in_arrival_order_when_due(steps):
    async def run() -> None:
        pool = _pool()  # waiters pushed by hand: nothing launches or hands over
        told: list[int] = []
        waiters: list[Waiter] = []
        expected: list[int] = []
        told_model: set[int] = set()
        now = 1000.0
        for kind, arg in steps:
            if kind == "push":
                waiter = Waiter(Client(len(waiters), told))
                waiter.since = now
                pool.waiters.push(waiter)
                waiters.append(waiter)
            elif kind == "end" and waiters:
                waiters[arg % len(waiters)].cancel()
            elif kind == "wait":
                now += arg
            elif kind == "pass":
                pool.notify_long_waits(now, AFTER)
                for i, w in enumerate(waiters):
                    if not w.done and i not in told_model and now - w.since > AFTER:
                        told_model.add(i)
                        expected.append(i)
        assert told == expected  # once each, in arrival order, exactly the due ones

    asyncio.run(run())


def test_nothing_when_off_or_paused():
    async def run() -> None:
        told: list[int] = []
        pool = _pool()
        waiter = Waiter(Client(0, told))
        waiter.since = 0.0
        pool.waiters.push(waiter)
        pool.paused = True
        pool.notify_long_waits(100.0, AFTER)
        pool.paused = False
        pool.notify_long_waits(100.0, 0)  # query_wait_notify = 0
        assert told == []
        pool.notify_long_waits(100.0, AFTER)
        pool.notify_long_waits(200.0, AFTER)
        assert told == [0]

    asyncio.run(run())


def test_a_waiting_session_gets_pgbouncers_notice_and_a_welcoming_one_nothing():
    config = config_from_string(CONFIG)

    async def run() -> None:
        ctx = ClientContext(config, PoolRegistry(config))
        pool = ctx.registry.get_pool(config.database("app"), "postgres")
        pool.default_params = {"client_encoding": "UTF8", "server_version": "15.0"}
        session, transport = FrontendSession(ctx), FakeTransport()
        session.connection_made(transport)
        session.data_received(encode_startup_message({"user": "postgres", "database": "app"}))
        assert session.state is ClientState.IDLE
        session.on_long_wait()  # not waiting: nothing to say
        before = len(transport.out)
        session.state = ClientState.WAITING
        session.on_long_wait()
        (kind, body), = split_messages(bytes(transport.out[before:]))
        notice = decode_error_fields(body, notice=True)
        assert kind == b"N"
        assert notice.fields["S"] == "NOTICE" and notice.fields["C"] == "00000"
        assert notice.fields["M"] == ("No server connection available in postgres "
                                      "backend, client being queued")
        session.state = ClientState.IDLE
        session.close()

    asyncio.run(run())
