"""client_login_timeout from the janitor: only clients past it are closed, oldest
first, and the check stops at the first one still in time."""

from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st
from wire import FakeTransport

from ecluse.config import config_from_string
from ecluse.frontend.context import ClientContext
from ecluse.frontend.session import ClientState, FrontendSession
from ecluse.pool.janitor import expire_logins
from ecluse.pool.registry import PoolRegistry
from ecluse.protocol.startup import encode_startup_message


class LoggingIn:
    def __init__(self, connected_at: float, logging_in: dict) -> None:
        self.connected_at = connected_at
        self.logging_in = logging_in
        self.timed_out = False

    def on_login_timeout(self) -> None:
        assert self not in self.logging_in  # taken out first: a close finds nothing
        self.timed_out = True


@given(ages=st.lists(st.floats(0, 100), max_size=20).map(sorted),
       timeout=st.floats(0, 120), now=st.floats(100, 200))
def test_exactly_the_clients_past_the_timeout_are_closed(ages, timeout, now):
    logging_in: dict = {}
    clients = [LoggingIn(t, logging_in) for t in ages]  # connection order
    logging_in.update(dict.fromkeys(clients))
    expire_logins(logging_in, timeout, now)
    for c in clients:
        late = timeout > 0 and now - c.connected_at > timeout
        assert c.timed_out == late
        assert (c in logging_in) == (not late)
    assert list(logging_in) == [c for c in clients if not c.timed_out]  # order kept


CONFIG = """
[databases]
app = host=127.0.0.1 port=5432 dbname=app
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = 6432
auth_type = trust
pool_mode = transaction
client_login_timeout = 5
"""


def test_a_session_that_never_logs_in_is_refused_and_one_that_did_is_left_alone():
    config = config_from_string(CONFIG)

    async def run() -> None:
        ctx = ClientContext(config, PoolRegistry(config))
        pool = ctx.registry.get_pool(config.database("app"), "postgres")
        pool.default_params = {"client_encoding": "UTF8", "server_version": "15.0"}
        slow, quick = FrontendSession(ctx), FrontendSession(ctx)
        slow_t, quick_t = FakeTransport(), FakeTransport()
        slow.connection_made(slow_t)
        quick.connection_made(quick_t)
        slow.data_received(encode_startup_message({"user": "postgres"})[:6])  # stalls
        quick.data_received(encode_startup_message({"user": "postgres", "database": "app"}))
        assert quick.state is ClientState.IDLE and list(ctx.logging_in) == [slow]
        expire_logins(ctx.logging_in, 5, slow.connected_at + 4)
        assert slow.state is ClientState.LOGIN and not slow_t.closed
        expire_logins(ctx.logging_in, 5, slow.connected_at + 6)
        assert slow.state is ClientState.CLOSED and slow_t.closed
        assert b"client_login_timeout" in slow_t.out
        assert quick.state is ClientState.IDLE and not quick_t.closed
        assert not ctx.logging_in

    asyncio.run(run())
