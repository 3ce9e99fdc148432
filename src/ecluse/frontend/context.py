"""The per-worker state a client session reads: config, pools, cancel keys.

The worker builds one ClientContext and hands it to every session it accepts.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ecluse.config import Config
from ecluse.pool.registry import PoolRegistry

if TYPE_CHECKING:
    from ecluse.frontend.session import FrontendSession


@dataclass(slots=True)
class ClientContext:
    """Shared by all sessions of one worker."""

    config: Config
    registry: PoolRegistry
    clients: set[FrontendSession] = field(default_factory=set)
    cancel_keys: dict[int, FrontendSession] = field(default_factory=dict)
    shutting_down: bool = False
    login_failures: int = 0
    tasks: set[asyncio.Task] = field(default_factory=set)

    def spawn(self, coro: Coroutine) -> None:
        """Run a background coroutine, keeping a reference until it ends."""
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def new_cancel_key(self, session: FrontendSession) -> tuple[int, bytes]:
        """Issue an unpredictable, unique (process id, secret) pair."""
        while True:
            pid = secrets.randbits(31) or 1
            if pid not in self.cancel_keys:
                break
        self.cancel_keys[pid] = session
        return pid, secrets.token_bytes(4)
