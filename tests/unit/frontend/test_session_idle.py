"""An idle client owns little and nothing of it wakes up.

A logged-in transaction-mode session with no server must hold no timer, no task
and no empty buffers, and have no per-instance __dict__: a node is meant to
keep 100,000 of them (bench/idle_memory.py measures the bytes).
"""

from __future__ import annotations

import asyncio
import struct

from hypothesis import given
from hypothesis import strategies as st
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
        assert session._login is None  # the login's buffers and secrets are gone
        assert session._pending == () and session._notify_backlog == ()
        # No reply queue of its own: it borrows the linked server's.
        assert session._rewriter is not None and session._rewriter.replies is None
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


@given(address=st.ip_addresses(), port=st.integers(0, 65535))
def test_peer_address_reads_back_as_given(address, port) -> None:
    """The address kept packed (IPv4) or as text reads back as host:port."""
    ctx = ClientContext(config_from_string(CONFIG), PoolRegistry(config_from_string(CONFIG)))
    session = FrontendSession(ctx)
    host = str(address)
    peername = (host, port) if address.version == 4 else (host, port, 0, 0)
    session.connection_made(FakeTransport(peername))
    assert session.peer == f"{host}:{port}"
    unix = FrontendSession(ctx)
    unix.connection_made(FakeTransport(""))
    assert unix.peer == "unix"
