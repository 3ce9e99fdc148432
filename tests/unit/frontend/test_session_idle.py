"""An idle client owns little and nothing of it wakes up.

A logged-in transaction-mode session with no server must hold no timer, no task
and no empty buffers, and have no per-instance __dict__: a node is meant to
keep 100,000 of them (bench/idle_memory.py measures the bytes).
"""

from __future__ import annotations

import asyncio
import struct

from wire import FakeTransport

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
pool_mode = transaction
client_login_timeout = 60
"""


def test_idle_session_holds_no_timer_task_or_buffers() -> None:
    config = config_from_string(CONFIG)

    async def run() -> None:
        ctx = ClientContext(config, PoolRegistry(config))
        pool = ctx.registry.get_pool(config.database("app"), "postgres")
        pool.default_params = {"client_encoding": "UTF8", "server_version": "15.0"}
        session = FrontendSession(ctx)
        transport = FakeTransport()
        session.connection_made(transport)
        assert session in ctx.logging_in  # client_login_timeout applies during login
        session.data_received(encode_startup_message({"user": "postgres", "database": "app"}))
        assert session.state is ClientState.IDLE
        assert transport.out.endswith(b"Z" + struct.pack("!I", 5) + b"I")
        assert not hasattr(session, "__dict__")
        assert session not in ctx.logging_in and session._tls_task is None
        assert session._inbuf is None
        assert session._pending == () and session._notify_backlog == ()
        assert session._rewriter is not None and len(session._rewriter.replies) == 0
        assert session._rewriter.replies._q is None
        assert not session.session_settings
        assert not ctx.tasks
        # Nothing of its own where the shared would do: no statements dict before it
        # names a statement, framing rules shared with the other clients.
        assert not isinstance(session._rewriter.statements, dict)
        other = FrontendSession(ctx)
        other.connection_made(FakeTransport())
        other.data_received(encode_startup_message({"user": "postgres", "database": "app"}))
        assert other._framer._rules is session._framer._rules
        # The cancel key kept as one int is the one the client was given.
        at = transport.out.index(b"K" + struct.pack("!I", 12))
        pid, secret = struct.unpack_from("!I4s", transport.out, at + 5)
        assert (session.cancel_pid, session.cancel_secret) == (pid, secret)
        assert ctx.cancel_keys[pid] is session
        session.close()
        assert pid not in ctx.cancel_keys

    asyncio.run(run())
