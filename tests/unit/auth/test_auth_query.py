"""auth/auth_query.py: reading auth_query's rows, and the short-lived secret cache."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from ecluse.auth.auth_query import AuthQueryCache, AuthQueryTarget, secret_from_rows
from ecluse.errors import AuthLookupFailed, ServerLoginFailed

TARGET = AuthQueryTarget("/tmp", 5432, "app", "pgbouncer", None,
                         "SELECT usename, passwd FROM pg_shadow WHERE usename=$1", 5.0)
MD5 = "md5" + "0" * 32


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Server:
    """A fake auth_query runner: secrets by user, counting calls."""

    def __init__(self, secrets: dict[str, str | None], delay: float = 0.0):
        self.secrets = secrets
        self.delay = delay
        self.calls: list[str] = []
        self.fail: Exception | None = None

    async def __call__(self, target: AuthQueryTarget, user: str) -> list:
        self.calls.append(user)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        if user not in self.secrets:
            return []
        secret = self.secrets[user]
        return [[user.encode(), None if secret is None else secret.encode()]]


def test_secret_from_rows() -> None:
    assert secret_from_rows([]) is None
    assert secret_from_rows([[b"alice", None]]) is None
    assert secret_from_rows([[b"alice", b""]]) is None
    assert secret_from_rows([[b"alice", MD5.encode()]]) == MD5
    with pytest.raises(AuthLookupFailed, match="more than one row"):
        secret_from_rows([[b"a", b"x"], [b"b", b"y"]])
    with pytest.raises(AuthLookupFailed, match="two columns"):
        secret_from_rows([[b"a"]])
    with pytest.raises(AuthLookupFailed, match="UTF-8"):
        secret_from_rows([[b"a", b"\xff"]])


def test_results_are_cached_for_ttl_seconds_negative_ones_too() -> None:
    clock = Clock()
    cache = AuthQueryCache(ttl=5.0, clock=clock)
    server = Server({"alice": MD5})

    async def run() -> None:
        assert await cache.lookup(TARGET, "alice", server) == MD5
        assert await cache.lookup(TARGET, "alice", server) == MD5
        assert await cache.lookup(TARGET, "mallory", server) is None
        assert await cache.lookup(TARGET, "mallory", server) is None
        assert server.calls == ["alice", "mallory"]
        clock.now += 5.0
        server.secrets["alice"] = "md5" + "1" * 32  # password changed on the server
        assert await cache.lookup(TARGET, "alice", server) == "md5" + "1" * 32
        assert server.calls == ["alice", "mallory", "alice"]
        # Another database (or auth_user, or query) is another cache slot.
        assert await cache.lookup(dataclasses.replace(TARGET, dbname="other"), "alice",
                                  server) == "md5" + "1" * 32
        assert len(server.calls) == 4

    asyncio.run(run())


def test_cache_is_bounded() -> None:
    clock = Clock()
    cache = AuthQueryCache(ttl=60.0, max_entries=3, clock=clock)
    server = Server({})

    async def run() -> None:
        for i in range(10):
            clock.now += 1
            await cache.lookup(TARGET, f"user{i}", server)
        assert len(cache) == 3
        assert cache.cached(TARGET, "user9") == (True, None)
        assert cache.cached(TARGET, "user0") == (False, None)

    asyncio.run(run())


def test_concurrent_lookups_share_one_query_and_failures_are_not_cached() -> None:
    cache = AuthQueryCache()
    server = Server({"alice": MD5}, delay=0.01)

    async def run() -> None:
        results = await asyncio.gather(*(cache.lookup(TARGET, "alice", server)
                                         for _ in range(5)))
        assert results == [MD5] * 5
        assert server.calls == ["alice"]
        server.fail = ServerLoginFailed('password authentication failed for user "pgbouncer"',
                                        sqlstate="28P01")
        outcomes = await asyncio.gather(*(cache.lookup(TARGET, "bob", server)
                                          for _ in range(3)), return_exceptions=True)
        assert all(isinstance(o, AuthLookupFailed) for o in outcomes)
        assert outcomes[0].sqlstate == "28P01"
        assert "pgbouncer" in outcomes[0].message
        server.fail = None
        assert await cache.lookup(TARGET, "bob", server) is None
        assert server.calls == ["alice", "bob", "bob"]

    asyncio.run(run())


def test_concurrency_is_bounded() -> None:
    cache = AuthQueryCache(max_concurrent=2)
    running = 0
    peak = 0

    async def runner(target: AuthQueryTarget, user: str) -> list:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.005)
        running -= 1
        return []

    async def run() -> None:
        await asyncio.gather(*(cache.lookup(TARGET, f"u{i}", runner) for i in range(8)))

    asyncio.run(run())
    assert peak == 2


def test_connection_errors_become_lookup_failures() -> None:
    cache = AuthQueryCache()

    async def refused(target: AuthQueryTarget, user: str) -> list:
        raise ConnectionRefusedError(111, "Connection refused")

    async def slow(target: AuthQueryTarget, user: str) -> list:
        raise TimeoutError

    async def run() -> None:
        with pytest.raises(AuthLookupFailed, match="cannot connect"):
            await cache.lookup(TARGET, "alice", refused)
        with pytest.raises(AuthLookupFailed, match="timeout"):
            await cache.lookup(TARGET, "alice", slow)
        assert len(cache) == 0

    asyncio.run(run())
