"""Pool: the server connections of one (database, user) pair.

Rules:
1. Servers move between the collections idle / active / used / login only
   through ``_set_state``; counts and SHOW POOLS follow from the collections.
2. A pool never holds more than pool_size (+ reserve_pool after
   reserve_pool_timeout) servers, and asks the registry before each launch
   so max_db_connections and max_user_connections hold across pools.
3. A server goes back to idle only in transaction status 'I' with nothing
   outstanding; anything else is closed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ecluse.errors import PoolTimeout, ServerLoginFailed
from ecluse.pool.launch import ServerLaunching
from ecluse.pool.listener import ListenHub
from ecluse.pool.settings import PoolSettings, host_picker, login_identity
from ecluse.pool.waiters import Waiter, WaiterQueue, WaitingClient
from ecluse.protocol.backend import encode_parameter_status
from ecluse.protocol.codes import STATUS_IDLE
from ecluse.server.connection import ServerConnection, ServerState
from ecluse.stats.counters import PoolStats

if TYPE_CHECKING:
    from ecluse.pool.registry import PoolRegistry

log = logging.getLogger("ecluse.pool")

# Server states as module constants for _set_state, which runs twice per transaction.
_S_IDLE = ServerState.IDLE
_S_ACTIVE = ServerState.ACTIVE
_S_USED = ServerState.USED
_S_TESTED = ServerState.TESTED
_S_LOGIN = ServerState.LOGIN
_S_CLOSED = ServerState.CLOSED
_WELCOME_CACHE_SIZE = 64
_RETRY = 0.02  # seconds between launch attempts while other workers hold the slots


def wanted_changed(waiting: int, published: int) -> bool:
    """Whether a worker's count of waiting clients is to be published again.

    Only when it matters to a lender, not at every acquire and release: when
    clients start or stop waiting (lend or not), or their number has doubled or
    halved since it was published (how many idle servers maintain() lends). So
    the published count is 0 exactly when none wait, else within a factor of two.
    """
    return waiting != published and (not waiting or not published
                                     or waiting >= 2 * published or waiting * 2 <= published)


class Pool(ServerLaunching):
    """Acquire/release of servers for one (database, user), with a FIFO queue."""

    def __init__(self, registry: PoolRegistry, settings: PoolSettings):
        self.registry = registry
        self.settings = settings
        self.idle: list[ServerConnection] = []
        self.active: set[ServerConnection] = set()
        self.used: set[ServerConnection] = set()  # resetting or being checked
        self.login: set[ServerConnection] = set()
        self.launching = 0  # connects not yet at connection_made
        self.waiters = WaiterQueue()
        # What a client's welcome reports (a server's ParameterStatus values); with
        # several workers, learnt from the others when they know it (registry).
        self.default_params: dict[str, str] | None = registry.shared_params(settings)
        # Encoded ParameterStatus blocks and shared parameter dicts by client
        # parameters (welcome), for the default_params they were built from.
        self._welcome_cache: dict[tuple, tuple[bytes, dict[str, str]]] = {}
        self._welcome_for: dict[str, str] | None = None
        self.last_failure: float = 0.0
        self.last_error: Exception | None = None
        # When the pool was last left with no server by a failed launch; 0.0 once a
        # launch succeeds (pool/launch.py rule 3: how long clients are held).
        self.down_since = 0.0
        self.paused = False  # PAUSE (admin/commands.py): queue clients, hand nothing out
        self.closed = False
        self.key = ("pool", settings.database, settings.user)  # in the node-wide counts
        self._wanted_published = 0  # waiting clients last told to the other workers
        # query_wait_notify: the queueing time of the last waiter told it waits (see
        # notify_long_waits); nothing per waiter, so nothing per queued transaction.
        self._wait_told = -math.inf
        self._retry: asyncio.TimerHandle | None = None
        self._node_full_until = 0.0  # node-wide counts said full; trusted until then
        # (config, [(key, limit)]) of max_db/max_user_connections, built by the registry.
        self.cross_limits: tuple[object, list] | None = None
        self.retired = False  # replaced by a reload: no new client, closed once unused
        self.client_user = settings.user  # whose [users] entry sized it (registry sets it)
        self.stats = PoolStats()  # traffic counters (stats/counters.py), read by admin/
        self.hosts = host_picker(settings)  # where new server connections go
        self._listen_hub: ListenHub | None = None
        # Pooler-wide prepared statement names that parsed without error on some
        # server of this pool (frontend/prepared.py); insertion-ordered, bounded there.
        self.known_statements: dict[str, None] = {}
        # The secret a client session learnt for this pool's user when the config
        # has none (auth_query), and the SCRAM keys recovered from the last client
        # that proved it knows the password (SCRAM pass-through). Set only by
        # set_login_secret(); used by the next server logins.
        self.auth_secret: str | None = None
        self.scram_keys: tuple[bytes, bytes] | None = None

    # --- sizes -------------------------------------------------------------
    @property
    def name(self) -> str:
        return f"{self.settings.database}/{self.settings.user}"

    def total(self) -> int:
        return len(self.idle) + len(self.active) + len(self.used) + len(self.login) + \
            self.launching

    def _limit(self) -> int:
        s = self.settings
        limit = s.pool_size
        if s.reserve_pool and self.waiters.oldest_wait() >= s.reserve_pool_timeout:
            limit += s.reserve_pool
        return limit

    def can_launch(self) -> bool:
        shared = self.registry.shared
        # Reading the node-wide counts costs more than a transaction's relay: once
        # they said "full", believe it until the next retry is due. Under load with
        # several workers that is the usual answer (each holds a share of
        # pool_size), so it is asked first.
        now = time.monotonic() if shared else 0.0
        if shared and now < self._node_full_until:
            return False
        limit = self._limit()
        # The pool full is the usual answer under load with one worker.
        if self.total() >= limit or self.closed or self._backing_off():
            return False
        if shared:
            if not self.registry.may_launch(self, limit):
                self._node_full_until = now + _RETRY
                return False
            return True
        return self.registry.may_launch(self, limit)

    def _backing_off(self) -> bool:
        """True while the last launch failed less than server_login_retry ago."""
        return self.last_error is not None and \
            time.monotonic() - self.last_failure < self.settings.server_login_retry

    def _forget_failure(self) -> None:
        """No failed launch counts any more: one succeeded, or the failures say nothing
        of what comes next (a new secret, a new server). No backoff, no outage."""
        self.last_error = None
        self.down_since = 0.0

    def login_failing(self) -> bool:
        """True while server logins fail and server_login_retry has not passed."""
        return (self.last_error is not None and self.total() == 0
                and time.monotonic() - self.last_failure < self.settings.server_login_retry)

    def welcome(self, params: dict[str, str]) -> tuple[bytes, dict[str, str]]:
        """The ParameterStatus messages that welcome a client with ``params`` (the
        defaults overlaid with its own, search_path left out: PostgreSQL 15 does not
        report it), and a dict equal to ``params`` shared by every client that has
        the same: an idle client then holds no parameters of its own. The shared
        dict must never be changed in place (copy it first). Cached: under
        connection churn every login asks."""
        defaults = self.default_params
        assert defaults is not None
        if self._welcome_for is not defaults:
            self._welcome_for = defaults
            self._welcome_cache = {}
        key = tuple(params.items())
        entry = self._welcome_cache.get(key)
        if entry is None:
            shown = dict(defaults)
            shown.update(params)
            shown.pop("search_path", None)
            block = b"".join(encode_parameter_status(k, v) for k, v in shown.items())
            if len(self._welcome_cache) >= _WELCOME_CACHE_SIZE:
                self._welcome_cache.clear()  # many distinct clients: rebuild as they come
            entry = self._welcome_cache[key] = (block, params)
        return entry

    # --- state changes -----------------------------------------------------
    def _set_state(self, server: ServerConnection, state: ServerState) -> None:
        old = server.state
        if old is _S_IDLE:
            idle = self.idle
            # Most recently used first: the one taken is nearly always the last.
            if idle and idle[-1] is server:
                idle.pop()
            elif server in idle:
                idle.remove(server)
        elif old is _S_ACTIVE:
            self.active.discard(server)
        elif old in (_S_USED, _S_TESTED):
            self.used.discard(server)
        elif old is _S_LOGIN:
            self.login.discard(server)
        server.state = state
        if state is _S_IDLE:
            self.idle.append(server)
        elif state is _S_ACTIVE:
            self.active.add(server)
        elif state in (_S_USED, _S_TESTED):
            self.used.add(server)
        elif state is _S_LOGIN:
            self.login.add(server)

    # --- acquire -----------------------------------------------------------
    def acquire(self, client: WaitingClient) -> ServerConnection | None:
        """Return an idle server at once, or queue the client and return None.

        A queued client later gets on_server_assigned() or on_wait_failed().
        """
        server = self.take_now()
        if server is None:
            self.wait(client)
        return server

    def wait(self, client: WaitingClient) -> None:
        """Queue the client (take_now just found no server for it)."""
        if self.last_error is not None and self.login_failing() and \
                not self.holds_waiters(time.monotonic()):
            client.on_wait_failed(self._login_error())
            return
        # No timer per waiter (one per queued transaction under load): the
        # janitor's maintain() fails those past query_wait_timeout.
        self.waiters.push(Waiter(client))
        self._dispatch()

    def take_now(self, now: float = 0.0) -> ServerConnection | None:
        """Return an idle server if one may be had without waiting, else None (nobody
        is queued for it). ``now``: the clock, if the caller just read it."""
        if self.paused or self.waiters.live:
            return None
        server = self._take_idle(now)
        if server is None:
            return None
        # _set_state(server, ACTIVE): _take_idle's server is the last idle one.
        self.idle.pop()
        self.active.add(server)
        server.state = _S_ACTIVE
        self.stats.server_assignment_count += 1
        self.stats.add_no_wait()
        return server

    def resume(self) -> None:
        """End a PAUSE: serve the clients queued meanwhile."""
        self.paused = False
        self._dispatch()

    def cancel_wait(self, client: WaitingClient) -> bool:
        """Remove a client from the queue; True if it was waiting."""
        for w in self.waiters:
            if w.client is client:
                w.cancel()
                return True
        return False

    def expire_waiters(self, now: float) -> None:
        """Fail the clients queued longer than query_wait_timeout (oldest first)."""
        timeout = self.settings.query_wait_timeout
        if timeout <= 0 or not self.waiters:
            return
        # The queue is in arrival order: only its front can be due. Read afresh after
        # each failure, which may hand a server over and pop the queue meanwhile.
        waiters = self.waiters
        while (waiter := waiters.first()) is not None and now - waiter.since >= timeout:
            waiter.fail(PoolTimeout("query_wait_timeout"))

    def notify_long_waits(self, now: float, after: float) -> None:
        """query_wait_notify: tell each client queued longer than ``after`` seconds, once
        per wait, that it waits for a server (on_long_wait). Not while paused, as
        PgBouncer, whose check runs where servers are handed out.

        The queue is in arrival order, so the waits long enough are its front, and
        those already told are the ones that queued no later than the last told.
        """
        if after <= 0 or self.paused or not self.waiters.live:
            return
        told = self._wait_told
        due = []
        for waiter in self.waiters.queue:
            if now - waiter.since <= after:
                break
            if not waiter.done and waiter.since > told:
                due.append(waiter)
        if due:
            self._wait_told = due[-1].since
            for waiter in due:  # outside the loop over the queue, which they may change
                waiter.client.on_long_wait()

    def _take_idle(self, now: float = 0.0) -> ServerConnection | None:
        """Return the usable idle server most recently used (still last in ``idle``),
        closing stale ones and sending idle ones to server_check_query."""
        s = self.settings
        now = now or time.monotonic()  # once: this runs at every transaction's start
        idle = self.idle
        while idle:
            server = idle[-1]
            if server.is_closed() or (s.server_lifetime > 0 and
                                      now - server.created_at > s.server_lifetime):
                self._set_state(server, ServerState.USED)
                server.close()
                continue
            if s.server_check_delay == 0 or now - server.last_used < s.server_check_delay \
                    or not s.server_check_query:
                return server
            # Idle too long: prove it alive with server_check_query first.
            self._set_state(server, ServerState.TESTED)
            server.run_internal(s.server_check_query,
                                lambda err, srv=server: self._on_checked(srv, err))
        return None

    def _on_checked(self, server: ServerConnection, error) -> None:
        if error is not None or server.tracker.status != STATUS_IDLE or server.is_closed():
            server.close()
            return
        server.last_used = time.monotonic()
        self._set_state(server, ServerState.IDLE)
        self._dispatch()

    def _dispatch(self, released: ServerConnection | None = None) -> None:
        """Give idle servers to waiters, ``released`` (a server just given back,
        still active) first; launch new servers if waiters remain."""
        if self.paused:
            return
        waiters = self.waiters
        if not waiters.live:
            # Nobody waits (every release in steady state): nothing to hand out or launch.
            if self.registry.shared:
                self._publish_wanted()
            return
        while waiters.live:
            # (With no idle server, the usual case when a client queues, no call.)
            server = released or (self._take_idle() if self.idle else None)
            released = None
            if server is None:
                break
            waiter = waiters.pop()
            if waiter is None:  # pragma: no cover - the loop's test saw a live one
                if server.state is _S_ACTIVE:
                    self._set_state(server, ServerState.IDLE)
                break
            if server.state is not _S_ACTIVE:
                self._set_state(server, ServerState.ACTIVE)
            waited = waiter.waited()
            if waiter.assign(server):
                self.stats.server_assignment_count += 1
                self.stats.add_wait(waited)
            else:  # pragma: no cover - pop skips done waiters
                self._set_state(server, ServerState.IDLE)
        s = self.settings
        # Under load every server is busy and the queue stays: with as many active as
        # the pool may ever hold (total() counts them, and _limit() is at most that),
        # neither a launch nor make_room can happen, and can_launch is not asked.
        if waiters.live and len(self.active) < s.pool_size + s.reserve_pool:
            needed = waiters.live - len(self.login) - self.launching - len(self.used)
            while needed > 0 and self.can_launch() and self.launch():
                needed -= 1
            if waiters.live and not self.idle and not self.active and self.total() == 0 \
                    and not self.can_launch():
                self.registry.make_room(self)
        if self.registry.shared:
            self._publish_wanted()

    def _publish_wanted(self) -> None:
        """Tell the other workers how many clients wait here, and retry soon while
        the node-wide limit (not this pool's own) keeps them waiting."""
        waiting = self.waiters.live
        if wanted_changed(waiting, self._wanted_published):
            self._wanted_published = waiting
            self.registry.counts.set_wanted(self.key, waiting)
        if waiting and self._retry is None and not self.paused and \
                self.total() < self._limit() and not self.can_launch():
            self._retry = asyncio.get_running_loop().call_later(_RETRY, self._retry_launch)

    def _above_fair_share(self) -> bool:
        """True when this worker holds more than pool_size / workers of this pool."""
        workers = self.registry.counts.node_workers
        return self.total() * workers > self.settings.pool_size

    def _retry_launch(self) -> None:
        self._retry = None
        self._dispatch()

    # --- release -----------------------------------------------------------
    def release(self, server: ServerConnection, reset: bool) -> None:
        """Take a server back from its client (already unlinked).

        With ``reset`` the server_reset_query runs first. A server that is not
        idle with nothing outstanding is closed (RELIABILITY §3.10 test 6).
        """
        if server.state is _S_CLOSED:
            return
        s = self.settings
        tracker = server.tracker
        if tracker.status != STATUS_IDLE or not tracker.is_done() \
                or server.in_internal() or self._must_retire(server):
            self._set_state(server, ServerState.USED)
            server.close()
            return
        if server.cancel_in_flight:
            # Hold it back until the cancel is delivered: it must not hit the next client.
            self._set_state(server, ServerState.USED)
            server.after_cancels = lambda: self._after_cancels(server, reset)
            return
        if reset and s.server_reset_query:
            self._set_state(server, ServerState.USED)
            server.run_internal(s.server_reset_query,
                                lambda err, srv=server: self._on_reset(srv, err))
            return
        if self.registry.shared and not self.waiters and self._lend_elsewhere():
            self._set_state(server, ServerState.USED)
            server.close()
            return
        if self.waiters.live and not self.paused and not server.is_closed():
            # Clients wait, so no server is idle: this one goes to the first of them
            # as it is, without the round trip through the idle list (where
            # _take_idle would find it fresh: its age was checked above, its
            # last use is now).
            self._dispatch(server)
            return
        self._set_state(server, _S_IDLE)
        self._dispatch()

    def take_back(self, server: ServerConnection, now: float = 0.0) -> bool:
        """release(server, reset=False)'s usual cases in one step, for a server just
        unlinked from a transaction that ended with nothing outstanding (the express
        path's): to the first waiting client, or back on the idle list; False, with
        nothing done, when release has more to do (a lend, a close, a cancel to wait
        for, a pause). ``now``: the clock, if the caller just read it."""
        if server.state is not _S_ACTIVE or self.paused or server.cancel_in_flight \
                or self._must_retire(server, now):
            return False
        if self.waiters.live:
            if server.is_closed():
                return False
            # Clients queue, so none is idle: the first gets this one as it is, as
            # release hands it over (_dispatch), its retire and cancel checks done above.
            self._dispatch(server)
            return True
        shared = self.registry.shared
        if shared and self._lend_elsewhere():
            return False
        # _set_state(server, IDLE) from ACTIVE, then _dispatch() with nobody waiting.
        self.active.discard(server)
        server.state = _S_IDLE
        self.idle.append(server)
        if shared:
            self._publish_wanted()
        return True

    def _must_retire(self, server: ServerConnection, now: float = 0.0) -> bool:
        """True when a server given back is to be closed, not reused: marked so, the
        pool closed, past server_lifetime, or the pool above its size (a reload
        shrank it)."""
        s = self.settings
        return server.close_when_released or self.closed \
            or (s.server_lifetime > 0 and
                (now or time.monotonic()) - server.created_at > s.server_lifetime) \
            or self.total() > s.pool_size + s.reserve_pool

    def _lend_elsewhere(self) -> bool:
        """With several workers: True when another worker's clients wait for this
        pool's node-wide slots and this one holds more than its share, so that a
        server given back is closed (lent to them), not kept."""
        return self._above_fair_share() and bool(self.registry.counts.wanted_elsewhere(self.key))

    def _after_cancels(self, server: ServerConnection, reset: bool) -> None:
        if server.state is ServerState.CLOSED:
            return
        self._set_state(server, ServerState.ACTIVE)
        self.release(server, reset)

    def _on_reset(self, server: ServerConnection, error) -> None:
        if error is not None:
            # pgbouncer #1358: a failed reset must never be reused unreset.
            log.warning("server_reset_query failed on %s: %s", server, error.message)
            server.close()
            return
        if server.state is ServerState.CLOSED:
            return
        reset = self.settings.server_reset_query.upper()
        if "DISCARD ALL" in reset or "DEALLOCATE ALL" in reset:
            server.prepared.clear()  # the reset dropped the server's prepared statements
        if "DISCARD ALL" in reset or "RESET ALL" in reset:
            server.session_settings.clear()
            server.params.pop("search_path", None)
        server.last_used = time.monotonic()
        self._set_state(server, ServerState.IDLE)
        self._dispatch()

    def on_server_closed(self, server: ServerConnection) -> None:
        """Called by the server when its connection is gone."""
        failed_login = server in self.login
        for coll in (self.active, self.used, self.login):
            coll.discard(server)
        if server in self.idle:
            self.idle.remove(server)
        self._forget(server)
        # A failed login is handled by _connect; relaunching here would hammer the server.
        if self.waiters and not failed_login:
            self._dispatch()

    def _forget(self, server: ServerConnection) -> None:
        """Give back the server's slot in the cross-pool limits, once."""
        if server.slot_held:
            server.slot_held = False
            self.registry.on_server_closed(self)

    # --- launching servers -------------------------------------------------
    def set_login_secret(self, secret: str | None,
                         scram_keys: tuple[bytes, bytes] | None) -> None:
        """Remember what a just-authenticated client of this pool's user proved.

        ``secret`` (from auth_query) is used when the config gives the user no
        password; ``scram_keys`` are (ClientKey, ServerKey) for SCRAM
        pass-through. A new secret or new keys also clear a login backoff
        that the missing ones caused, so the client does not wait
        server_login_retry for nothing.
        """
        changed = False
        if secret is not None and secret != self.auth_secret:
            self.auth_secret, changed = secret, True
        if scram_keys is not None and scram_keys != self.scram_keys:
            self.scram_keys, changed = scram_keys, True
        if changed and isinstance(self.last_error, ServerLoginFailed) and self.total() == 0:
            self._forget_failure()

    # --- maintenance (called by the janitor) ---------------------------------
    def maintain(self) -> None:
        """Fail clients queued too long, close expired idle servers and keep
        min_pool_size warm."""
        s = self.settings
        now = time.monotonic()
        self.expire_waiters(now)
        if s.server_down_wait > 0 and self.waiters and self.last_error is not None \
                and self.total() == 0 and not self.holds_waiters(now):
            self.fail_waiters()  # held for server_down_wait, and the server is still down
        keep = s.min_pool_size
        for server in list(self.idle):
            expired = s.server_lifetime > 0 and now - server.created_at > s.server_lifetime
            too_idle = s.server_idle_timeout > 0 and now - server.last_used > s.server_idle_timeout
            if (expired or too_idle) and (expired or self.total() > keep):
                self._set_state(server, ServerState.USED)
                server.close()
        while self.total() < min(keep, s.pool_size) and self.can_launch() and self.launch():
            pass
        if self.registry.shared and self.idle and not self.waiters:
            # Clients of other workers wait for this pool's node-wide slots while
            # ours sit idle: lend them (a release lends too, but idle ones never release).
            for _ in range(min(len(self.idle), self.registry.counts.wanted_elsewhere(self.key))):
                if not self._above_fair_share():
                    break
                server = self.idle[0]
                self._set_state(server, ServerState.USED)
                server.close()
        if self.waiters:
            self._dispatch()

    def listen_hub(self) -> ListenHub:
        """Return the pool's LISTEN/NOTIFY hub (pool/listener.py), made on first use.

        A hub closed by close_all() is replaced while the pool itself stays open.
        """
        hub = self._listen_hub
        if hub is None or (hub.closed and not self.closed):
            hub = self._listen_hub = ListenHub(self)
        return hub

    def reconfigure(self, settings: PoolSettings) -> str:
        """Take new settings from a reload (same pool mode); return what changed.

        A new host, port, database, login or startup parameter reconnects every
        server between transactions: idle ones close now, busy ones when their
        client releases them, ones logging in as soon as they are up. Sizes and
        timeouts apply at once; surplus idle servers close now, surplus busy
        ones on release.
        """
        old, self.settings = self.settings, settings
        changed = sorted(f.name for f in dataclasses.fields(PoolSettings)
                         if getattr(old, f.name) != getattr(settings, f.name))
        if login_identity(old) != login_identity(settings):
            self.hosts = host_picker(settings)
            self.close_all(lambda server: True)
            self.default_params = None  # the new server may report other parameters
            self.known_statements.clear()  # known good on the old server only
            self._forget_failure()  # the old server's failures say nothing of the new
        else:
            while self.idle and self.total() > self._limit():
                server = self.idle[0]
                self._set_state(server, ServerState.USED)
                server.close()
        self.maintain()
        return "changed " + ", ".join(changed)

    def retire(self) -> None:
        """A reload replaced this pool: nothing new joins it; idle servers go."""
        self.retired = True
        self.close_all(lambda server: True)

    def discard(self) -> None:
        """Close this pool for good: its registry forgot it (autodb_idle_timeout).

        No client holds it. With several workers, a count of waiting clients once
        published for it is taken back, so that no worker lends servers to it.
        """
        self.closed = True
        self.close_all()
        if self.registry.shared:
            self._publish_wanted()

    def close_all(self, predicate: Callable[[ServerConnection], bool] | None = None) -> None:
        """Close idle servers now and mark busy ones to close on release.

        Without ``predicate`` the LISTEN hub's connection is closed too.
        """
        if predicate is None and self._listen_hub is not None:
            self._listen_hub.close()
        for server in list(self.idle):
            if predicate is None or predicate(server):
                self._set_state(server, ServerState.USED)
                server.close()
        for server in list(self.active) + list(self.used):
            if predicate is None or predicate(server):
                server.close_when_released = True
