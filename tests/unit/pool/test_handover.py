"""A server given back while clients wait goes to the first of them directly; the
pool's books (idle, active, counters) end as if it had passed through idle."""

from __future__ import annotations

import asyncio

from wire import FakeTransport

from ecluse.config import config_from_string
from ecluse.pool.registry import PoolRegistry
from ecluse.server.connection import ServerConnection, ServerState

CONFIG = """
[databases]
app = host=127.0.0.1 port=5432 dbname=app
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = 6432
auth_type = trust
pool_mode = transaction
default_pool_size = 1
"""


class Client:
    def __init__(self) -> None:
        self.got: list[ServerConnection] = []
        self.failed: list[Exception] = []

    def on_server_assigned(self, server: ServerConnection) -> None:
        self.got.append(server)

    def on_wait_failed(self, error: Exception) -> None:
        self.failed.append(error)


def _pool_with_one_server():
    config = config_from_string(CONFIG)
    pool = PoolRegistry(config).get_pool(config.database("app"), "postgres")
    server = ServerConnection(pool, None, "127.0.0.1", 5432,
                              asyncio.get_running_loop().create_future())
    server.transport = FakeTransport()
    pool.login.add(server)
    pool._set_state(server, ServerState.IDLE)
    return pool, server


def _server_taken_and_a_client_waiting():
    pool, server = _pool_with_one_server()
    owner, waiting = Client(), Client()
    assert pool.acquire(owner) is server
    assert pool.acquire(waiting) is None
    return pool, server, waiting


def test_a_released_server_goes_to_the_waiters_in_order():
    async def run() -> None:
        pool, server = _pool_with_one_server()
        first, second, third = Client(), Client(), Client()
        assert pool.acquire(first) is server
        assert pool.acquire(second) is None and pool.acquire(third) is None
        assert len(pool.waiters) == 2
        assigned = pool.stats.server_assignment_count
        pool.release(server, reset=False)
        assert second.got == [server] and not third.got
        assert server.state is ServerState.ACTIVE and list(pool.active) == [server]
        assert not pool.idle and len(pool.waiters) == 1
        assert pool.stats.server_assignment_count == assigned + 1
        pool.release(server, reset=False)
        assert third.got == [server] and not pool.waiters
        pool.release(server, reset=False)  # nobody waits: back to idle
        assert server.state is ServerState.IDLE and pool.idle == [server] and not pool.active
        assert pool.total() == 1

    asyncio.run(run())


def test_a_closing_server_is_not_handed_to_a_waiter():
    async def run() -> None:
        pool, server, waiting = _server_taken_and_a_client_waiting()
        server.transport.close()  # closing, connection_lost not yet delivered
        pool.release(server, reset=False)
        assert not waiting.got
        assert server not in pool.active and server not in pool.idle

    asyncio.run(run())


def test_a_paused_pool_keeps_the_released_server_idle():
    async def run() -> None:
        pool, server, waiting = _server_taken_and_a_client_waiting()
        pool.paused = True
        pool.release(server, reset=False)
        assert not waiting.got and pool.idle == [server]
        pool.resume()
        assert waiting.got == [server] and server.state is ServerState.ACTIVE

    asyncio.run(run())
