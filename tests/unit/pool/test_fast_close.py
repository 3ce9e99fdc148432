"""server_fast_close: the janitor's fast_close_sessions closes, with PgBouncer's text,
the client of each session-mode server marked to close, once no transaction or
request is open on it, and no other."""

from __future__ import annotations

import asyncio

import pytest
from wire import FakeTransport

from ecluse.config import config_from_string
from ecluse.errors import EcluseError
from ecluse.pool.janitor import fast_close_sessions
from ecluse.pool.registry import PoolRegistry
from ecluse.protocol import codes
from ecluse.server.connection import ServerConnection, ServerState

CONFIG = """
[databases]
app = host=127.0.0.1 port=5432 dbname=app
[pgbouncer]
auth_type = trust
pool_mode = {mode}
default_pool_size = 10
"""


class Client:
    def __init__(self) -> None:
        self.errors: list[EcluseError] = []

    def fatal(self, error: Exception) -> None:
        assert isinstance(error, EcluseError)
        self.errors.append(error)


def linked_server(pool, *, marked: bool, status: int = codes.STATUS_IDLE,
                  running: bool = False) -> tuple[ServerConnection, Client]:
    server = ServerConnection(pool, None, "127.0.0.1", 5432,
                              asyncio.get_running_loop().create_future())
    server.transport = FakeTransport()
    pool.login.add(server)
    pool._set_state(server, ServerState.ACTIVE)
    client = Client()
    server.client = client
    server.close_when_released = marked
    server.tracker.status = status
    if running:
        server.tracker.on_client_message(codes.FE_QUERY)
    return server, client


def test_only_marked_session_servers_between_transactions_lose_their_client():
    async def run() -> None:
        config = config_from_string(CONFIG.format(mode="session"))
        pool = PoolRegistry(config).get_pool(config.database("app"), "postgres")
        _, due = linked_server(pool, marked=True)
        _, in_transaction = linked_server(pool, marked=True, status=ord("T"))
        _, failed_transaction = linked_server(pool, marked=True, status=ord("E"))
        _, running = linked_server(pool, marked=True, running=True)
        _, unmarked = linked_server(pool, marked=False)
        fast_close_sessions([pool])
        assert [(e.message, e.sqlstate) for e in due.errors] == [
            ("database configuration changed", "08P01")]
        for client in (in_transaction, failed_transaction, running, unmarked):
            assert client.errors == []

    asyncio.run(run())


@pytest.mark.parametrize("mode", ["transaction", "statement"])
def test_other_modes_are_left_to_release(mode):
    """There a marked server closes when its transaction ends anyway."""
    async def run() -> None:
        config = config_from_string(CONFIG.format(mode=mode))
        pool = PoolRegistry(config).get_pool(config.database("app"), "postgres")
        _, client = linked_server(pool, marked=True)
        fast_close_sessions([pool])
        assert client.errors == []

    asyncio.run(run())
