"""Clients waiting for a server: a FIFO of Waiter objects (the pool expires them).

A Waiter can refuse a hand-over once it has given up (timed out, cancelled,
disconnected), so a server is never given to a client that already left.
"""

from __future__ import annotations

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
    def on_long_wait(self) -> None: ...


class Waiter:
    """One client's place in the queue."""

    __slots__ = ("client", "done", "queue", "since")

    def __init__(self, client: WaitingClient):
        self.client = client
        self.since = time.monotonic()
        self.done = False
        self.queue: WaiterQueue | None = None  # counted among its live waiters

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
        queue = self.queue
        if queue is not None:  # gave up while queued
            queue.live -= 1
            self.queue = None
            if not queue.live:
                queue.queue.clear()  # only finished ones are left


class WaiterQueue:
    """FIFO of waiters; finished waiters are skipped lazily, and counted out at once.

    ``live`` counts the waiters not finished, and is 0 only when the deque is
    empty: the pool tests ``live`` (an attribute, not a call) at every transaction.
    """

    __slots__ = ("live", "queue")

    def __init__(self) -> None:
        # May still hold finished waiters among live ones.
        self.queue: deque[Waiter] = deque()
        self.live = 0

    def push(self, waiter: Waiter) -> None:
        waiter.queue = self
        self.live += 1
        self.queue.append(waiter)

    def pop(self) -> Waiter | None:
        q = self.queue
        while q:
            w = q.popleft()
            if not w.done:
                w.queue = None
                self.live -= 1
                if not self.live:
                    q.clear()  # only finished ones are left
                return w
        return None

    def __len__(self) -> int:
        return self.live

    def __bool__(self) -> bool:
        return self.live > 0

    def __iter__(self) -> Iterator[Waiter]:
        return (w for w in self.queue if not w.done)

    def first(self) -> Waiter | None:
        """The live waiter queued longest, or None; finished ones ahead of it are
        dropped on the way."""
        q = self.queue
        while q and q[0].done:
            q.popleft()
        return q[0] if q else None

    def oldest_wait(self) -> float:
        w = self.first()
        return w.waited() if w is not None else 0.0
