"""cancel_wait_timeout: how long forwarding a CancelRequest may take.

send_cancel waits for the server to close the connection (PostgreSQL closes it
once it has acted) for at most the timeout, 0 meaning no bound; a cancel given
up or undeliverable leaves its server closed at release, since it may still land
later under another client's query. The client that sent the CancelRequest is
answered (its connection closed) once the cancel was delivered or given up, and
at once when there is nothing to cancel. Real local sockets stand in for the
server: one that acts and closes, one that never answers.
"""

from __future__ import annotations

import asyncio

import pytest
from wire import FakeTransport

from ecluse.config import config_from_string
from ecluse.frontend.context import ClientContext
from ecluse.frontend.session import FrontendSession
from ecluse.pool.registry import PoolRegistry
from ecluse.protocol.messages import BackendKeyData
from ecluse.protocol.startup import encode_cancel_request
from ecluse.server.cancel import send_cancel
from ecluse.server.connection import ServerConnection

KEY = BackendKeyData(1234, b"\x01\x02\x03\x04")


class Peer:
    """A listening socket that reads the cancel packet, then closes after ``delay``
    seconds, or only when the test ends (None)."""

    def __init__(self, delay: float | None) -> None:
        self.delay = delay
        self.received: list[bytes] = []
        self.server: asyncio.AbstractServer | None = None
        self.port = 0
        self._end = asyncio.Event()
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> Peer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        assert self.server is not None
        self._end.set()
        self.server.close()
        await self.server.wait_closed()
        for writer in self._writers:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        self.received.append(await reader.readexactly(16))
        if self.delay is None:
            await self._end.wait()
        else:
            await asyncio.sleep(self.delay)
        writer.close()


def test_delivered_once_the_server_closes():
    async def run() -> None:
        async with Peer(0.0) as peer:
            assert await send_cancel("127.0.0.1", peer.port, KEY, 5.0)
            assert peer.received == [encode_cancel_request(KEY.process_id, KEY.secret)]

    asyncio.run(run())


def test_given_up_after_the_timeout_when_the_server_never_answers():
    async def run() -> None:
        async with Peer(None) as peer:
            delivered = await asyncio.wait_for(
                send_cancel("127.0.0.1", peer.port, KEY, 0.2), 10)
            assert delivered is False and len(peer.received) == 1

    asyncio.run(run())


def test_zero_sets_no_bound():
    async def run() -> None:
        async with Peer(0.5) as peer:
            assert await send_cancel("127.0.0.1", peer.port, KEY, 0)

    asyncio.run(run())


def test_an_unreachable_server_is_not_delivered():
    async def run() -> None:
        async with Peer(0.0) as peer:
            port = peer.port
        await asyncio.sleep(0)  # closed: the port now refuses
        assert await send_cancel("127.0.0.1", port, KEY, 5.0) is False

    asyncio.run(run())


CONFIG = """
[databases]
app = host=127.0.0.1 port=1 dbname=app
[pgbouncer]
auth_type = trust
pool_mode = transaction
cancel_wait_timeout = {timeout}
"""


@pytest.mark.parametrize("delay", [0.0, None])
def test_the_server_of_an_undelivered_cancel_serves_no_one_else(delay):
    async def run() -> None:
        config = config_from_string(CONFIG.format(timeout=0.3))
        ctx = ClientContext(config, PoolRegistry(config))
        pool = ctx.registry.get_pool(config.database("app"), "postgres")
        session = FrontendSession(ctx)
        async with Peer(delay) as peer:
            server = ServerConnection(pool, None, "127.0.0.1", peer.port,
                                      asyncio.get_running_loop().create_future())
            server.key = KEY
            done = asyncio.Event()
            resumed: list[bool] = []
            session._cancel_on(server, done.set)
            assert server.cancel_in_flight
            server.after_cancels = lambda: resumed.append(True)  # released meanwhile
            await asyncio.wait_for(done.wait(), 10)
            assert not server.cancel_in_flight and resumed == [True]
            assert server.close_when_released is (delay is None)

    asyncio.run(run())


def test_a_cancel_client_is_answered_at_once_when_nothing_is_to_be_cancelled():
    async def run() -> None:
        config = config_from_string(CONFIG.format(timeout=10))
        ctx = ClientContext(config, PoolRegistry(config))
        for pid, secret in ((999, b"\x00abc"), (999, b"\x07abc")):  # unknown; other worker
            session, transport = FrontendSession(ctx), FakeTransport()
            session.connection_made(transport)
            session.data_received(encode_cancel_request(pid, secret))
            assert transport.closed and transport.out == b""
            assert session not in ctx.clients and session not in ctx.logging_in

    asyncio.run(run())

