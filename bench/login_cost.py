"""What ecluse's Python costs per connection, warm: login, Terminate, close, in process.

A diagnostic, not a comparison (no PostgreSQL, no sockets, no pgbench): one
ClientContext with a transaction-mode pool whose server parameters are filled in
beforehand, and a FrontendSession per connection on a transport that only keeps
what is written. Each connection is made, sent pgbench's StartupMessage (trust
auth), then Terminate, then told its connection is lost, as uvloop would. It
prints the best of five timed rounds in µs per connection and what the cyclic
garbage collector had to free per connection (0 is the goal: a session left in a
reference cycle is not freed, nor its memory reused, until a collection walks
it).

The live figure under ``pgbench -C`` is several times this one (bench/README.md,
"Where the time goes"): between two connections pgbench, PostgreSQL and the
kernel evict this code and its objects from the CPU caches.

    .venv/bin/python bench/login_cost.py [--connections 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import struct
import time
from collections.abc import Callable

import uvloop

from ecluse.config import config_from_string
from ecluse.frontend.context import ClientContext
from ecluse.frontend.session import ClientState, FrontendSession
from ecluse.pool.registry import PoolRegistry
from ecluse.protocol.startup import encode_startup_message

CONFIG = """
[databases]
bench = host=127.0.0.1 port=1
[pgbouncer]
auth_type = trust
pool_mode = transaction
default_pool_size = 20
log_connections = 0
log_disconnections = 0
"""
# What PostgreSQL 15 reports at login (what the pool would have learnt from a server).
SERVER_PARAMS = {"application_name": "", "client_encoding": "UTF8", "DateStyle": "ISO, MDY",
                 "default_transaction_read_only": "off", "in_hot_standby": "off",
                 "integer_datetimes": "on", "IntervalStyle": "postgres", "is_superuser": "on",
                 "server_encoding": "UTF8", "server_version": "15.0",
                 "session_authorization": "postgres", "standard_conforming_strings": "on",
                 "TimeZone": "UTC"}
# pgbench's StartupMessage.
STARTUP = encode_startup_message({"user": "postgres", "database": "bench",
                                   "application_name": "pgbench",
                                   "client_encoding": "UTF8"})
_TERMINATE = b"X" + struct.pack("!I", 4)


class Transport(asyncio.Transport):
    """Keeps the last write and counts them; a TCP peer's address."""

    def __init__(self) -> None:
        super().__init__()
        self.last = b""
        self.writes = 0
        self.closed = False

    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 40000) if name == "peername" else default

    def write(self, data) -> None:
        self.last = data
        self.writes += 1

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _connection(ctx: ClientContext) -> None:
    session = FrontendSession(ctx)
    transport = Transport()
    session.connection_made(transport)
    session.data_received(STARTUP)
    if session.state is not ClientState.IDLE:
        raise SystemExit(f"login did not complete: {session.state} {transport.last!r}")
    session.data_received(_TERMINATE)
    session.connection_lost(None)


def timed_rounds(run: Callable[[], int]) -> tuple[float, float]:
    """Five timed rounds of ``run`` (which returns how many it did, connections or
    transactions): the best round's µs per unit, and what the cyclic garbage collector
    freed per unit over all five. The collector runs on its own during the rounds, as
    it would live; what each collection freed is added up, a final one's included."""
    gc.collect()
    freed = 0

    def count_freed(phase: str, info: dict) -> None:
        nonlocal freed
        if phase == "stop":
            freed += info["collected"]

    gc.callbacks.append(count_freed)
    rounds = []
    done = 0
    try:
        for _ in range(5):
            start = time.perf_counter()
            n = run()
            rounds.append((time.perf_counter() - start) / n * 1e6)
            done += n
            gc.collect()
    finally:
        gc.callbacks.remove(count_freed)
    return min(rounds), freed / done


async def _measure(connections: int) -> tuple[float, float]:
    config = config_from_string(CONFIG)
    ctx = ClientContext(config, PoolRegistry(config))
    pool = ctx.registry.get_pool(config.database("bench"), "postgres")
    pool.default_params = dict(SERVER_PARAMS)
    for _ in range(2000):  # warm: the welcome cache, the framing rules, the code
        _connection(ctx)

    def round_() -> int:
        for _ in range(connections):
            _connection(ctx)
        return connections

    return timed_rounds(round_)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=20000,
                        help="connections per timed round (5 rounds)")
    args = parser.parse_args()
    us, garbage = uvloop.run(_measure(args.connections))
    print(f"login + Terminate + close, warm, in process: {us:.2f} µs per connection")
    print(f"left to the cyclic garbage collector: {garbage:.2f} objects per connection")


if __name__ == "__main__":
    main()
