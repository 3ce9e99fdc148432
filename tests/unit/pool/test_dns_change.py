"""A server host name that resolves elsewhere retires the servers connected to its old
addresses (PoolRegistry._on_dns_change): idle ones at once, busy ones when released;
servers of other names, or at an address the name still has, stay."""

from __future__ import annotations

import asyncio

from wire import FakeTransport

from ecluse.config import config_from_string
from ecluse.pool.registry import PoolRegistry
from ecluse.server.connection import ServerConnection, ServerState

CONFIG = """
[databases]
app = host=db.example,other.example port=5432
[pgbouncer]
auth_type = trust
pool_mode = transaction
"""


def test_servers_at_an_old_address_are_retired():
    async def main():
        config = config_from_string(CONFIG)
        registry = PoolRegistry(config)
        pool = registry.get_pool(config.database("app"), "postgres")
        servers = {}
        for name, host, addr, state in (("idle_moved", "db.example", "10.0.0.1", ServerState.IDLE),
                                        ("busy_moved", "db.example", "10.0.0.1",
                                         ServerState.ACTIVE),
                                        ("idle_kept", "db.example", "10.0.0.2", ServerState.IDLE),
                                        ("other_host", "other.example", "10.0.0.1",
                                         ServerState.IDLE)):
            server = ServerConnection(pool, None, host, 5432,
                                      asyncio.get_running_loop().create_future())
            server.transport = FakeTransport(peername=(addr, 5432))
            pool.login.add(server)
            pool._set_state(server, state)
            servers[name] = server
        registry._on_dns_change("db.example", ("10.0.0.2", "10.0.0.3"))
        assert servers["idle_moved"].transport.closed
        assert servers["idle_moved"] not in pool.idle
        assert servers["busy_moved"].close_when_released and \
            not servers["busy_moved"].transport.closed
        for kept in ("idle_kept", "other_host"):
            assert not servers[kept].transport.closed and servers[kept] in pool.idle
            assert not servers[kept].close_when_released

    asyncio.run(main())
