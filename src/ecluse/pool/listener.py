"""ListenHub: one listener server connection per pool, fanning NOTIFY out to clients.

In transaction mode a client's LISTEN must not run on a pooled server: the next
client of that server would inherit the subscription, and the listening client
would miss its notifications once it is given another server. Instead each pool
has one hub with one dedicated server connection (never in the pool's
collections, never handed to a client) that LISTENs on every channel some
client of the pool listens to, and hands each NotificationResponse to the
clients subscribed to its channel.

Interface (called by the client session):

- ``subscribe(channel, sink, done)``: ``done(None)`` once the listener connection
  is LISTENing on ``channel`` (at once, during the call, if it already was), or
  ``done(error)`` if it could not (server down, login failed, invalid name, hub
  closed). ``done`` is called exactly once per call; acknowledge the client's
  LISTEN only from it, so a NOTIFY committed after the client saw "LISTEN" is
  never missed. A subscription removed before its LISTEN took effect gets
  ``done(None)`` at once (LISTEN then UNLISTEN is a no-op). Subscribing a sink
  twice to one channel is harmless.
- ``unsubscribe(channel, sink)``, ``unsubscribe_all(sink)``: stop delivery at
  once; the last subscriber of a channel leaving sends UNLISTEN on the listener.
- ``channels_of(sink)``: the sink's channels, also those still being LISTENed
  (for UNLISTEN * and SHOW).
- ``close()``: close the listener for good; later subscribes fail.
- ``NotificationSink.deliver_notification(raw)``: ``raw`` is one whole
  NotificationResponse message ('A', length, pid, channel, payload) as the
  server sent it. The listener connection runs with client_encoding UTF8, so
  channel and payload are UTF-8: a sink whose client uses another encoding must
  convert. It must only write to its client (buffering if needed), never block.

Channel names are identifiers as PostgreSQL stores them: the caller passes
unquoted names lower-cased and quoted names as they are. Names longer than 63
bytes are cut the way PostgreSQL cuts identifiers (NAMEDATALEN - 1, on a
character boundary), since that is the name the server listens on and puts in
notifications.

Behaviour worth knowing:

- LISTEN/UNLISTEN run one at a time as internal queries. Notifications that
  arrive while a channel's LISTEN is running are kept and delivered to its new
  subscribers right after their ``done(None)``.
- If the listener connection dies, the hub logs it, reconnects at once and
  re-LISTENs every channel that still has subscribers; a failed connect is
  retried every server_login_retry seconds. Notifications sent while it was
  down are lost (PostgreSQL keeps none for a session that is gone). While
  connects are failing, new subscribes fail at once, like pool logins do.
- The connection counts in max_db_connections / max_user_connections like a
  pool server (registry.reserve_launch / on_server_closed) but not in pool_size,
  so a pool with listeners uses one server connection more than pool_size. If
  those limits leave no room, subscribes fail with SQLSTATE 53300.
- With no subscriber left, the connection is closed after server_idle_timeout
  (kept when that is 0). server_lifetime, server_check_query and connect_query
  do not apply to it: recycling it would lose notifications.

Rules:
1. Only this module touches the listener connection; it is never linked to a client.
2. One internal query at a time on it (ServerConnection.run_internal asserts that).
3. A slow sink cannot hold up the others: fan-out only calls deliver_notification.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from ecluse.errors import EcluseError, ServerGone, ServerLoginFailed
from ecluse.pool.hosts import session_attrs_refusal
from ecluse.protocol.messages import ErrorResponse
from ecluse.server.connection import ServerConnection, ServerState, open_socket
from ecluse.server.login import login

if TYPE_CHECKING:
    from ecluse.pool.pool import Pool

log = logging.getLogger("ecluse.listen")

NAMEDATALEN = 64  # PostgreSQL's identifier buffer, including the terminating NUL
MAX_EARLY = 10000  # notifications kept for subscribers whose LISTEN is still running
_HEADER = 9  # 'A', int32 length, int32 pid: the channel name starts here

SubscribeDone = Callable[[ErrorResponse | None], None]


class NotificationSink(Protocol):
    """A client that receives notifications."""

    def deliver_notification(self, raw: bytes) -> None: ...


@dataclass(slots=True)
class _Channel:
    """The subscribers of one channel."""

    sinks: dict[NotificationSink, None] = field(default_factory=dict)  # LISTEN effective
    pending: dict[NotificationSink, SubscribeDone] = field(default_factory=dict)
    early: list[bytes] = field(default_factory=list)  # arrived during pending's LISTEN


class _HubHooks:
    """The PoolHooks of the listener connection: report its end to the hub."""

    __slots__ = ("hub",)

    def __init__(self, hub: ListenHub):
        self.hub = hub

    def on_server_closed(self, server: ServerConnection) -> None:
        self.hub._on_server_closed(server)


def stored_channel_name(channel: str) -> str:
    """Return ``channel`` cut to the 63 bytes PostgreSQL keeps of an identifier."""
    raw = channel.encode("utf-8")
    if len(raw) < NAMEDATALEN:
        return channel
    # Cut on a character boundary, as pg_mbcliplen does.
    return raw[:NAMEDATALEN - 1].decode("utf-8", "ignore")


def quote_channel(channel: str) -> str:
    """Quote a channel name as an SQL identifier."""
    return '"' + channel.replace('"', '""') + '"'


def _both(first: SubscribeDone, second: SubscribeDone) -> SubscribeDone:
    """Chain the done callbacks of a sink that repeated its LISTEN before the first took."""
    def done(error: ErrorResponse | None) -> None:
        first(error)
        second(error)
    return done


def _retrieve(fut: asyncio.Future) -> None:
    """Mark a failed login future's exception as seen; the connect path reported it."""
    if fut.done() and not fut.cancelled():
        fut.exception()


