"""autodb_idle_timeout: PoolRegistry.drop_idle_autodbs removes the pools of a database
made from the "*" entry once it has had no client and no server for longer than
the timeout, and nothing else: not a listed database, not one in use or paused,
not when the timeout is 0."""

from __future__ import annotations

import asyncio

from ecluse.config import config_from_string
from ecluse.pool.registry import PoolRegistry

CONFIG = """
[databases]
app = host=127.0.0.1 port=1 dbname=app
* = host=127.0.0.1 port=1
[pgbouncer]
auth_type = trust
pool_mode = transaction
"""


def _registry(text: str = CONFIG) -> PoolRegistry:
    return PoolRegistry(config_from_string(text))


def _pool(registry: PoolRegistry, database: str, user: str = "alice"):
    return registry.get_pool(registry.config.database(database), user)


def test_an_unused_autodb_goes_after_the_timeout_with_all_its_pools():
    async def run() -> None:
        registry = _registry()
        auto_a, auto_b = _pool(registry, "auto", "alice"), _pool(registry, "auto", "bob")
        listed = _pool(registry, "app")
        assert registry.drop_idle_autodbs({}, 10, 100.0) == []  # its clock starts
        assert registry.drop_idle_autodbs({}, 10, 110.0) == []  # not longer than 10 s
        assert registry.drop_idle_autodbs({}, 10, 110.5) == ["auto"]
        assert set(registry.pools) == {("app", "alice")}
        assert auto_a.closed and auto_b.closed and not listed.closed
        again = _pool(registry, "auto")  # a client coming back gets a new pool
        assert again is not auto_a and not again.closed
        assert registry.drop_idle_autodbs({}, 10, 1000.0) == []  # a new clock

    asyncio.run(run())


def test_a_client_or_a_server_keeps_it_and_restarts_the_clock():
    async def run() -> None:
        registry = _registry()
        pool = _pool(registry, "auto")
        registry.drop_idle_autodbs({}, 10, 100.0)
        assert registry.drop_idle_autodbs({"auto": 1}, 10, 200.0) == []  # a client
        registry.drop_idle_autodbs({}, 10, 201.0)  # unused again from here
        assert registry.drop_idle_autodbs({}, 10, 210.0) == []
        pool.launching = 1  # a server on its way counts as a server
        assert registry.drop_idle_autodbs({}, 10, 300.0) == []
        pool.launching = 0
        registry.drop_idle_autodbs({}, 10, 301.0)
        assert registry.drop_idle_autodbs({}, 10, 312.0) == ["auto"]

    asyncio.run(run())


def test_paused_listed_or_timeout_zero_are_kept():
    async def run() -> None:
        registry = _registry()
        _pool(registry, "auto")
        _pool(registry, "app")
        registry.paused_dbs.add("auto")  # PAUSE auto
        registry.drop_idle_autodbs({}, 10, 0.0)
        assert registry.drop_idle_autodbs({}, 10, 100.0) == []
        registry.paused_dbs.clear()
        registry.drop_idle_autodbs({}, 0, 100.0)
        assert registry.drop_idle_autodbs({}, 0, 1000.0) == []  # 0: never
        assert set(registry.pools) == {("auto", "alice"), ("app", "alice")}
        no_fallback = _registry(CONFIG.replace("* = host=127.0.0.1 port=1\n", ""))
        _pool(no_fallback, "app")
        no_fallback.drop_idle_autodbs({}, 10, 0.0)
        assert no_fallback.drop_idle_autodbs({}, 10, 100.0) == []

    asyncio.run(run())
