"""FrontendSession: one client connection, from startup to goodbye.

States (``ClientState``) and the only transitions allowed:

    LOGIN   -> AUTH (StartupMessage accepted) | CLOSED
    AUTH    -> WELCOME (authenticated) | CLOSED
    WELCOME -> IDLE (ParameterStatus/BackendKeyData/ReadyForQuery sent) | CLOSED
    IDLE    -> WAITING (a request needs a server) | LINKED | CLOSED
    WAITING -> LINKED (pool assigned a server) | IDLE (cancelled) | CLOSED
    LINKED  -> IDLE (server released per pool mode) | CLOSED

Rules:
1. Only FrontendSession and its mixins change a session's state, through
   ``_set_state``.
2. Client bytes are forwarded as they arrive, in the batch they arrived in;
   only Terminate and the message types the tracker counts are looked at.
3. A protocol error from this client closes this client only.
4. TLS starts in LOGIN (SSLRequest answered 'S', or a direct handshake done by
   frontend/tls.py's listener); from 'S' until the handshake is over, no byte
   the client sends is read as protocol data (CVE-2021-23214).

Split out: the login phase, startup to welcome, in the LoginPhase mixin
(frontend/login.py), with authentication lookups (frontend/authn.py) and TLS
accept (frontend/tls.py); and the SQL ecluse must see in transaction mode — session
state, DEALLOCATE, LISTEN — in the SessionStateKeeping mixin
(frontend/statekeeping.py). A client of the virtual database pgbouncer/ecluse
is authenticated here like any other, then admitted and answered through the
ConsoleLink mixin (frontend/consolelink.py): it never gets a pool or a server.
Also mixins: the express path (frontend/express.py), what a linked server
needs (Relaying, frontend/relay.py), cancels (Cancelling,
frontend/cancelling.py) and sharding's side of requests (ShardedRequests,
frontend/sharding.py). This module keeps the asyncio callbacks, the requests
of a client without a server, the pool's WaitingClient side and closing.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Mapping
from socket import inet_aton
from types import MappingProxyType

from ecluse.admin.commands import on_console_left
from ecluse.admin.console import AdminConsole
from ecluse.config.tls import client_tls_context
from ecluse.errors import (
    AuthFailed,
    ClientRefused,
    EcluseError,
    PoolTimeout,
    RemoteProtocolError,
)
from ecluse.frontend.cancelling import Cancelling
from ecluse.frontend.consolelink import ConsoleLink
from ecluse.frontend.context import ClientContext
from ecluse.frontend.express import ExpressPath
from ecluse.frontend.handover import HandedOver
from ecluse.frontend.login import LoginPhase, _Login
from ecluse.frontend.prepared import StatementRewriter
from ecluse.frontend.relay import Relaying
from ecluse.frontend.sharding import ShardedRequests
from ecluse.frontend.statekeeping import SessionStateKeeping
from ecluse.frontend.states import TRANSITIONS, ClientState
from ecluse.pool.pool import Pool
from ecluse.protocol import backend as be
from ecluse.protocol import codes
from ecluse.protocol.framing import Framer
from ecluse.routing.readwrite import ReadRouter
from ecluse.routing.shards import MOVE, ShardError, ShardRouter
from ecluse.server.connection import ServerConnection
from ecluse.server.params import build_sync_query
from ecluse.server.state import build_settings_sync

log = logging.getLogger("ecluse.client")

# States as module constants: an Enum member lookup costs ten times a global.
_LOGIN = ClientState.LOGIN
_AUTH = ClientState.AUTH
_WELCOME = ClientState.WELCOME
_IDLE = ClientState.IDLE
_WAITING = ClientState.WAITING
_LINKED = ClientState.LINKED
_CLOSED = ClientState.CLOSED

_X = codes.FE_TERMINATE
_P = codes.FE_PARSE
_STRAY_WHEN_IDLE = frozenset({codes.FE_COPY_DATA, codes.FE_COPY_DONE, codes.FE_COPY_FAIL,
                              codes.FE_FLUSH})
_PENDING_LIMIT = 1 << 20  # bytes buffered while waiting before we stop reading
_DRAIN_TIMEOUT = 10.0  # how long a departed client's server may take to finish
_NO_SETTINGS: Mapping[str, str] = MappingProxyType({})
# query_wait_notify's notice: PgBouncer's text, severity and SQLSTATE.
_WAIT_NOTICE = be.encode_notice_response(
    "No server connection available in postgres backend, client being queued")


class FrontendSession(LoginPhase, ConsoleLink, SessionStateKeeping, ExpressPath,
                      ShardedRequests, Cancelling, Relaying, HandedOver, asyncio.Protocol):
    """The asyncio Protocol of one client connection."""

    # One per client, idle ones included (100,000 of them on a node): slots instead
    # of a __dict__ keep an idle session small. Every attribute of the session and
    # of its mixins is declared here.
    __slots__ = (
        "_admitted", "_always_probe", "_console_backlog", "_custom_names",
        "_custom_unknown", "_framer", "_harmless_sql", "_hub_waits", "_listening",
        "_login", "_notify_backlog", "_peer", "_pending", "_pending_bytes",
        "_probing", "_reading_paused", "_rewriter", "_router", "_suspect", "_suspended",
        "_tls_task", "_write_paused", "cancel_key",
        "connected_at", "console", "ctx", "database", "id",
        "last_activity", "params", "pinned", "pool", "request_started", "server",
        "session_settings", "state", "tls", "transport", "user", "xact_started")

    def __init__(self, ctx: ClientContext):
        self.ctx = ctx
        self.state = _LOGIN
        self.transport: asyncio.Transport | None = None
        # The peer address: an IPv4 address and port packed in one int (32 bytes per
        # idle client, where "127.0.0.1:54321" takes 64), else as the peer property
        # shows it.
        self._peer: int | str = "?"
        self.user = ""
        self.database = ""
        # The client's tracked parameters; after the welcome a dict shared with the
        # pool's other clients that have the same (Pool.welcome): replaced, never
        # changed in place.
        self.params: dict[str, str] = {}
        self.pool: Pool | None = None
        self.server: ServerConnection | None = None
        # BackendKeyData's process id (high 32 bits) and secret (low 32) in one int:
        # 36 bytes per idle client, where an int and a bytes object took 69.
        self.cancel_key = 0
        self.connected_at = time.monotonic()
        self.last_activity = self.connected_at
        self.request_started = 0.0
        self.xact_started = 0.0  # first request of the open transaction, for xact_time
        self.id = next(ctx.client_ids)  # SHOW CLIENTS' id, KILL_CLIENT's argument
        settings = ctx.config.settings
        self._login: _Login | None = _Login()  # dropped with the welcome
        self._framer = Framer(codes.FRONTEND_TYPES, codes.FRONTEND_TYPES,
                              settings.max_packet_size,
                              inspect_max=settings.max_startup_packet_size, side="client")
        # Pieces received while no server is linked; () when none, so that an idle
        # client holds no empty list.
        self._pending: list | tuple = ()
        self._pending_bytes = 0
        self._write_paused = False
        self._reading_paused = False
        self._suspended = False  # SUSPEND stopped reading (see suspend_reading)
        # TLS (frontend/tls.py): the context when this listener may offer it, whether
        # the connection is encrypted, and the task detecting or running a handshake.
        self.tls = False
        self._tls_task: asyncio.Task | None = None
        self._rewriter: StatementRewriter | None = None
        # Set after the welcome for a database with read_db (routing/readwrite.py)
        # or shards (routing/shards.py).
        self._router: ReadRouter | ShardRouter | None = None
        self._admitted = False  # counted in ctx's per-database/per-user client limits
        # Session state in transaction/statement mode (see on_sql and _start_probe).
        # SET by the client, replayed on link; replaced whole by each probe, never
        # changed in place, so every client without any shares one empty mapping.
        self.session_settings: Mapping[str, str] = _NO_SETTINGS
        self.pinned: list[str] | None = None  # why the client keeps its server
        self._suspect = False  # SQL since the link may have left session state
        self._always_probe = False  # it prepared such a statement: any transaction may
        self._probing = False
        # Custom settings (app.tenant) are not in pg_settings: the probe asks for the
        # names seen in the client's SQL; one it cannot name pins the client.
        self._custom_names: set[str] | None = None  # made on first use
        self._custom_unknown = False
        # The last Query text _answer_idle_sql found harmless (statekeeping.py).
        self._harmless_sql: bytes | None = None
        # LISTEN through the pool's hub (transaction/statement mode).
        self._listening = False
        self._hub_waits = 0  # LISTEN statements waiting for the hub
        self._notify_backlog: list[bytes] | tuple = ()  # a list once one is held
        # Admin console (admin/console.py): set for the pgbouncer/ecluse databases.
        self.console: AdminConsole | None = None
        self._console_backlog: list | None = None  # pieces held while a reply is awaited

    def __repr__(self) -> str:
        return f"<client {self.peer} {self.database}/{self.user} {self.state.value}>"

    @property
    def peer(self) -> str:
        """The client's address as host:port, or "unix"."""
        peer = self._peer
        if type(peer) is int:
            return (f"{peer >> 40}.{peer >> 32 & 255}.{peer >> 24 & 255}.{peer >> 16 & 255}"
                    f":{peer & 0xFFFF}")
        return peer

    @property
    def cancel_pid(self) -> int:
        return self.cancel_key >> 32

    @property
    def cancel_secret(self) -> bytes:
        return (self.cancel_key & 0xFFFFFFFF).to_bytes(4)

    @property
    def _tls_context(self) -> ssl.SSLContext | None:
        """The context to offer TLS with, if this listener may (TCP: PostgreSQL
        offers no TLS on unix sockets either)."""
        if self._peer == "unix":
            return None
        return client_tls_context(self.ctx.config.settings)

    def _set_state(self, state: ClientState) -> None:
        if state not in TRANSITIONS[self.state]:
            raise RuntimeError(f"client state {self.state} -> {state} not allowed")
        self.state = state

    def _describe(self) -> str:
        return f"client {self.peer} {self.database or '-'}/{self.user or '-'}"

    # --- asyncio callbacks -------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if not isinstance(peer, tuple):
            self._peer = "unix"
        elif len(peer) == 2:  # IPv4
            self._peer = int.from_bytes(inet_aton(peer[0])) << 16 | peer[1]
        else:
            self._peer = f"{peer[0]}:{peer[1]}"
        self.ctx.clients.add(self)
        if self.state is _LOGIN:  # not one handed over logged in (frontend/handover.py)
            self.ctx.logging_in[self] = None  # until the welcome (client_login_timeout)
        if transport.get_extra_info("ssl_object") is not None:
            self._on_direct_tls(transport)

    def data_received(self, data: bytes) -> None:
        self.last_activity = time.monotonic()
        if self.state is _IDLE and self._rewriter is not None and self._express_request(data):
            return
        if self.pool is not None:
            self.pool.stats.received += len(data)
        try:
            if self._tls_task is not None:
                self._on_tls_setup_data(data)
                return
            if self.state is _LOGIN:
                self._on_startup_data(data)
                return
            pieces = self._framer.feed(data)
            if self.state is _AUTH:
                self._on_auth_pieces(pieces)
            elif self.server is not None and self.state is _LINKED \
                    and not self._probing:
                router = self._router
                if router is not None and (self._pending or (verdict := router.holds(
                        pieces, self._rewriter.statements,
                        self.server.tracker.status != codes.STATUS_IDLE, self.pool))):
                    # A write after reads, or a request for another shard: sent
                    # once the server is released.
                    if not self._pending and verdict == MOVE:
                        self._end_open_request()
                    self._buffer(pieces)
                else:
                    self._forward(pieces)
            else:
                self._queue_pieces(pieces)
        except RemoteProtocolError as exc:
            log.warning("%s protocol error: %s", self._describe(), exc.message)
            self.fatal(exc)
        except ShardError as exc:
            self._end_for_shard(exc)
        except (AuthFailed, ClientRefused) as exc:
            self.ctx.login_failures += isinstance(exc, AuthFailed)
            log.warning("%s login failed: %s", self._describe(), exc.message)
            self.fatal(exc)

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state is not _CLOSED:
            if self.state in (_IDLE, _WAITING, _LINKED) and \
                    self.ctx.config.settings.log_disconnections and not self.control_link:
                log.info("%s closed the connection", self._describe())
            self._cleanup()

    def pause_writing(self) -> None:
        self._write_paused = True
        if self.server is not None and self.server.transport is not None:
            self.server.transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self.server is not None and self.server.transport is not None:
            self.server.transport.resume_reading()

    # --- requests while no server is linked ------------------------------------
    def _queue_pieces(self, pieces) -> None:
        if self.state is _CLOSED:
            return  # e.g. refused during the welcome, with more bytes of its batch left
        if self.console is not None:
            self._on_console_pieces(pieces)
            return
        if self.state in (_WAITING, _WELCOME) or self._probing or \
                self._hub_waits or (self.state is _LINKED and self.server is None):
            self._buffer(pieces)
            return
        # IDLE: drop what needs no server; Terminate ends the session.
        start = 0
        while start < len(pieces):
            msg_type, _raw, is_start, _end = pieces[start]
            if is_start and msg_type == _X:
                self.client_close_request()
                return
            if msg_type in _STRAY_WHEN_IDLE and is_start:
                start += 1
                continue
            if not is_start and not self._pending:
                start += 1  # tail of a dropped stray message
                continue
            break
        if start == len(pieces):
            return
        if self._rewriter is not None and not self._pending:
            if isinstance(self._router, ShardRouter) and self._answer_shard_sql(pieces, start):
                return
            if self._answer_idle_sql(pieces, start):
                return
            reply = self._rewriter.answer_locally(pieces[start:])
            if reply is not None:
                self.transport.write(reply)
                return
        self._buffer(pieces[start:])
        self._acquire()

    def _buffer(self, pieces) -> None:
        if self._pending:
            self._pending.extend(pieces)
        else:
            self._pending = list(pieces)
        size = 0
        for piece in pieces:
            size += len(piece[1])
        self._pending_bytes += size
        if self._pending_bytes > _PENDING_LIMIT and not self._reading_paused:
            self.pause_client_reading()

    def _acquire(self) -> None:
        assert self.pool is not None
        if self.ctx.shutting_down:
            self.fatal(ClientRefused("pooler is shutting down", sqlstate="57P01"))
            return
        if self._router is not None:
            try:
                self.pool = self._router.choose(self._pending, self._rewriter.statements,
                                                self.user)
            except ShardError as exc:  # refused before any server sees it
                self._refuse_request(self._take_pending(), 0, exc)
                return
        self._set_state(_WAITING)
        server = self.pool.acquire(self)
        if server is not None:
            self.on_server_assigned(server)

    # --- WaitingClient interface (called by the pool) ------------------------
    def on_server_assigned(self, server: ServerConnection) -> None:
        assert self.pool is not None
        if self.state is _WELCOME:
            self.pool.release(server, reset=False)
            self._finish_welcome()
            return
        if self.state is _CLOSED:
            self.pool.release(server, reset=False)
            return
        sync = build_sync_query(self.params, server.params)
        if self.session_settings or server.session_settings:
            extra = build_settings_sync(self.session_settings, server.session_settings)
            if extra is not None:
                sync = extra if sync is None else f"{sync};{extra}"
        # A BEGIN ecluse answered itself (routing/shards.py rule 4) runs first, after
        # the SETs: in one query string it would take them into its transaction.
        begin = self._router.take_begin() if isinstance(self._router, ShardRouter) else None
        if sync is None:
            sync, begin = begin, None
            if sync is None and self._express_pending(server):
                return  # linked and sent the express way
        self.server = server
        server.link(self)
        rewriter = self._rewriter
        if rewriter is not None:
            rewriter.replies = server.track_replies(self._on_statements_dropped)
        if self._write_paused and server.transport is not None:
            server.transport.pause_reading()
        if sync is None:
            self._set_state(_LINKED)
            self._flush_pending()
        else:
            # Stay WAITING (client bytes keep queueing) until the SETs are done.
            server.run_internal(sync, lambda err: self._on_params_synced(server, err, begin))

    def _on_params_synced(self, server: ServerConnection, error,
                          then: str | None = None) -> None:
        if self.server is not server or self.state is not _WAITING:
            return
        if error is not None:
            self.fatal(ClientRefused(error.message, sqlstate=error.sqlstate))
            return
        if then is not None:
            server.run_internal(then, lambda err: self._on_params_synced(server, err))
            return
        if "search_path" in self.params:
            server.params["search_path"] = self.params["search_path"]
        else:
            server.params.pop("search_path", None)
        server.session_settings = dict(self.session_settings)
        self._set_state(_LINKED)
        self._flush_pending()

    def _on_statements_dropped(self) -> None:
        """The linked server ran DEALLOCATE ALL or DISCARD ALL: its statements are gone,
        and so are the client's (the ReplyQueue calls this only while linked)."""
        if self.server is not None:
            self.server.prepared.clear()
        if self._rewriter is not None:
            self._rewriter.forget_all()

    def on_wait_failed(self, error: Exception) -> None:
        if self.state is _CLOSED:
            return
        router = self._router
        primary = None
        if router is not None and self.state is _WAITING and not isinstance(error, PoolTimeout):
            primary = router.fallback(self.pool, self.user)
        if primary is not None:
            # The read pool cannot serve: the primary serves the reads meanwhile.
            log.warning("%s: read pool failed (%s), request sent to the primary",
                        self._describe(), error)
            self.pool = primary
            server = self.pool.acquire(self)
            if server is not None:
                self.on_server_assigned(server)
            return
        log.warning("%s gave up waiting for a server: %s", self._describe(), error)
        self.fatal(error)

    def on_long_wait(self) -> None:
        """query_wait_notify passed while this client waits for a server: say so with
        a NoticeResponse, which a client may get at any time; the wait goes on. Not
        before the welcome, as PgBouncer."""
        if self.state is _WAITING and self.transport is not None:
            self.transport.write(_WAIT_NOTICE)

    def _take_pending(self) -> list | tuple:
        """The pieces buffered meanwhile, the buffer emptied."""
        pieces, self._pending = self._pending, ()
        self._pending_bytes = 0
        return pieces

    def _flush_pending(self) -> None:
        pieces = self._take_pending()
        if self._reading_paused:
            self.resume_client_reading()
        if self._router is not None:
            pieces = self._shard_trim(pieces)
        if pieces:
            try:
                self._forward(pieces)
            except RemoteProtocolError as exc:
                # Called when the pool assigns a server, not from data_received: a
                # malformed message buffered meanwhile must end this client here too.
                log.warning("%s protocol error: %s", self._describe(), exc.message)
                self.fatal(exc)

    def pause_client_reading(self) -> None:
        if self.transport is not None and not self._reading_paused:
            self._reading_paused = True
            if not self._suspended:
                self.transport.pause_reading()

    def resume_client_reading(self) -> None:
        if self.transport is not None and self._reading_paused:
            self._reading_paused = False
            if not self._suspended:
                self.transport.resume_reading()

    def suspend_reading(self) -> None:
        """Stop reading this client for SUSPEND, apart from any other pause."""
        if self.transport is None or self._suspended or self.state is _CLOSED:
            return
        self._suspended = True
        if not self._reading_paused:
            self.transport.pause_reading()

    def end_suspend(self) -> None:
        """Read this client again after RESUME, unless another pause still holds."""
        if not self._suspended:
            return
        self._suspended = False
        if self.transport is not None and not self._reading_paused \
                and self.state is not _CLOSED:
            self.transport.resume_reading()

    # --- closing -------------------------------------------------------------------
    def fatal(self, error: Exception) -> None:
        """Send a FATAL ErrorResponse and close this client."""
        if self.state is _CLOSED or self.transport is None:
            return
        if self._tls_task is not None:  # no cleartext reply in the middle of a handshake
            self.close()
            return
        if isinstance(error, EcluseError):
            msg, sqlstate = error.message, error.sqlstate
        else:
            msg, sqlstate = str(error), "08P01"
        if self.pool is not None:
            self.pool.stats.add_error("pooler", sqlstate)
        self._log_pooler_error(msg, sqlstate)
        self.transport.write(be.encode_error_response(msg, sqlstate, severity="FATAL"))
        self.close()

    def _log_pooler_error(self, message: str, sqlstate: str) -> None:
        """Log an error ecluse itself sends this client, unless log_pooler_errors = 0."""
        if self.ctx.config.settings.log_pooler_errors:
            log.warning("%s pooler error: %s", self._describe(), message,
                        extra={"client": self.peer, "database": self.database,
                               "user": self.user, "sqlstate": sqlstate})

    def client_close_request(self) -> None:
        """The client sent Terminate: log it as PgBouncer does (log_disconnections), close."""
        if self.ctx.config.settings.log_disconnections and not self.control_link:
            log.info("%s closing because: client close request (age=%.0fs)", self._describe(),
                     time.monotonic() - self.connected_at)
        self.close()

    def close(self) -> None:
        if self.state is _CLOSED:
            return
        self._cleanup()
        if self.transport is not None:
            self.transport.close()

    def _cleanup(self) -> None:
        """Give back whatever this session held; idempotent."""
        was = self.state
        self.state = _CLOSED
        self.ctx.clients.discard(self)
        if self.console is not None:
            on_console_left(self.ctx)
        if self._admitted:
            self._admitted = False
            self.ctx.leave(self.database, self.user)
        pid = self.cancel_pid
        if pid and self.ctx.cancel_keys.get(pid) is self:
            del self.ctx.cancel_keys[pid]
        if self.ctx.adopted_keys.get(self.cancel_key) is self:
            del self.ctx.adopted_keys[self.cancel_key]
        self.ctx.logging_in.pop(self, None)
        self._login = None
        if self._rewriter is not None:
            # The rewriter's watcher is this session: a cycle that only the garbage
            # collector would free. Broken, the session goes with its last reference,
            # and under churn its memory is reused while still in the CPU caches.
            self._rewriter.sql_watcher = None
        if self._tls_task is not None:
            self._tls_task.cancel()
            self._tls_task = None
        if was is _WAITING and self.pool is not None:
            self.pool.cancel_wait(self)
        if self._listening and self.pool is not None:
            self.pool.listen_hub().unsubscribe_all(self)
        server, self.server = self.server, None
        if server is not None and self.pool is not None:
            self._abandon(server, self.pool)

    def _abandon(self, server: ServerConnection, pool: Pool) -> None:
        """Return a server whose client left, rolling back whatever it left open.

        Requests still running are cancelled and their replies drained within
        _DRAIN_TIMEOUT; a transaction left open is rolled back; then the server
        goes back to the pool. A server the client left in the middle of a
        message is closed: the rest of that message will never come.
        """
        self._unlink(server)
        reset = pool.settings.mode == "session" or pool.settings.server_reset_query_always
        if self.pinned or self._suspect or self._always_probe:
            # The client may have left session state: only a full reset may clear it.
            reset = True
            if "DISCARD ALL" not in pool.settings.server_reset_query.upper():
                server.close_when_released = True
        if not self._framer.at_boundary:
            log.info("%s left in the middle of a message; closing %s", self._describe(), server)
            server.close_when_released = True
            pool.release(server, reset=False)
            return
        if server.tracker.can_release():
            pool.release(server, reset=reset)
            return
        loop = asyncio.get_running_loop()
        timer = loop.call_later(_DRAIN_TIMEOUT, server.close)

        def after_drain() -> None:
            timer.cancel()
            if server.is_closed():
                return
            if server.tracker.status == codes.STATUS_IDLE:
                pool.release(server, reset=reset)
                return
            server.run_internal("ROLLBACK", lambda err: (
                server.close() if err is not None else pool.release(server, reset=reset)))

        if not server.tracker.is_done():
            # The client will never read the answer: stop the work now.
            self._cancel_on(server)
        server.drain(after_drain)