def _error(sqlstate: str, message: str) -> ErrorResponse:
    return ErrorResponse({"S": "ERROR", "V": "ERROR", "C": sqlstate, "M": message})


class ListenHub:
    """The LISTEN/NOTIFY fan-out of one pool (see the module docstring)."""

    def __init__(self, pool: Pool):
        self.pool = pool
        self._hooks = _HubHooks(self)
        self._channels: dict[str, _Channel] = {}
        self._by_sink: dict[NotificationSink, set[str]] = {}
        self._server: ServerConnection | None = None  # logged in and ours
        self._listening: set[str] = set()  # LISTENed on _server
        self._todo: dict[str, None] = {}  # channels that may need LISTEN or UNLISTEN
        self._in_flight: tuple[str, bool] | None = None  # (channel, is LISTEN)
        self._connect_task: asyncio.Task | None = None
        self._retry: asyncio.TimerHandle | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._last_error: ErrorResponse | None = None
        self._last_failure = 0.0
        self.closed = False

    # --- what SHOW and tests read --------------------------------------------
    @property
    def server(self) -> ServerConnection | None:
        """The listener connection, once logged in."""
        return self._server

    @property
    def listening(self) -> frozenset[str]:
        """The channels the listener connection is LISTENing on now."""
        return frozenset(self._listening)

    def channels(self) -> dict[str, int]:
        """Return channel -> number of subscribers (effective and pending)."""
        return {name: len(ch.sinks) + len(ch.pending) for name, ch in self._channels.items()}

    # --- the interface -------------------------------------------------------
    def subscribe(self, channel: str, sink: NotificationSink, done: SubscribeDone) -> None:
        """Subscribe ``sink`` to ``channel``; ``done`` reports when LISTEN is effective."""
        channel = stored_channel_name(channel)
        refusal = self._refusal(channel)
        if refusal is not None:
            done(refusal)
            return
        ch = self._channels.get(channel)
        if ch is None:
            ch = self._channels[channel] = _Channel()
        if sink in ch.sinks:
            done(None)
            return
        self._by_sink.setdefault(sink, set()).add(channel)
        self._cancel_idle_timer()
        self._ensure_server()
        if channel in self._listening and self._in_flight != (channel, False):
            ch.sinks[sink] = None
            done(None)
            return
        previous = ch.pending.get(sink)
        ch.pending[sink] = done if previous is None else _both(previous, done)
        self._todo[channel] = None
        self._pump()

    def unsubscribe(self, channel: str, sink: NotificationSink) -> None:
        """Stop delivering ``channel`` to ``sink``; UNLISTEN if it was the last one."""
        channel = stored_channel_name(channel)
        channels = self._by_sink.get(sink)
        if channels is None or channel not in channels:
            return
        channels.discard(channel)
        if not channels:
            del self._by_sink[sink]
        self._drop(channel, sink)
        self._pump()

    def unsubscribe_all(self, sink: NotificationSink) -> None:
        """Remove every subscription of ``sink`` (UNLISTEN *, client gone)."""
        channels = self._by_sink.pop(sink, None)
        if not channels:
            return
        for channel in channels:
            self._drop(channel, sink)
        self._pump()

    def channels_of(self, sink: NotificationSink) -> set[str]:
        """Return the channels ``sink`` is subscribed to, LISTEN effective or not."""
        return set(self._by_sink.get(sink, ()))

    def close(self) -> None:
        """Close the listener connection for good; pending subscribes fail."""
        if self.closed:
            return
        self.closed = True
        self._cancel_idle_timer()
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._connect_task is not None:
            self._connect_task.cancel()
        server, self._server = self._server, None
        self._listening.clear()
        self._in_flight = None
        error = _error("57P01", "LISTEN: the pool is closing")
        for ch in self._channels.values():
            for done in ch.pending.values():
                done(error)
        self._channels.clear()
        self._by_sink.clear()
        self._todo.clear()
        if server is not None:
            server.close()

    # --- subscriptions -------------------------------------------------------
    def _refusal(self, channel: str) -> ErrorResponse | None:
        """Return the error a subscribe gets at once, or None to go ahead."""
        if not channel:
            return _error("42601", "zero-length delimited identifier")
        if "\0" in channel:
            return _error("42602", "invalid channel name")
        if self.closed or self.pool.closed:
            return _error("57P01", "LISTEN: the pool is closing")
        if self._server is None and self._connect_task is None and self._last_error is not None \
                and time.monotonic() - self._last_failure < self.pool.settings.server_login_retry:
            # Connects are failing: answer now rather than make every LISTEN wait for one.
            return self._last_error
        return None

    def _drop(self, channel: str, sink: NotificationSink) -> None:
        """Remove one subscription; the caller already updated _by_sink."""
        ch = self._channels.get(channel)
        if ch is None:
            return
        ch.sinks.pop(sink, None)
        done = ch.pending.pop(sink, None)
        if not ch.sinks and not ch.pending:
            del self._channels[channel]
            self._todo[channel] = None
        if done is not None:
            done(None)

    def _fail_pending(self, error: ErrorResponse, channels: list[str] | None = None) -> None:
        """Answer the pending subscribes of ``channels`` (default all) with ``error``."""
        for channel in list(self._channels) if channels is None else channels:
            ch = self._channels.get(channel)
            if ch is None or not ch.pending:
                continue
            pending, ch.pending = ch.pending, {}
            ch.early.clear()
            for sink in pending:
                mine = self._by_sink.get(sink)
                if mine is not None:
                    mine.discard(channel)
                    if not mine:
                        del self._by_sink[sink]
            if not ch.sinks:
                del self._channels[channel]
                self._todo[channel] = None
            for done in pending.values():
                done(error)

    def _drop_channel(self, channel: str, error: ErrorResponse) -> None:
        """Remove every subscription of a channel the server refused to LISTEN on."""
        ch = self._channels.get(channel)
        if ch is None:
            return
        for sink in ch.sinks:  # only after a reconnect; retrying would loop
            mine = self._by_sink.get(sink)
            if mine is not None:
                mine.discard(channel)
                if not mine:
                    del self._by_sink[sink]
        ch.sinks.clear()
        self._fail_pending(error, [channel])
        self._channels.pop(channel, None)

    # --- LISTEN / UNLISTEN, one at a time ------------------------------------
    def _pump(self) -> None:
        """Start the next LISTEN or UNLISTEN the subscriptions call for."""
        server = self._server
        if server is None or self._in_flight is not None or server.is_closed():
            return
        while self._todo:
            channel = next(iter(self._todo))
            del self._todo[channel]
            wanted = channel in self._channels
            if wanted == (channel in self._listening):
                continue
            self._in_flight = (channel, wanted)
            verb = "LISTEN " if wanted else "UNLISTEN "
            server.run_internal(verb + quote_channel(channel),
                                lambda err, c=channel, w=wanted: self._on_done(c, w, err))
            return
        if not self._channels:
            self._arm_idle_timer()

    def _on_done(self, channel: str, listen: bool, error: ErrorResponse | None) -> None:
        self._in_flight = None
        server = self._server
        if server is None or server.is_closed():
            return  # the connection is gone; _on_server_closed decides what follows
        if listen:
            if error is None:
                self._listening.add(channel)
                self._activate(channel)
            else:
                log.warning("LISTEN %s failed on the listener of %s: %s",
                            quote_channel(channel), self.pool.name, error.message)
                self._drop_channel(channel, error)
        else:
            if error is not None:
                log.warning("UNLISTEN %s failed on the listener of %s: %s",
                            quote_channel(channel), self.pool.name, error.message)
            self._listening.discard(channel)
        if channel in self._channels or channel in self._listening:
            self._todo[channel] = None  # subscriptions changed while it ran
        self._pump()

    def _activate(self, channel: str) -> None:
        """Turn the channel's pending subscribers into receivers and answer them."""
        ch = self._channels.get(channel)
        if ch is None or not ch.pending:
            return
        pending, ch.pending = ch.pending, {}
        early, ch.early = ch.early, []
        for sink in pending:
            ch.sinks[sink] = None
        for done in pending.values():
            done(None)
        for raw in early:
            for sink in pending:
                if sink in ch.sinks:  # done may have unsubscribed it
                    sink.deliver_notification(raw)

    # --- fan-out -------------------------------------------------------------
    def _on_notification(self, raw: bytes) -> None:
        end = raw.find(b"\0", _HEADER)
        if end < 0:
            return  # the framer checked the length; a bad body has no channel to match
        channel = raw[_HEADER:end].decode("utf-8", "replace")
        ch = self._channels.get(channel)
        if ch is None:
            return
        for sink in list(ch.sinks):
            try:
                sink.deliver_notification(raw)
            except Exception:  # one broken client must not cost the others their notification
                log.exception("delivering a notification on %s failed", quote_channel(channel))
        if ch.pending and self._in_flight == (channel, True) and len(ch.early) < MAX_EARLY:
            ch.early.append(raw)

    # --- the listener connection ---------------------------------------------
    def _ensure_server(self) -> None:
        """Connect unless connected, connecting, closed or waiting to retry."""
        if self.closed or self._server is not None or self._connect_task is not None \
                or self._retry is not None:
            return
        self._connect_task = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        pool = self.pool
        s = pool.settings
        registry = pool.registry
        if not registry.reserve_launch(pool):
            self._connect_task = None
            self._on_connect_failed(EcluseError(
                "no server connection left for LISTEN (max_db_connections or "
                "max_user_connections)", sqlstate="53300"))
            return
        params = {"user": s.user, "database": s.server_dbname, **s.server_params,
                  "client_encoding": "UTF8"}
        params.setdefault("application_name", "ecluse listener")
        # As the pool's launches (Pool._connect): at most one pass over the host
        # list, the pool's picker choosing and told of each host that failed.
        picker = pool.hosts
        for attempt in range(len(picker)):
            host = picker.pick()
            server, exc = await self._attempt(params, host)
            if exc is None:
                break
            picker.failed(host)
            if attempt + 1 < len(picker) and not self.closed:
                server.slot_held = False  # the next attempt's server holds it now
                log.warning("listener connection for %s to %s failed, trying the next host: %s",
                            pool.name, host, exc)
                continue
            self._connect_task = None
            self._forget(server)
            self._on_connect_failed(exc)
            return
        self._connect_task = None
        self._on_connected(server)

    async def _attempt(self, params: dict[str, str],
                       host: str) -> tuple[ServerConnection, Exception | None]:
        """Connect to ``host`` and log in; a failed server is closed, its slot still held."""
        pool = self.pool
        s = pool.settings
        done: asyncio.Future = asyncio.get_running_loop().create_future()
        password = s.password if s.password is not None else pool.auth_secret
        server = ServerConnection(self._hooks, login(params, password, scram_keys=pool.scram_keys),
                                  host, s.port, done,
                                  tls=None if host.startswith("/") else s.server_tls)
        server.slot_held = True
        try:
            async with asyncio.timeout(s.server_connect_timeout or None):
                await open_socket(server, host, s.port, s.tcp,
                                  await pool.registry.server_addresses(host))
                await done
            refusal = session_attrs_refusal(s.target_session_attrs, host, s.port, server.params)
            if refusal is not None:
                raise ServerGone(refusal)
        except (OSError, EcluseError, TimeoutError) as exc:
            if isinstance(exc, TimeoutError):
                exc = ServerGone("server connect timeout (server_connect_timeout)")
            server.close(exc)
            _retrieve(done)
            return server, exc
        except asyncio.CancelledError:
            server.close()
            _retrieve(done)
            self._forget(server)
            raise
        return server, None

    def _on_connected(self, server: ServerConnection) -> None:
        server.state = ServerState.IDLE  # the hub owns it: no pool collection holds it
        if self.closed or server.is_closed():
            server.close()
            return
        server.on_notification = self._on_notification
        self._server = server
        self._last_error = None
        log.debug("listener connection %s for %s", server, self.pool.name)
        self._todo = dict.fromkeys(self._channels)
        self._pump()

    def _on_connect_failed(self, exc: Exception) -> None:
        sqlstate = exc.sqlstate if isinstance(exc, EcluseError) else "08006"
        reason = exc.message if isinstance(exc, EcluseError) else str(exc)
        fields = {"S": "ERROR", "V": "ERROR", "C": sqlstate,
                  "M": f"LISTEN: could not connect the listener connection: {reason}"}
        if isinstance(exc, ServerLoginFailed) and exc.fields.get("D"):
            fields["D"] = exc.fields["D"]
        self._last_error = ErrorResponse(fields)
        self._last_failure = time.monotonic()
        log.warning("listener connection for %s failed: %s", self.pool.name, reason)
        self._fail_pending(self._last_error)
        if self._channels and not self.closed:
            # Subscribers from before the connection was lost are still waiting.
            delay = max(self.pool.settings.server_login_retry, 0.1)
            self._retry = asyncio.get_running_loop().call_later(delay, self._retry_connect)

    def _retry_connect(self) -> None:
        self._retry = None
        if self._channels:
            self._ensure_server()

    def _on_server_closed(self, server: ServerConnection) -> None:
        """The ServerConnection reports its end (connection_lost)."""
        self._forget(server)
        if server is not self._server:
            return  # a failed connect, or one the hub closed on purpose
        self._server = None
        self._listening.clear()
        self._in_flight = None
        self._cancel_idle_timer()
        if self._channels and not self.closed:
            log.warning("listener connection of %s lost; reconnecting to LISTEN on %d "
                        "channels (notifications sent meanwhile are lost)",
                        self.pool.name, len(self._channels))
            self._ensure_server()

    def _forget(self, server: ServerConnection) -> None:
        """Give back the connection's slot in the cross-pool limits, once."""
        if server.slot_held:
            server.slot_held = False
            self.pool.registry.on_server_closed(self.pool, in_pool=False)

    def _arm_idle_timer(self) -> None:
        timeout = self.pool.settings.server_idle_timeout
        if timeout > 0 and self._idle_timer is None and self._server is not None:
            self._idle_timer = asyncio.get_running_loop().call_later(timeout, self._close_idle)

    def _cancel_idle_timer(self) -> bool:
        """Cancel the idle timer; True if one was armed."""
        timer, self._idle_timer = self._idle_timer, None
        if timer is None:
            return False
        timer.cancel()
        return True

    def _close_idle(self) -> None:
        self._idle_timer = None
        server = self._server
        if server is None or self._channels or self._in_flight is not None:
            return
        log.debug("closing the idle listener connection of %s", self.pool.name)
        self._server = None  # a subscribe from now on opens a new connection
        self._listening.clear()
        server.close()
