"""Cancel requests passed on to the other ecluse (or PgBouncer) processes of a group
([peers]), at most pool_size at a time per peer, the rest queued in arrival order.

A burst of cancels (a slow or restarting PostgreSQL makes clients cancel at
once) must not open an unbounded number of connections to a peer: as
PgBouncer's peer pools, each peer takes pool_size cancels in flight
(default_pool_size unless its [peers] line says), and the others wait their
turn. SHOW PEER_POOLS reads the counts.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

Start = Callable[[Callable[[], None]], Coroutine[Any, Any, None]]


@dataclass(slots=True)
class PeerLane:
    """One peer's cancels: in flight, and waiting for a free place."""

    active: int = 0
    waiting: deque[Start] = field(default_factory=deque)


class PeerCancels:
    """The lanes of every peer, for one worker."""

    def __init__(self, spawn: Callable[[Coroutine[Any, Any, None]], object]) -> None:
        self._spawn = spawn
        self.lanes: dict[int, PeerLane] = {}

    def submit(self, peer: int, limit: int, start: Start) -> None:
        """Run ``start(finished)`` for ``peer`` now if fewer than ``limit`` of its
        cancels are in flight, else once one ends; ``start`` must call ``finished``
        when its cancel is over, whatever came of it."""
        lane = self.lanes.setdefault(peer, PeerLane())
        if lane.active < max(limit, 1):
            self._run(peer, lane, start)
        else:
            lane.waiting.append(start)

    def _run(self, peer: int, lane: PeerLane, start: Start) -> None:
        lane.active += 1
        ended = False

        def finished() -> None:
            nonlocal ended
            if ended:
                return
            ended = True
            lane.active -= 1
            if lane.waiting:
                self._run(peer, lane, lane.waiting.popleft())
            elif not lane.active:
                self.lanes.pop(peer, None)

        self._spawn(start(finished))

    def counts(self, peer: int) -> tuple[int, int]:
        """(in flight, waiting) for ``peer``."""
        lane = self.lanes.get(peer)
        return (lane.active, len(lane.waiting)) if lane is not None else (0, 0)
