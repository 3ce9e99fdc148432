"""Periodic maintenance: pool sizes, server lifetimes, login, client and query timeouts,
the query_wait_notify notices, server_fast_close, autodb_idle_timeout, and the
stats_period sample behind SHOW STATS_AVERAGES and log_stats.

One timer per worker wakes once a second; nothing per client or per server
wakes while idle (DESIGN.md hot-path rules).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol, cast

from ecluse.config import Settings, UserConfig
from ecluse.config.model import client_timeouts
from ecluse.errors import EcluseError
from ecluse.pool.pool import Pool
from ecluse.pool.registry import PoolRegistry
from ecluse.stats.period import PeriodSampler, totals_by_database

log = logging.getLogger("ecluse.janitor")

PERIOD = 1.0


class TimedClient(Protocol):
    """The fields of a client session the janitor reads."""

    state: object
    server: object
    user: str
    last_activity: float
    request_started: float
    xact_started: float  # 0.0 outside a transaction

    def fatal(self, error: Exception) -> None: ...


class LoggingInClient(Protocol):
    """The fields of a client still logging in that the janitor reads."""

    connected_at: float

    def on_login_timeout(self) -> None: ...


def expire_logins(logging_in: dict, timeout: float, now: float) -> None:
    """Close the clients past client_login_timeout. ``logging_in`` (keys:
    LoggingInClient) is in connection order, so only its front is looked at;
    each client leaves it when it logs in, closes or times out."""
    if timeout <= 0:
        return
    while logging_in:
        client = next(iter(logging_in))
        if now - client.connected_at <= timeout:
            break  # the rest connected later
        logging_in.pop(client, None)
        client.on_login_timeout()


def check_client_timeouts(clients: Iterable[TimedClient], settings: Settings,
                          now: float, users: Mapping[str, UserConfig] | None = None) -> None:
    """Close clients past client_idle_timeout, query_timeout, idle_transaction_timeout
    or transaction_timeout, in PgBouncer's order of precedence; a client's [users]
    entry (``users``, by login name) overrides [pgbouncer]'s values."""
    defaults = client_timeouts(settings, None)
    overrides = {name: timeouts for name, user in (users or {}).items()
                 if (timeouts := client_timeouts(settings, user)) != defaults}
    if not any(defaults) and not any(any(t) for t in overrides.values()):
        return
    for client in list(clients):
        idle_t, idle_xact_t, query_t, xact_t = \
            overrides.get(client.user, defaults) if overrides else defaults
        server = client.server
        if server is None:
            if idle_t and client.state.value == "idle" and now - client.last_activity > idle_t:
                client.fatal(EcluseError("client_idle_timeout", sqlstate="57P05"))
            continue
        tracker = server.tracker
        if query_t and client.request_started and not tracker.is_done() \
                and now - client.request_started > query_t:
            server.close_when_released = True
            client.fatal(EcluseError("query_timeout", sqlstate="57014"))
        elif idle_xact_t and tracker.is_done() and tracker.status != ord("I") \
                and now - client.last_activity > idle_xact_t:
            client.fatal(EcluseError("idle transaction timeout", sqlstate="25P03"))
        elif xact_t and client.xact_started and now - client.xact_started > xact_t:
            # Counted from the transaction's first request, idle or running; as
            # PgBouncer, the server goes too: a query still running there stops with
            # it. PgBouncer's message; PostgreSQL 17's SQLSTATE for its own
            # transaction_timeout.
            server.close_when_released = True
            client.fatal(EcluseError("transaction timeout", sqlstate="25P04"))


def fast_close_sessions(pools: Iterable[Pool]) -> None:
    """server_fast_close: close each session-mode server marked to close (RECONNECT, a
    RELOAD that changed how to connect) once its client's transaction is over, and
    the client with it, so that it notices its session ended (PgBouncer's text).

    A transaction still open, or a request still running, is never interrupted:
    the server is looked at again at the next pass.
    """
    for pool in pools:
        if pool.settings.mode != "session":
            continue
        for server in [s for s in pool.active if s.close_when_released]:
            # Only sessions link servers: the client is a FrontendSession.
            client = cast("TimedClient | None", server.client)
            if client is None or server.in_internal() or not server.tracker.can_release():
                continue
            # Its client's _abandon gives the server back, and release closes it.
            client.fatal(EcluseError("database configuration changed", sqlstate="08P01"))


class Janitor:
    """Runs maintenance every PERIOD seconds until stopped."""

    def __init__(self, registry: PoolRegistry, settings: Callable[[], Settings],
                 clients: Callable[[], Iterable[TimedClient]],
                 logging_in: Callable[[], dict],
                 clients_per_db: Callable[[], Mapping[str, int]] | None = None):
        self._registry = registry
        self._settings = settings
        self._clients = clients
        self._logging_in = logging_in  # see expire_logins
        # Logged-in clients per database, for autodb_idle_timeout; None: not applied.
        self._clients_per_db = clients_per_db
        self._task: asyncio.Task | None = None
        self.sampler = PeriodSampler()
        self._next_sample = 0.0
        # Called with the per-database averages after each stats_period sample.
        self.on_stats: Callable[[dict[str, dict[str, int]]], None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(PERIOD)
            try:
                self.run_once()
            except Exception:  # maintenance must never stop for one bad pool
                log.exception("janitor pass failed")

    def run_once(self) -> None:
        settings = self._settings()
        now = time.monotonic()
        for pool in self._registry:
            pool.maintain()
            pool.notify_long_waits(now, settings.query_wait_notify)
        self._registry.refresh_dns()
        expire_logins(self._logging_in(), settings.client_login_timeout, now)
        check_client_timeouts(self._clients(), settings, now, self._registry.config.users)
        if settings.server_fast_close:
            fast_close_sessions(self._registry)
        if self._clients_per_db is not None:
            self._registry.drop_idle_autodbs(self._clients_per_db(),
                                             settings.autodb_idle_timeout, now)
        if self._registry.retired:
            self._registry.drop_retired({id(c.pool) for c in self._clients()
                                         if getattr(c, "pool", None) is not None})
        if now >= self._next_sample:
            self._next_sample = now + max(settings.stats_period, PERIOD)
            averages = self.sampler.sample(totals_by_database(self._registry), now)
            if self.on_stats is not None:
                self.on_stats(averages)
