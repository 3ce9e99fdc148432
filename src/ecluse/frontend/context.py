"""The per-worker state a client session reads: config, pools, cancel keys.

The worker builds one ClientContext and hands it to every session it accepts.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ecluse.auth.auth_query import AuthQueryCache
from ecluse.config import Config
from ecluse.frontend.cancelkeys import make_key, owner
from ecluse.pool.registry import PoolRegistry

if TYPE_CHECKING:
    from ecluse.admin.node import Node
    from ecluse.frontend.session import FrontendSession
    from ecluse.server.peercancels import PeerCancels


@dataclass(slots=True)
class ClientContext:
    """Shared by all sessions of one worker."""

    config: Config
    registry: PoolRegistry
    clients: set[FrontendSession] = field(default_factory=set)
    # Clients still logging in, oldest first, for client_login_timeout: the
    # janitor looks at the front only (no timer per connection).
    logging_in: dict[FrontendSession, None] = field(default_factory=dict)
    cancel_keys: dict[int, FrontendSession] = field(default_factory=dict)
    # A roll-over's hand-overs (frontend/handover.py rule 4), by whole cancel key
    # (process id << 32 | secret): the clients this worker adopted, whose keys name
    # another worker, and the slots it handed its own clients over to.
    adopted_keys: dict[int, FrontendSession] = field(default_factory=dict)
    moved_keys: dict[int, int] = field(default_factory=dict)
    shutting_down: bool = False
    login_failures: int = 0
    tasks: set[asyncio.Task] = field(default_factory=set)
    auth_cache: AuthQueryCache = field(default_factory=AuthQueryCache)  # auth_query results
    # Logged-in clients per database and per user, for the client limits.
    db_clients: Counter[str] = field(default_factory=Counter)
    user_clients: Counter[str] = field(default_factory=Counter)
    # The id SHOW CLIENTS prints and KILL_CLIENT takes: unique for the worker's
    # life, never reused (id() of a freed session could be).
    client_ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    # Set by the worker: start SHUTDOWN in a mode ("", WAIT_FOR_SERVERS or
    # WAIT_FOR_CLIENTS); frontend/ and admin/ may not import the worker.
    begin_shutdown: Callable[[str], None] | None = None
    shutdown_mode: str | None = None  # the SHUTDOWN mode once one was issued
    # Set by the worker: re-read the config files and apply them (RELOAD, SIGHUP,
    # POST /reload). Returns None when applied, else why the new config was
    # refused (the old one keeps running).
    reload_config: Callable[[], str | None] | None = None
    # Where this worker is in the node and the group (frontend/cancelkeys.py), and
    # how to pass a cancel on to the worker or peer that owns its key.
    worker_index: int = 0
    peer_id: int = 0
    # Both take (worker or peer, process id, secret, done): done() runs once the
    # cancel has been passed on and answered, or given up.
    forward_to_worker: Callable[[int, int, bytes, Callable[[], None]], None] | None = None
    forward_to_peer: Callable[[int, int, bytes, Callable[[], None]], None] | None = None
    # Set by the worker: the cancels passed on to peers, pool_size at a time per peer
    # (server/peercancels.py), which SHOW PEER_POOLS counts.
    peer_cancels: PeerCancels | None = None
    # Set by the worker: apply an already validated Config (the console's SET).
    apply_config: Callable[[Config], None] | None = None
    # SHOW STATS_AVERAGES: per-database averages over the last stats_period
    # (stats/period.py), refreshed by the worker.
    stats_averages: dict[str, dict[str, int]] = field(default_factory=dict)
    # Set by the worker when the node has several workers: how the console,
    # metrics and HTTP API answer for all of them (admin/node.py).
    node: Node | None = None

    def admit(self, database: str, user: str, db_limit: int, user_limit: int) -> str | None:
        """Count a client in, or return the name of the limit it would exceed."""
        # dict.get, not Counter's [] whose Python __missing__ runs for every first
        # client: under churn, nearly every login.
        db_clients, user_clients = self.db_clients, self.user_clients
        db_count = db_clients.get(database, 0)
        user_count = user_clients.get(user, 0)
        if db_limit and db_count >= db_limit:
            return "max_db_client_connections"
        if user_limit and user_count >= user_limit:
            return "max_user_client_connections"
        db_clients[database] = db_count + 1
        user_clients[user] = user_count + 1
        return None

    def leave(self, database: str, user: str) -> None:
        """Count out a client admit() counted in."""
        for counter, key in ((self.db_clients, database), (self.user_clients, user)):
            left = counter[key] - 1
            if left > 0:
                counter[key] = left
            else:
                counter.pop(key, None)  # dict's: Counter's own __delitem__ is Python

    def spawn(self, coro: Coroutine) -> None:
        """Run a background coroutine, keeping a reference until it ends."""
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def new_cancel_key(self, session: FrontendSession) -> tuple[int, bytes]:
        """Issue an unpredictable, unique (process id, secret) pair naming this worker."""
        while True:
            pid, secret = make_key(self.peer_id, self.worker_index)
            if pid not in self.cancel_keys:
                break
        self.cancel_keys[pid] = session
        return pid, secret

    def deliver_cancel(self, process_id: int, secret: bytes, done: Callable[[], None]) -> None:
        """Cancel the session a CancelRequest names, here or where it lives.

        ``done`` runs once the cancel has been delivered, given up
        (cancel_wait_timeout), or found nothing to cancel.
        """
        whole = process_id << 32 | int.from_bytes(secret)
        adopted = self.adopted_keys.get(whole)
        if adopted is not None and len(secret) == 4:
            adopted.cancel(done)
            return
        peer, worker = owner(process_id, secret)
        if peer != self.peer_id:
            if self.forward_to_peer is not None:
                self.forward_to_peer(peer, process_id, secret, done)
            else:
                done()
            return
        if worker != self.worker_index:
            if self.forward_to_worker is not None:
                self.forward_to_worker(worker, process_id, secret, done)
            else:
                done()
            return
        target = self.cancel_keys.get(process_id)
        if target is not None and hmac.compare_digest(target.cancel_secret, secret):
            target.cancel(done)
        elif whole in self.moved_keys and self.forward_to_worker is not None \
                and len(secret) == 4:
            self.forward_to_worker(self.moved_keys[whole], process_id, secret, done)
        else:
            done()
