"""query_wait_timeout: the janitor's Pool.expire_waiters fails exactly the clients
queued for longer than the timeout, oldest first, and keeps the others queued in
order, whatever clients gave up meanwhile or whatever a failed client's callback
does to the queue."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from ecluse.config import config_from_string
from ecluse.errors import PoolTimeout
from ecluse.pool.registry import PoolRegistry
from ecluse.pool.waiters import Waiter

CONFIG = """
[databases]
app = host=127.0.0.1 port=1 dbname=app
[pgbouncer]
auth_type = trust
pool_mode = transaction
query_wait_timeout = 10
"""


class Client:
    def __init__(self, index: int, queue_more=None) -> None:
        self.index = index
        self.failed: list[Exception] = []
        self.queue_more = queue_more  # called when its wait fails

    def on_server_assigned(self, server) -> None:
        raise AssertionError("no server exists in this test")

    def on_wait_failed(self, error: Exception) -> None:
        self.failed.append(error)
        if self.queue_more is not None:
            self.queue_more()


@settings(max_examples=200, deadline=None)
@given(ages=st.lists(st.integers(0, 20), max_size=12).map(sorted).map(lambda a: a[::-1]),
       cancelled=st.sets(st.integers(0, 11)), requeue=st.sets(st.integers(0, 11)))
def test_only_the_overdue_fail_in_arrival_order(ages, cancelled, requeue):
    """``ages``: seconds each client has waited, oldest first (arrival order)."""
    async def run() -> None:
        config = config_from_string(CONFIG)
        pool = PoolRegistry(config).get_pool(config.database("app"), "postgres")
        pool.paused = True  # nothing launches or hands over: the queue alone is tested
        now = 1000.0
        failed_order: list[int] = []
        late: list[Client] = []

        def requeue_one() -> None:
            # A failure's callback queues a newcomer (e.g. another client's request).
            newcomer = Client(100 + len(late))
            late.append(newcomer)
            waiter = Waiter(newcomer)
            waiter.since = now
            pool.waiters.push(waiter)

        clients = []
        for i, age in enumerate(ages):
            client = Client(i, requeue_one if i in requeue else None)
            waiter = Waiter(client)
            waiter.since = now - age
            pool.waiters.push(waiter)
            clients.append((client, waiter))
        for i, (_client, waiter) in enumerate(clients):
            if i in cancelled:
                waiter.cancel()
        for client, _waiter in clients:
            original = client.on_wait_failed

            def record(error, client=client, original=original) -> None:
                failed_order.append(client.index)
                original(error)
            client.on_wait_failed = record
        pool.expire_waiters(now)
        due = [i for i, age in enumerate(ages) if i not in cancelled and age >= 10]
        assert failed_order == due
        for i, (client, _waiter) in enumerate(clients):
            assert len(client.failed) == (i in due)
            assert all(isinstance(e, PoolTimeout) for e in client.failed)
        left = [w.client for w in pool.waiters]
        kept = [c for i, (c, _w) in enumerate(clients) if i not in cancelled and i not in due]
        assert left == kept + late
        assert len(pool.waiters) == len(left)

    asyncio.run(run())
