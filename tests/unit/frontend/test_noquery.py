"""disable_pqexec: NoSimpleQuerySession refuses a simple Query however it arrives.

PgBouncer closes such a client with FATAL 08P01 "PQexec disallowed"; the
extended protocol goes on as usual. Generated: messages of every kind, with
or without a Query among them, cut anywhere into reads, in transaction and
session mode.
"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wire import FakeTransport, cut, split_messages

from ecluse.config import config_from_string
from ecluse.frontend.context import ClientContext
from ecluse.frontend.noquery import NoSimpleQuerySession
from ecluse.frontend.session import ClientState, FrontendSession
from ecluse.pool.registry import PoolRegistry
from ecluse.protocol import frontend as fe
from ecluse.protocol.startup import encode_startup_message

CONFIG = """
[databases]
app = host=127.0.0.1 port=1
[pgbouncer]
auth_type = trust
pool_mode = {mode}
disable_pqexec = 1
"""

MESSAGES = {
    "parse": fe.encode_parse("", "select 1"),
    "bind": fe.encode_bind("", ""),
    "describe": fe.encode_describe(b"P", ""),
    "execute": fe.encode_execute(),
    "sync": fe.encode_sync(),
    "flush": fe.encode_flush(),
    "query": fe.encode_query("select 1; select 2"),
}


def logged_in(cls: type[FrontendSession], mode: str) -> tuple[FrontendSession, FakeTransport,
                                                                list[int]]:
    """A session of ``cls`` logged in and idle, whose requests for a server are
    only counted (no server to reach)."""
    acquired: list[int] = []

    class Counting(cls):  # type: ignore[valid-type, misc]
        __slots__ = ()

        def _acquire(self) -> None:
            acquired.append(1)

    config = config_from_string(CONFIG.format(mode=mode))
    ctx = ClientContext(config, PoolRegistry(config))
    pool = ctx.registry.get_pool(config.database("app"), "postgres")
    pool.default_params = {"client_encoding": "UTF8", "server_version": "15.0"}
    pool.take_now = lambda now=0.0: None  # type: ignore[method-assign]
    pool.wait = lambda client: acquired.append(1)  # type: ignore[method-assign]
    session = Counting(ctx)
    transport = FakeTransport()
    session.connection_made(transport)
    session.data_received(encode_startup_message({"user": "postgres", "database": "app"}))
    assert session.state is ClientState.IDLE
    transport.out.clear()
    return session, transport, acquired


@pytest.mark.parametrize("mode", ["transaction", "session"])
@given(names=st.lists(st.sampled_from(sorted(MESSAGES)), min_size=1, max_size=8),
       cuts=st.lists(st.integers(0, 1000), max_size=4))
def test_a_query_anywhere_closes_the_client_and_nothing_reaches_a_server(mode, names, cuts):
    async def run() -> None:
        session, transport, acquired = logged_in(NoSimpleQuerySession, mode)
        data = b"".join(MESSAGES[name] for name in names)
        reads = cut(data, cuts)
        for read in reads:
            session.data_received(read)
            if session.state is ClientState.CLOSED:
                break
        # ecluse may answer some alone (a lone Sync); errors come only from the Query.
        errors = [m for m in split_messages(bytes(transport.out)) if m[0] == b"E"]
        if "query" in names:
            assert session.state is ClientState.CLOSED and transport.closed
            assert errors == [(b"E", b"SFATAL\0VFATAL\0C08P01\0MPQexec disallowed\0\0")]
            assert split_messages(bytes(transport.out))[-1][0] == b"E"
            # The read that completes the Query is refused whole, without asking for a
            # server; reads before it held other messages, which may have.
            query_end = data.index(MESSAGES["query"]) + len(MESSAGES["query"])
            before = sum(1 for i in range(len(reads))
                         if sum(map(len, reads[:i + 1])) < query_end)
            assert len(acquired) <= before
        else:
            assert session.state is not ClientState.CLOSED and not errors

    asyncio.run(run())


def test_the_express_path_is_not_taken_by_a_query_and_is_by_an_extended_batch():
    async def run() -> None:
        for cls, refused in ((NoSimpleQuerySession, True), (FrontendSession, False)):
            session, transport, acquired = logged_in(cls, "transaction")
            batch = b"".join(MESSAGES[n] for n in ("parse", "bind", "execute", "sync"))
            session.data_received(batch)
            assert acquired == [1] and not transport.out
            session.state = ClientState.IDLE
            session._pending = ()
            session.data_received(MESSAGES["query"])
            assert (session.state is ClientState.CLOSED) is refused
            assert (b"PQexec disallowed" in transport.out) is refused

    asyncio.run(run())
