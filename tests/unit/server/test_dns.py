"""server/dns.py: lookups kept dns_max_ttl (failures dns_nxdomain_ttl), shared by
concurrent connects, addresses handed out in turn with the others as fall-backs.

The system resolver is replaced by a table (the cache's own logic is under test,
not the resolver's); time is a fake clock.
"""

from __future__ import annotations

import asyncio
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ecluse.server.dns import DnsCache, is_address

MAX_TTL = 15.0
NX_TTL = 5.0


class Resolver:
    """getaddrinfo's answers by name; counts the queries."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.queries: list[str] = []
        self.gate: asyncio.Event | None = None  # when set: lookups wait for it

    async def getaddrinfo(self, host, port, *, type=0, **_kw):
        self.queries.append(host)
        if self.gate is not None:
            await self.gate.wait()
        if host not in self.answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, type, 6, "", (a, 0))
                for a in self.answers[host]]


def run(resolver: Resolver, body):
    async def main():
        loop = asyncio.get_running_loop()
        loop.getaddrinfo = resolver.getaddrinfo
        return await body()
    return asyncio.run(main())


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_addresses_rotate_and_are_kept_for_max_ttl() -> None:
    resolver = Resolver({"db.example": ["10.0.0.1", "10.0.0.2", "10.0.0.2", "::1"]})
    clock = Clock()
    cache = DnsCache(clock)

    async def body():
        got = [await cache.addresses("db.example", MAX_TTL, NX_TTL) for _ in range(4)]
        assert got == [("10.0.0.1", "10.0.0.2", "::1"), ("10.0.0.2", "::1", "10.0.0.1"),
                       ("::1", "10.0.0.1", "10.0.0.2"), ("10.0.0.1", "10.0.0.2", "::1")]
        assert resolver.queries == ["db.example"]  # one lookup, duplicates dropped
        assert cache.rows() == [("db.example", 15, "10.0.0.1,10.0.0.2,::1")]
        clock.now += MAX_TTL - 0.1
        await cache.addresses("db.example", MAX_TTL, NX_TTL)
        assert len(resolver.queries) == 1
        clock.now += 0.1
        resolver.answers["db.example"] = ["10.0.0.9"]
        assert await cache.addresses("db.example", MAX_TTL, NX_TTL) == ("10.0.0.9",)
        assert len(resolver.queries) == 2

    run(resolver, body)


def test_a_failed_lookup_is_kept_for_nxdomain_ttl() -> None:
    resolver = Resolver({})
    clock = Clock()
    cache = DnsCache(clock)

    async def body():
        for _ in range(3):
            with pytest.raises(OSError, match=r"could not resolve host 'gone\.example'"):
                await cache.addresses("gone.example", MAX_TTL, NX_TTL)
        assert resolver.queries == ["gone.example"]
        assert cache.rows() == [("gone.example", 5, "")]
        clock.now += NX_TTL
        resolver.answers["gone.example"] = ["10.1.1.1"]
        assert await cache.addresses("gone.example", MAX_TTL, NX_TTL) == ("10.1.1.1",)
        assert len(resolver.queries) == 2

    run(resolver, body)


def test_concurrent_connects_share_one_lookup_and_survive_a_cancel() -> None:
    resolver = Resolver({"db.example": ["10.0.0.1", "10.0.0.2"]})
    cache = DnsCache(Clock())

    async def body():
        resolver.gate = asyncio.Event()
        waiters = [asyncio.ensure_future(cache.addresses("db.example", MAX_TTL, NX_TTL))
                   for _ in range(3)]
        await asyncio.sleep(0)
        assert cache.pending() == 1
        waiters[0].cancel()  # a connect timing out must not end the lookup
        await asyncio.sleep(0)
        resolver.gate.set()
        results = await asyncio.gather(*waiters[1:])
        assert resolver.queries == ["db.example"]
        assert sorted(r[0] for r in results) == ["10.0.0.1", "10.0.0.2"]
        assert cache.pending() == 0 and len(cache) == 1

    run(resolver, body)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "fe80::1%eth0", "/var/run/postgresql"])
def test_addresses_and_directories_are_not_looked_up(host) -> None:
    resolver = Resolver({})
    cache = DnsCache(Clock())

    async def body():
        assert await cache.addresses(host, MAX_TTL, NX_TTL) == ()

    run(resolver, body)
    assert is_address(host) and resolver.queries == [] and len(cache) == 0


@given(steps=st.lists(st.tuples(st.floats(0, 40), st.booleans()), max_size=30),
       addrs=st.lists(st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.0.3"]), min_size=1,
                      max_size=4, unique=True))
def test_lookups_and_turns_follow_the_model(steps, addrs) -> None:
    """Any pattern of connects over time: a lookup happens exactly when the last one
    has expired (max_ttl after a success, nxdomain_ttl after a failure), and each
    connect is offered every address once, starting one further than the last."""
    resolver = Resolver({})
    clock = Clock()
    cache = DnsCache(clock)

    async def body():
        expires, lookups, turn, failing = 0.0, 0, 0, False
        for wait, resolvable in steps:
            clock.now += wait
            if resolvable:
                resolver.answers["db.example"] = addrs
            else:
                resolver.answers.pop("db.example", None)
            looked_up = clock.now >= expires
            if looked_up:
                lookups += 1
                ok = resolvable
                expires = clock.now + (MAX_TTL if ok else NX_TTL)
                failing = not ok
            if failing:
                with pytest.raises(OSError):
                    await cache.addresses("db.example", MAX_TTL, NX_TTL)
            else:
                got = await cache.addresses("db.example", MAX_TTL, NX_TTL)
                first = turn % len(addrs)
                assert got == tuple(addrs[first:] + addrs[:first])
                turn += 1
            assert len(resolver.queries) == lookups

    run(resolver, body)


def test_refresh_looks_expired_names_up_again_and_reports_a_change() -> None:
    resolver = Resolver({"db.example": ["10.0.0.1", "10.0.0.2"], "old.example": ["10.9.9.9"]})
    clock = Clock()
    cache = DnsCache(clock)
    changes: list[tuple[str, tuple[str, ...]]] = []
    cache.on_change = lambda host, addrs: changes.append((host, addrs))

    async def body():
        await cache.addresses("db.example", MAX_TTL, NX_TTL)
        await cache.addresses("old.example", MAX_TTL, NX_TTL)
        assert changes == []  # a first answer is no change
        in_use = {"db.example"}
        cache.refresh(in_use, MAX_TTL, NX_TTL)  # not expired yet: nothing to do
        await asyncio.sleep(0)
        assert resolver.queries == ["db.example", "old.example"]
        assert [row[0] for row in cache.rows()] == ["db.example"]  # old.example dropped
        clock.now += MAX_TTL
        resolver.answers["db.example"] = ["10.0.0.2", "10.0.0.1"]  # same set, other order
        cache.refresh(in_use, MAX_TTL, NX_TTL)
        await asyncio.sleep(0)
        assert resolver.queries[-1] == "db.example" and changes == []
        clock.now += MAX_TTL
        resolver.answers["db.example"] = ["10.0.0.3"]  # failed over
        cache.refresh(in_use, MAX_TTL, NX_TTL)
        await asyncio.sleep(0)
        assert changes == [("db.example", ("10.0.0.3",))]
        assert await cache.addresses("db.example", MAX_TTL, NX_TTL) == ("10.0.0.3",)
        assert len(resolver.queries) == 4  # the connect used the refreshed entry

    run(resolver, body)
