"""Launching server connections for a Pool: connect, log in, run connect_query,
check target_session_attrs, trying the pool's hosts in turn.

A mixin of Pool (pool/pool.py), which owns the collections and counts a launch
moves a server through.

Rules:
1. A launch holds its slot (registry.reserve_launch) from start to end: the
   server it opens carries it, or the next host's attempt does, or the
   failure gives it back (Pool._forget).
2. One launch makes at most one pass over the host list; only when every
   host failed is the launch a failure (server_login_retry backoff).
3. When a failed launch leaves the pool with no server, its queued clients
   are told why at once (PgBouncer's fast fail), unless the failure says the
   server is coming back (holds_waiters): a server starting up or shutting
   down (57P03), or, for server_down_wait seconds, one that cannot be
   reached. Those clients stay queued for the next launch, within
   query_wait_timeout as any queued client.
4. A server reaches IDLE only logged in, out of connect_query with no
   transaction open, and accepted by target_session_attrs.
"""

from __future__ import annotations

import asyncio
import logging
import time

from ecluse.errors import EcluseError, ServerGone, ServerLoginFailed
from ecluse.pool.hosts import session_attrs_refusal
from ecluse.pool.settings import PoolSettings, login_identity
from ecluse.protocol.codes import STATUS_IDLE, SqlState
from ecluse.server.connection import ServerConnection, ServerState, open_socket
from ecluse.server.login import login

log = logging.getLogger("ecluse.pool")


def holds_waiters(error: Exception, down_for: float, server_down_wait: float) -> bool:
    """Whether clients queued for a pool left with no server by ``error`` keep
    waiting, the pool having had none for ``down_for`` seconds.

    A login the server refused fails them (a wrong password, a missing database:
    waiting would not help), except the server's own "not now" (57P03: starting
    up, shutting down, a standby not accepting connections), which PgBouncer
    waits out too. A server that cannot be reached, or that dropped or refused
    the connection during the login, holds them for server_down_wait (0: not
    at all, as PgBouncer): long enough for a restart or a failover.
    """
    if isinstance(error, ServerLoginFailed):
        return error.sqlstate == SqlState.CANNOT_CONNECT_NOW
    return down_for < server_down_wait


