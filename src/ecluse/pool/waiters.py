"""Clients waiting for a server: a FIFO of Waiter objects with timeouts.

A Waiter can refuse a hand-over once it has given up (timed out, cancelled,
disconnected), so a server is never given to a client that already left.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ecluse.server.connection import ServerConnection


class WaitingClient(Protocol):
    """What a pool needs from a client that waits for a server."""

    def on_server_assigned(self, server: ServerConnection) -> None: ...
    def on_wait_failed(self, error: Exception) -> None: ...


class Waiter:
    """One client's place in the queue."""

    __slots__ = ("client", "done", "since", "timer")

    def __init__(self, client: WaitingClient):
        self.client = client
        self.since = time.monotonic()
        self.done = False
        self.timer: asyncio.TimerHandle | None = None

    def waited(self) -> float:
        return time.monotonic() - self.since

    def assign(self, server: ServerConnection) -> bool:
        """Hand a server over; False if this waiter already gave up."""
        if self.done:
            return False
        self._finish()
        self.client.on_server_assigned(server)
        return True

    def fail(self, error: Exception) -> bool:
        """Fail the wait; False if it had already ended."""
        if self.done:
            return False
        self._finish()
        self.client.on_wait_failed(error)
        return True

    def cancel(self) -> None:
        """End the wait silently (the client left or was cancelled)."""
        self._finish()

    def _finish(self) -> None:
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class WaiterQueue:
    """FIFO of waiters; finished waiters are skipped lazily."""

    __slots__ = ("queue",)

    def __init__(self) -> None:
        # May still hold finished waiters; empty means nobody waits, which the pool
        # tests at every transaction without a call.
        self.queue: deque[Waiter] = deque()

    def push(self, waiter: Waiter) -> None:
        self.queue.append(waiter)

    def pop(self) -> Waiter | None:
        q = self.queue
        while q:
            w = q.popleft()
            if not w.done:
                return w
        return None

    def __len__(self) -> int:
        return sum(1 for w in self.queue if not w.done)

    def __bool__(self) -> bool:
        q = self.queue
        while q and q[0].done:
            q.popleft()
        return bool(q)

    def __iter__(self) -> Iterator[Waiter]:
        return (w for w in self.queue if not w.done)

    def oldest_wait(self) -> float:
        for w in self.queue:
            if not w.done:
                return w.waited()
        return 0.0
