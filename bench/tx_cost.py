"""What ecluse's Python costs per transaction, warm: pgbench's SELECT, in process.

A diagnostic, not a comparison (no PostgreSQL, no sockets, no pgbench), the
per-transaction twin of login_cost.py: one transaction-mode pool holding one
server connection whose login is taken as done, on transports that only count
writes, and two logged-in client sessions. Each transaction is pgbench -S's
Query handed to a session's data_received and PostgreSQL's reply to the
server's, as uvloop would deliver them. Two loops:

- ``express``: one client, the server idle between its transactions (the
  express path both ways, frontend/express.py);
- ``queued``: two clients, the second always queued while the first's
  transaction runs, so every reply hands the server to the waiting client
  (Pool.take_back), as under load with more clients than servers.

It prints the best of five timed rounds in µs per transaction, and what the
cyclic garbage collector freed per transaction (0 is the goal).

    .venv/bin/python bench/tx_cost.py [--transactions 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import struct

import uvloop
from login_cost import CONFIG, SERVER_PARAMS, STARTUP, Transport, timed_rounds

from ecluse.config import config_from_string
from ecluse.frontend.context import ClientContext
from ecluse.frontend.session import ClientState, FrontendSession
from ecluse.pool.pool import Pool
from ecluse.pool.registry import PoolRegistry
from ecluse.server.connection import ServerConnection, ServerState

# One server for the pool: the second client of the queued loop must wait.
_CONFIG = CONFIG.replace("default_pool_size = 20", "default_pool_size = 1")


def _msg(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


# pgbench -S's Query, and PostgreSQL's reply: one int4 column, one row, idle.
QUERY = _msg(b"Q", b"SELECT abalance FROM pgbench_accounts WHERE aid = 12345;\0")
REPLY = (_msg(b"T", b"\0\x01abalance\0" + bytes(6) + b"\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0")
         + _msg(b"D", b"\0\x01\0\0\0\x010") + _msg(b"C", b"SELECT 1\0") + _msg(b"Z", b"I"))


class Bench:
    """One pool, its one server, two logged-in clients."""

    def __init__(self) -> None:
        config = config_from_string(_CONFIG)
        ctx = ClientContext(config, PoolRegistry(config))
        self.pool: Pool = ctx.registry.get_pool(config.database("bench"), "postgres")
        self.pool.default_params = dict(SERVER_PARAMS)
        server = ServerConnection(self.pool, None, "127.0.0.1", 5432,
                                  asyncio.get_running_loop().create_future())
        server.transport = Transport()
        # In step with the clients: no SET before their transactions.
        server.params = dict(SERVER_PARAMS, application_name="pgbench")
        server.stats = self.pool.stats
        server._framer.set_inspect(frozenset(b"ZSEACIsGHW"))  # as its login leaves it
        self.pool.login.add(server)
        self.pool._set_state(server, ServerState.IDLE)
        self.server = server
        self.clients = []
        for _ in range(2):
            session = FrontendSession(ctx)
            session.connection_made(Transport())
            session.data_received(STARTUP)
            if session.state is not ClientState.IDLE:
                raise SystemExit(f"login did not complete: {session.state}")
            self.clients.append(session)

    def express(self, n: int) -> int:
        """``n`` transactions of one client; returns how many ran."""
        client, server = self.clients[0], self.server
        for _ in range(n):
            client.data_received(QUERY)
            server.data_received(REPLY)
        self._check_idle()
        return n

    def queued(self, n: int) -> int:
        """``2 n`` transactions of two clients, one always queued; returns how many."""
        first, second = self.clients
        server = self.server
        first.data_received(QUERY)
        for _ in range(n):
            second.data_received(QUERY)  # queues: the server is first's
            server.data_received(REPLY)  # first's reply; the server goes to second
            first.data_received(QUERY)
            server.data_received(REPLY)
        server.data_received(REPLY)
        self._check_idle()
        return 2 * n

    def _check_idle(self) -> None:
        if any(c.state is not ClientState.IDLE for c in self.clients) or \
                self.server.state is not ServerState.IDLE:
            raise SystemExit("a transaction did not end: the replies are out of step")


async def _measure(transactions: int) -> dict[str, tuple[float, float]]:
    bench = Bench()
    results = {}
    for name in ("express", "queued"):
        loop = getattr(bench, name)
        loop(max(1, transactions // 5))  # warm
        per_round = transactions // (2 if name == "queued" else 1)
        results[name] = timed_rounds(lambda loop=loop, n=per_round: loop(n))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--transactions", type=int, default=100_000,
                        help="transactions per timed round (5 rounds per loop)")
    args = parser.parse_args()
    for name, (us, garbage) in uvloop.run(_measure(args.transactions)).items():
        print(f"{name}: {us:.2f} µs per transaction, warm, in process; "
              f"{garbage:.2f} objects per transaction left to the cyclic garbage collector")


if __name__ == "__main__":
    main()