class ServerLaunching:
    """Pool's launch of new server connections."""

    def launch(self) -> bool:
        """Start one new server connection in the background, if the limits allow.

        The limits are checked and the server counted in one step, node-wide
        when several workers share them; False if another worker took the slot.
        """
        if not self.registry.reserve_launch(self, self._limit()):
            return False
        self.launching += 1
        asyncio.get_running_loop().create_task(self._connect())
        return True

    async def _connect(self) -> None:
        """Open, log in and admit one server connection, trying the pool's hosts.

        One launch makes at most one pass over the host list (HostPicker): a
        host that cannot be reached, refuses the login, fails connect_query or
        does not match target_session_attrs leaves the launch to the next host,
        each attempt with its own server_connect_timeout (as libpq's
        connect_timeout is per host). Only when every attempt failed is the
        launch a failure (server_login_retry backoff, waiters told).
        """
        s = self.settings
        picker = self.hosts
        for attempt in range(len(picker)):
            host = picker.pick()
            server, exc = await self._attempt(s, host)
            if exc is None:
                break
            picker.failed(host)
            if attempt + 1 == len(picker) or self.closed \
                    or login_identity(self.settings) != login_identity(s):
                self._on_launch_failed(server, exc)
                return
            self._on_attempt_failed(server, exc)
            self.launching += 1  # the next attempt counts until its socket is up
        if login_identity(self.settings) != login_identity(s):
            # A reload changed where or how to log in while this one logged in:
            # closing it frees its slot and launches for waiters (on_server_closed).
            self._set_state(server, ServerState.USED)
            server.close()
            return
        self._forget_failure()
        if self.default_params is None:
            self.default_params = dict(server.params)
            self.registry.share_params(self)
        server.last_used = time.monotonic()
        log.debug("new server connection %s for %s", server, self.name)
        self._set_state(server, ServerState.IDLE)
        self._dispatch()

    async def _attempt(self, s: PoolSettings,
                       host: str) -> tuple[ServerConnection, Exception | None]:
        """Connect to ``host`` and log in; return the server and why it failed, if it did.

        self.launching counts the attempt until its socket is up. A failed
        server is closed here and still holds the launch's slot.
        """
        done: asyncio.Future = asyncio.get_running_loop().create_future()
        params = {"user": s.user, "database": s.server_dbname, **s.server_params}
        password = s.password if s.password is not None else self.auth_secret
        gen = login(params, password, scram_keys=self.scram_keys)
        # No TLS over unix sockets, as PgBouncer and libpq.
        tls = None if host.startswith("/") else s.server_tls
        server = ServerConnection(self, gen, host, s.port, done,
                                  max_prepared=s.max_prepared_statements, tls=tls)
        server.slot_held = True
        server.stats = self.stats
        counted = True
        try:
            async with asyncio.timeout(s.server_connect_timeout or None):
                await open_socket(server, host, s.port, s.tcp,
                                  await self.registry.server_addresses(host))
                self.launching -= 1
                counted = False
                self._set_state(server, ServerState.LOGIN)
                await done
            # Out of LOGIN once logged in: a server in LOGIN hands what it reads to
            # its (finished) login, not to connect_query, and closes without Terminate.
            self._set_state(server, ServerState.USED)
            if s.connect_query:
                await self._run_connect_query(server)
            # After connect_query, as PgBouncer: it may change what the server reports.
            refusal = session_attrs_refusal(s.target_session_attrs, host, s.port, server.params)
            if refusal is not None:
                server.close()  # a healthy server: Terminate, not a dropped socket
                raise ServerGone(refusal)
        except (OSError, EcluseError, TimeoutError) as exc:
            if counted:
                self.launching -= 1
            if isinstance(exc, TimeoutError):
                exc = ServerGone("server connect timeout (server_connect_timeout)")
            server.close(exc)
            if done.done() and not done.cancelled():
                done.exception()  # retrieved: the caller reports the failure
            return server, exc
        return server, None

    def _drop_attempt(self, server: ServerConnection) -> None:
        """Take a server whose attempt failed out of the pool's collections."""
        self.login.discard(server)
        self.used.discard(server)  # failed in connect_query or target_session_attrs
        server.state = ServerState.CLOSED

    def _on_attempt_failed(self, server: ServerConnection, exc: Exception) -> None:
        """One host failed and the launch goes on to the next: the slot moves with it."""
        self._drop_attempt(server)
        server.slot_held = False  # the next attempt's server holds it now
        log.warning("server connection for %s to %s failed, trying the next host: %s",
                    self.name, server.host, exc)

    async def _run_connect_query(self, server: ServerConnection) -> None:
        """Run connect_query on a new server. An error it raises is logged and
        otherwise ignored, as PgBouncer documents; a server lost meanwhile fails."""
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        server.run_internal(self.settings.connect_query or "", fut.set_result)
        err = await fut
        if err is not None:
            if server.is_closed():
                raise ServerLoginFailed(f"connect_query failed: {err.message}",
                                        sqlstate=err.sqlstate)
            log.warning("connect_query failed on %s for %s: %s", server, self.name,
                        err.message)
        if server.tracker.status != STATUS_IDLE:
            # A client must never get a server inside a transaction it did not open.
            raise ServerLoginFailed("connect_query left a transaction open",
                                    sqlstate="25000")

    def _on_launch_failed(self, server: ServerConnection, exc: Exception) -> None:
        self._drop_attempt(server)
        now = self.last_failure = time.monotonic()
        self.last_error = exc
        self._forget(server)
        log.warning("server connection for %s failed: %s", self.name, exc)
        if self.total() != 0:
            return
        if not self.down_since:
            self.down_since = now
        if not self.holds_waiters(now):
            self.fail_waiters()
        elif self.waiters:
            log.warning("%s: %d clients keep waiting for the server to come back",
                        self.name, len(self.waiters))

    def holds_waiters(self, now: float) -> bool:
        """Whether this pool, which has no server and failed its last launch, keeps
        its clients waiting (rule 3)."""
        error = self.last_error
        return error is not None and holds_waiters(
            error, now - self.down_since, self.settings.server_down_wait)

    def fail_waiters(self) -> None:
        """Tell every queued client why the pool has no server for it."""
        error = self._login_error()
        while self.waiters:
            w = self.waiters.pop()
            if w is None:
                break
            w.fail(error)

    def _login_error(self) -> EcluseError:
        exc = self.last_error
        if isinstance(exc, ServerLoginFailed):
            return ServerLoginFailed(exc.message, sqlstate=exc.sqlstate, fields=exc.fields)
        reason = exc.message if isinstance(exc, EcluseError) else str(exc)
        return ServerGone(f"server login has been failing, try again later "
                          f"(server_login_retry): {reason}", sqlstate="08006")
