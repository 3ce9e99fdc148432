"""A session that ends is freed by reference counting alone, not left in a cycle.

Under connection churn every login makes a session; one caught in a reference
cycle waits for the garbage collector, which then walks it, and its memory is
not reused while still in the CPU caches. Whatever way a client leaves (it says
Terminate, it drops the connection, it sends garbage, it leaves while queued
for a server), nothing of its session may be left to the collector.
"""

from __future__ import annotations

import asyncio
import gc

import pytest
from wire import FakeTransport, msg

from ecluse.config import config_from_string
from ecluse.frontend.context import ClientContext
from ecluse.frontend.session import ClientState, FrontendSession
from ecluse.pool.registry import PoolRegistry
from ecluse.protocol.startup import encode_startup_message

CONFIG = """
[databases]
app = host=127.0.0.1 port=1
[pgbouncer]
auth_type = trust
pool_mode = {mode}
log_connections = 0
log_disconnections = 0
"""
STARTUP = encode_startup_message({"user": "postgres", "database": "app",
                                  "application_name": "t", "_pq_.x": "1"})
ENDINGS = {
    "terminate": lambda s: s.data_received(msg(b"X", b"")),
    "dropped": lambda s: s.connection_lost(None),
    "garbage": lambda s: s.data_received(b"\x01" * 20),
    "queued then dropped": lambda s: (s.data_received(msg(b"Q", b"SELECT 1\0")),
                                      s.connection_lost(None)),
}
KINDS = ("FrontendSession", "StatementRewriter", "Framer", "_Login", "Waiter")


@pytest.mark.parametrize("mode", ["transaction", "session", "statement"])
@pytest.mark.parametrize("ending", sorted(ENDINGS))
def test_an_ended_session_leaves_nothing_to_the_garbage_collector(mode, ending):
    config = config_from_string(CONFIG.format(mode=mode))

    async def run() -> list[str]:
        ctx = ClientContext(config, PoolRegistry(config))
        pool = ctx.registry.get_pool(config.database("app"), "postgres")
        pool.default_params = {"client_encoding": "UTF8", "server_version": "15.0"}
        pool.launch = lambda: False  # no server: a Query queues
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            session = FrontendSession(ctx)
            session.connection_made(FakeTransport())
            session.data_received(STARTUP)
            assert session.state is ClientState.IDLE
            ENDINGS[ending](session)
            assert session.state is ClientState.CLOSED
            del session
            gc.collect()
            return [type(o).__name__ for o in gc.garbage if type(o).__name__ in KINDS]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()

    assert asyncio.run(run()) == []
