"""ServerConnection: the asyncio Protocol of one PostgreSQL server connection.

It asks for TLS when configured (server_tls_sslmode), logs in (driving
server/login.py's generator), relays server bytes to the linked client, runs
ecluse's own queries (parameter sync, reset, check), and drains a server whose
client left mid-request.

Rules:
1. Only the owning Pool changes ``state``; this class reports events to it.
2. Server bytes are forwarded as they arrive; only control messages are
   decoded (DESIGN.md hot-path rules).
3. Knows nothing of clients beyond the small ``ServerLink`` interface.
4. The server's answer to SSLRequest is one byte; anything after it before
   the handshake closes the connection unread (CVE-2021-23222).
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from ecluse import accel
from ecluse.config.tls import ServerTls
from ecluse.errors import RemoteProtocolError, ServerGone, ServerLoginFailed
from ecluse.protocol import codes, framing
from ecluse.protocol import replies as rq
from ecluse.protocol.backend import (
    decode_data_row,
    decode_error_fields,
    decode_parameter_status,
    error_sqlstate,
)
from ecluse.protocol.framing import Framer
from ecluse.protocol.frontend import (
    encode_bind,
    encode_execute,
    encode_parse,
    encode_query,
    encode_sync,
    encode_terminate,
)
from ecluse.protocol.messages import BackendKeyData, ErrorResponse
from ecluse.protocol.replies import ReplyQueue
from ecluse.protocol.startup import encode_ssl_request
from ecluse.protocol.tracker import RequestTracker
from ecluse.server.prepared import PreparedCache
from ecluse.stats.counters import PoolStats
from ecluse.tcpopts import TcpOptions
from ecluse.tcpopts import apply as apply_tcp_options

log = logging.getLogger("ecluse.server")

_Z = codes.BE_READY_FOR_QUERY
_S = codes.BE_PARAMETER_STATUS
_E = codes.BE_ERROR_RESPONSE
_D = codes.BE_DATA_ROW
_TRACKED_REPLIES = frozenset({
    codes.BE_COMMAND_COMPLETE, codes.BE_EMPTY_QUERY_RESPONSE, codes.BE_PORTAL_SUSPENDED,
    codes.BE_COPY_IN_RESPONSE, codes.BE_COPY_OUT_RESPONSE, codes.BE_COPY_BOTH_RESPONSE,
})
# Messages decoded while relaying; the rest stream through untouched.
_RELAY_INSPECT = frozenset({_Z, _S, _E, codes.BE_NOTIFICATION_RESPONSE}) | _TRACKED_REPLIES
_ROWS_INSPECT = _RELAY_INSPECT | {codes.BE_DATA_ROW}
_LOGIN_INSPECT = codes.BACKEND_TYPES
# Replies a ReplyQueue must see when statement names are rewritten.
_REPLY_TYPES = frozenset({
    codes.BE_PARSE_COMPLETE, codes.BE_BIND_COMPLETE, codes.BE_CLOSE_COMPLETE, codes.BE_NO_DATA,
    codes.BE_ROW_DESCRIPTION, codes.BE_COMMAND_COMPLETE, codes.BE_EMPTY_QUERY_RESPONSE,
    codes.BE_PORTAL_SUSPENDED, _E, _Z,
})
# The reply messages _relay_express passes through without a look: rows, their
# description, command tags, empty-query answers, notices, and the extended
# protocol's completions and descriptions.
_EXPRESS_TYPES = frozenset({
    codes.BE_ROW_DESCRIPTION, _D, codes.BE_COMMAND_COMPLETE, codes.BE_EMPTY_QUERY_RESPONSE,
    codes.BE_NOTICE_RESPONSE, codes.BE_PARSE_COMPLETE, codes.BE_BIND_COMPLETE,
    codes.BE_NO_DATA, codes.BE_PARAMETER_DESCRIPTION,
})
is_whole_reply = accel.pick(framing.is_whole_reply, "ecluse.protocol._framing")
# A server message carries at most what PostgreSQL can send (1 GB rows).
_MAX_SERVER_MESSAGE = 0x7FFFFFFF
# SHOW SERVERS' id: stable for a connection's life, never reused within a worker.
_SERVER_IDS = itertools.count(1)


def number_servers(start: int, step: int) -> None:
    """Number servers start, start + step, ...: worker i of n ids unique node-wide."""
    global _SERVER_IDS
    _SERVER_IDS = itertools.count(start, step)


class ServerState(enum.Enum):
    """PgBouncer's names, as SHOW SERVERS prints them."""

    __hash__ = object.__hash__  # members are singletons; Enum's own hash is Python code

    LOGIN = "login"
    IDLE = "idle"
    ACTIVE = "active"
    USED = "used"
    TESTED = "tested"
    CLOSED = "closed"


class ServerLink(Protocol):
    """What a server needs from the client it is linked to."""

    def write_from_server(self, data: bytes | memoryview) -> None: ...
    def on_server_ready(self, server: ServerConnection) -> None: ...
    # on_server_ready, after a reply relayed by _relay_express (link_express's clients).
    def on_express_ready(self, server: ServerConnection, tracker: RequestTracker) -> None: ...
    def on_server_params(self, name: str, value: str) -> None: ...
    def on_server_notification(self, raw: bytes) -> None: ...
    def on_server_lost(self, server: ServerConnection, error: Exception) -> None: ...
    def pause_client_reading(self) -> None: ...
    def resume_client_reading(self) -> None: ...


class PoolHooks(Protocol):
    """What a server reports to its pool."""

    def on_server_closed(self, server: ServerConnection) -> None: ...


InternalDone = Callable[[ErrorResponse | None], None]
Row = list[bytes | None]


async def open_socket(server: ServerConnection, host: str, port: int | str,
                      tcp: TcpOptions | None = None,
                      addresses: Sequence[str] = ()) -> None:
    """Connect ``server`` to PostgreSQL: a unix socket when ``host`` is a directory
    (a path starting with "/"), TCP otherwise, with the ``tcp`` options. With
    ``addresses`` (``host``'s, looked up already: server/dns.py) each is tried in
    order until one accepts, as libpq does; the last one's error is raised."""
    loop = asyncio.get_running_loop()
    if host.startswith("/"):
        await loop.create_unix_connection(lambda: server, f"{host}/.s.PGSQL.{port}")
        return
    targets = addresses or (host,)
    for i, address in enumerate(targets):
        try:
            transport, _ = await loop.create_connection(lambda: server, address, port)
            break
        except OSError:
            if i == len(targets) - 1:
                raise
    sock = transport.get_extra_info("socket")
    if tcp is not None and sock is not None:
        apply_tcp_options(sock, tcp)


class ServerConnection(asyncio.Protocol):
    """One connection to PostgreSQL, owned by a Pool."""

    def __init__(self, pool: PoolHooks, login_gen, host: str, port: int | str,
                 login_done: asyncio.Future, max_prepared: int = 0,
                 tls: ServerTls | None = None):
        self.pool = pool
        self.host = host
        self.port = port
        self.id = next(_SERVER_IDS)
        self.state = ServerState.LOGIN
        self.params: dict[str, str] = {}
        self.key: BackendKeyData | None = None
        self.client: ServerLink | None = None
        self._tracker = RequestTracker()  # read through the tracker property
        # The pooler-wide prepared statements this server holds (frontend/prepared.py).
        self.prepared = PreparedCache(max_prepared)
        # Set while a client whose statement names are rewritten is linked: the
        # server's own queue (one per server, not one per idle client).
        self.replies: ReplyQueue | None = None
        self._reply_queue: ReplyQueue | None = None  # made on the first such link
        self.transport: asyncio.Transport | None = None
        self.created_at = time.monotonic()
        self.last_used = self.created_at
        self.close_when_released = False  # set by RECONNECT, lifetime, errors
        # Settings a client SET for its session (not the tracked parameters), as the
        # last probe or settings sync left them (server/state.py).
        self.session_settings: dict[str, str] = {}
        self.slot_held = False  # counted in the registry's cross-pool limits
        # Its pool's counters; connections outside a pool (LISTEN hub, auth lookups)
        # count into a throwaway one.
        self.stats = PoolStats()
        self.cancel_in_flight = False  # a CancelRequest for this server not yet delivered
        self.after_cancels: Callable[[], None] | None = None  # run once they are
        self.local_addr = ""
        self._login = login_gen
        self._login_done = login_done
        self._framer = Framer(codes.BACKEND_TYPES, _LOGIN_INSPECT, _MAX_SERVER_MESSAGE,
                              side="server")
        self._internal: InternalDone | None = None
        self._internal_error: ErrorResponse | None = None
        self._internal_rows: list[Row] | None = None
        # Called with the raw NotificationResponse of a server that is not relaying
        # to a client (the LISTEN hub's connection); None drops them.
        self.on_notification: Callable[[bytes], None] | None = None
        self._draining: Callable[[], None] | None = None
        self._closing_error: Exception | None = None
        # TLS: how to ask for it; True from SSLRequest until the login starts; True
        # while SSLRequest awaits its one-byte answer; the handshake task; and
        # whether the connection is encrypted.
        self._tls = tls
        self._tls_setup = False
        self._tls_asked = False
        self._tls_task: asyncio.Task | None = None
        self.tls = False
        # A request came by the express path (frontend/express.py) and nothing
        # since: its reply may take _relay_express, and the tracker and reply
        # queue have not been told of it yet. What _settle_express tells them, on
        # first need: per message sent, its type and reply kind (and, for the Bind
        # of a named statement, the undo of its reply entry); None otherwise.
        self.express: tuple[tuple, ...] | None = None

    @property
    def tracker(self) -> RequestTracker:
        """The request tracker, told of an outstanding express request first."""
        if self.express:
            self._settle_express()
        return self._tracker

    def _settle_express(self) -> None:
        """Record the outstanding express request as the general path would have:
        anything but _relay_express is about to look at this link's requests."""
        sent, self.express = self.express, None
        tracker = self._tracker
        replies = self.replies
        counted = tracker.parses, tracker.binds  # set when the request was sent
        for entry in sent:
            msg_type, kind = entry[0], entry[1]
            tracker.on_client_message(msg_type)
            if replies is not None:
                if len(entry) > 2:  # a named statement's Bind, with its rewriter's undo
                    replies.add(kind, rq.FORWARD, b"", entry[2])
                else:
                    replies.add(kind, undo=tracker.query_skipped_undo if kind == rq.QUERY
                                else None)
        tracker.parses, tracker.binds = counted

    def __repr__(self) -> str:
        pid = self.key.process_id if self.key else 0
        return f"<server {self.host}:{self.port} pid={pid} {self.state.value}>"

    # --- asyncio callbacks -------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("sockname")
        if isinstance(sock, tuple):
            self.local_addr = f"{sock[0]}:{sock[1]}"
        if self._tls is not None:
            self._tls_setup = self._tls_asked = True
            transport.write(encode_ssl_request())
            return
        self._start_login()

    def _start_login(self) -> None:
        assert self.transport is not None
        self._tls_setup = False
        try:
            first = next(self._login)
        except Exception as exc:  # the generator refused before the first byte
            self._fail_login(exc)
            return
        self.transport.write(first)

    def data_received(self, data: bytes) -> None:
        if self.express:
            if self._relay_express(data):
                return
            self._settle_express()
        if self._tls_setup:
            self._on_ssl_response(data)
            return
        framer = self._framer
        try:
            if framer.holds_partial:
                self._dispatch(framer.feed(data))
                return
            pieces = framer.feed(data)
            if self.client is not None and self._internal is None and \
                    self.state is not ServerState.LOGIN:
                # The common case, relaying: tell _relay when the pieces are exactly
                # ``data``, so that it can forward the chunk as it came, uncopied.
                self._relay(pieces, None if framer.holds_partial else data)
            else:
                self._dispatch(pieces)
        except RemoteProtocolError as exc:
            log.warning("server %s:%s protocol error: %s", self.host, self.port, exc.message)
            self.close(exc)

    def _dispatch(self, pieces) -> None:
        if self.state is ServerState.LOGIN:
            self._on_login_pieces(pieces)
        elif self._internal is not None:
            self._on_internal_pieces(pieces)
        elif self.client is not None:
            self._relay(pieces)
        elif self._draining is not None:
            self._on_drain_pieces(pieces)
        else:
            self._on_idle_pieces(pieces)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._tls_task is not None:
            self._tls_task.cancel()
            self._tls_task = None
        previous = self.state
        self.state = ServerState.CLOSED
        error = self._closing_error or ServerGone(
            "server closed the connection unexpectedly" if exc is None else
            f"server connection failed: {exc}")
        if previous is ServerState.LOGIN:
            self._fail_login(error)
        client, self.client = self.client, None
        if client is not None:
            client.on_server_lost(self, error)
        if self._internal is not None:
            done, self._internal = self._internal, None
            done(ErrorResponse({"C": "08006", "M": "server connection lost"}))
        self.pool.on_server_closed(self)

    def pause_writing(self) -> None:
        if self.client is not None:
            self.client.pause_client_reading()

    def resume_writing(self) -> None:
        if self.client is not None:
            self.client.resume_client_reading()

    # --- TLS ---------------------------------------------------------------
    def _on_ssl_response(self, data: bytes) -> None:
        """The server's answer to SSLRequest: 'S' and nothing else, or 'N'."""
        tls = self._tls
        assert tls is not None and self.transport is not None
        if not self._tls_asked or len(data) != 1:
            # Bytes after 'S' (or 'N') before the handshake were never asked for and
            # must not be read as the server's (CVE-2021-23222): a man in the middle
            # could inject them.
            self._refuse(RemoteProtocolError(
                "server sent unencrypted data after its answer to SSLRequest"))
            return
        self._tls_asked = False
        if data == b"S":
            self.transport.pause_reading()
            self._tls_task = asyncio.get_running_loop().create_task(self._start_tls(tls))
        elif data == b"N" and not tls.required:
            self._start_login()
        elif data == b"N":
            self._refuse(ServerLoginFailed(
                f"server does not support SSL, but server_tls_sslmode is {tls.mode.value}",
                sqlstate="08P01"))
        else:
            self._refuse(RemoteProtocolError(
                f"server answered SSLRequest with {data!r} instead of 'S' or 'N'"))

    async def _start_tls(self, tls: ServerTls) -> None:
        loop = asyncio.get_running_loop()
        raw = self.transport
        assert raw is not None
        try:
            # server_hostname is sent as SNI; the context checks it only for verify-full.
            new = await loop.start_tls(raw, self, tls.context, server_hostname=str(self.host))
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            self._tls_task = None
            self._refuse(ServerLoginFailed(f"TLS handshake with server failed: {exc}",
                                           sqlstate="08006"))
            return
        self._tls_task = None
        if new is None or self.state is ServerState.CLOSED:
            return
        self.transport = new
        self.tls = True
        self._start_login()

    def _refuse(self, exc: Exception) -> None:
        """Fail the login and drop the connection without a word (nothing is trusted yet)."""
        log.warning("server %s:%s: %s", self.host, self.port, exc)
        self._fail_login(exc)
        self.close(exc)

    # --- login -------------------------------------------------------------
    def _on_login_pieces(self, pieces) -> None:
        for i, (msg_type, raw, _start, _end) in enumerate(pieces):
            body = bytes(raw[5:])
            try:
                reply = self._login.send((msg_type, body))
            except StopIteration as stop:
                result = stop.value
                self.params = dict(result.params)
                self.key = result.key
                self._framer.set_inspect(_RELAY_INSPECT)
                if i + 1 < len(pieces):
                    self.close(RemoteProtocolError("server sent data after ReadyForQuery"))
                    return
                if not self._login_done.done():
                    self._login_done.set_result(self)
                return
            except (ServerLoginFailed, RemoteProtocolError) as exc:
                self._fail_login(exc)
                self.close(exc)
                return
            if reply:
                assert self.transport is not None
                self.transport.write(reply)

    def _fail_login(self, exc: Exception) -> None:
        if not self._login_done.done():
            self._login_done.set_exception(exc)

    # --- relaying to a client ----------------------------------------------
    def link(self, client: ServerLink) -> None:
        """Attach a client; its requests now go to this server."""
        self.client = client
        self.tracker.reset()

    def track_replies(self, on_statements_dropped: Callable[[], None]) -> ReplyQueue:
        """This server's reply queue, emptied, for the client being linked whose
        statement names are rewritten (frontend/prepared.py); set until unlink."""
        queue = self._reply_queue
        if queue is None:
            queue = self._reply_queue = ReplyQueue()
        # Empty already: unlink, the only way a link ends, resets it.
        queue.on_statements_dropped = on_statements_dropped
        self.replies = queue
        return queue

    def link_express(self, client: ServerLink, sent: tuple[tuple, ...],
                     parses: int = 0, binds: int = 0) -> None:
        """Attach a client whose request (``sent``: see ``express``, with ``parses``
        Parses and ``binds`` Binds, for the counters) comes by the express path, and
        is sent next (its replies tracked if track_replies was called first)."""
        self.client = client
        tracker = self._tracker
        tracker.reset()
        tracker.parses = parses
        tracker.binds = binds
        self.express = sent

    def unlink(self, now: float = 0.0) -> None:
        """Detach the client; resume reading if its slowness had paused us. ``now``:
        the clock, if the caller just read it."""
        if self.express:
            self._settle_express()  # left with its request outstanding: drain as usual
        self.client = None
        replies = self.replies
        if replies is not None:
            self.replies = None
            replies.reset()
            replies.on_statements_dropped = None  # holds the client
        self.last_used = now or time.monotonic()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def send(self, data: bytes | memoryview) -> None:
        assert self.transport is not None
        # The sender read .tracker first, which settled any express request.
        assert not self.express
        self.transport.write(data)

    def _relay_express(self, data: bytes) -> bool:
        """Relay a reply to an express request (frontend/express.py) when ``data`` is
        whole messages of plain types ending with the ReadyForQuery; True if done.

        Anything else (a reply in several chunks, an error, a ParameterStatus,
        COPY) returns False before changing anything, for the general relay.
        """
        client = self.client
        if client is None or self._internal is not None or not self._framer.at_boundary \
                or not is_whole_reply(data, _EXPRESS_TYPES):
            return False
        # What the tracker and reply queue would do with the request and this
        # ReadyForQuery, had they been told: nothing outstanding, this status.
        self.express = None
        self._tracker.status = data[-1]
        self.stats.query_count += 1
        client.write_from_server(data)
        client.on_express_ready(self, self._tracker)
        return True

    def _relay(self, pieces, whole: bytes | None = None) -> None:
        """Forward server pieces to the client, tracking its requests.

        ``whole`` is the chunk the pieces exactly cover, when they do: written
        as is when every piece goes to the client at once, which saves a copy.
        """
        if self.replies is not None:
            self._relay_rewritten(pieces, whole)
            return
        client = self.client
        assert client is not None
        tracker = self.tracker
        out: list[memoryview] = []
        last = len(pieces) - 1
        for i, (msg_type, raw, start, _end) in enumerate(pieces):
            out.append(raw)
            if not start or msg_type == _D:
                continue
            if msg_type == _Z:
                self.stats.query_count += 1
                tracker.on_server_message(_Z, raw[5])
                if tracker.is_done():
                    if whole is not None and i == last and len(out) == len(pieces):
                        client.write_from_server(whole)
                    else:
                        client.write_from_server(b"".join(out) if len(out) > 1 else out[0])
                    out = []
                    client.on_server_ready(self)
                    if self.client is not client:
                        return
            elif msg_type in _TRACKED_REPLIES:
                tracker.on_server_message(msg_type)
            elif msg_type == _E:
                tracker.on_server_message(_E)  # ends a COPY IN (tracker rule 4)
                self.stats.add_error("server", error_sqlstate(raw))
            elif msg_type == _S:
                ps = decode_parameter_status(raw[5:])
                self.params[ps.name] = ps.value
                client.on_server_params(ps.name, ps.value)
        if out:
            if whole is not None and len(out) == len(pieces):
                client.write_from_server(whole)
            else:
                client.write_from_server(b"".join(out) if len(out) > 1 else out[0])

    def _relay_rewritten(self, pieces, whole: bytes | None = None) -> None:
        """Relay with a ReplyQueue: swallow replies to injected requests and add
        the fake replies ecluse owes the client, in wire order."""
        client = self.client
        replies = self.replies
        assert client is not None and replies is not None
        tracker = self.tracker
        out: list = []
        # Still true while ``out`` holds every piece so far, unchanged and in order.
        intact = whole is not None
        last = len(pieces) - 1
        for i, (msg_type, raw, start, _end) in enumerate(pieces):
            if not start or msg_type not in _REPLY_TYPES:
                out.append(raw)
                if not start or msg_type == _D:
                    continue
                if msg_type == _S:
                    ps = decode_parameter_status(raw[5:])
                    self.params[ps.name] = ps.value
                    client.on_server_params(ps.name, ps.value)
                elif msg_type in _TRACKED_REPLIES:
                    tracker.on_server_message(msg_type)
                continue
            if replies.on_reply(msg_type, raw):
                out.append(raw)
            else:
                intact = False
            if msg_type == _Z:
                self.stats.query_count += 1
                tracker.on_server_message(_Z, raw[5])
            elif msg_type in _TRACKED_REPLIES or msg_type == _E:
                tracker.on_server_message(msg_type)
                if msg_type == _E:
                    self.stats.add_error("server", error_sqlstate(raw))
            # After the tracker: a fake ReadyForQuery reports the status this one set.
            fakes = replies.take_fakes()
            if fakes:
                out.append(fakes)
                intact = False
            if msg_type == _Z and tracker.is_done():
                if out:
                    client.write_from_server(whole if intact and i == last else b"".join(out))
                    out = []
                intact = False
                client.on_server_ready(self)
                if self.client is not client:
                    return
        if out:
            if intact:
                client.write_from_server(whole)
            else:
                client.write_from_server(b"".join(out) if len(out) > 1 else out[0])

    @property
    def relay_at_boundary(self) -> bool:
        """True when no server message is partly relayed to the client."""
        return self._framer.at_boundary

    # --- ecluse's own queries ----------------------------------------------
    def run_internal(self, sql: str, done: InternalDone, rows: list[Row] | None = None,
                     args: Sequence[str] | None = None) -> None:
        """Send a query whose replies are consumed here, not relayed.

        ``done`` gets the first ErrorResponse, or None, after ReadyForQuery.
        With ``rows``, the DataRows of the result are appended to it. With
        ``args`` the query goes through the extended protocol (unnamed
        statement, text parameters $1, $2...), so values are never parsed
        as SQL; ParseComplete and BindComplete are consumed like the rest.
        """
        assert self._internal is None and self.transport is not None
        self._internal = done
        self._internal_error = None
        self._internal_rows = rows
        if rows is not None:
            self._framer.set_inspect(_ROWS_INSPECT)
        if args is None:
            self.transport.write(encode_query(sql))
            return
        self.transport.write(b"".join((
            encode_parse("", sql),
            encode_bind("", "", [arg.encode("utf-8") for arg in args]),
            encode_execute(), encode_sync())))

    def in_internal(self) -> bool:
        """True while one of ecluse's own queries is running."""
        return self._internal is not None

    def _on_internal_pieces(self, pieces) -> None:
        for i, (msg_type, raw, start, _end) in enumerate(pieces):
            if not start:
                continue
            if msg_type == codes.BE_DATA_ROW:
                if self._internal_rows is not None:
                    self._internal_rows.append(decode_data_row(bytes(raw[5:])))
            elif msg_type == _E and self._internal_error is None:
                self._internal_error = decode_error_fields(bytes(raw[5:]))
            elif msg_type == codes.BE_NOTIFICATION_RESPONSE:
                if self.on_notification is not None:
                    self.on_notification(bytes(raw))
                elif self.client is not None:
                    # Its client LISTENs here (session mode, or pinned): keep it.
                    self.client.on_server_notification(bytes(raw))
            elif msg_type == _S:
                ps = decode_parameter_status(raw[5:])
                self.params[ps.name] = ps.value
                if self.client is not None:
                    self.client.on_server_params(ps.name, ps.value)
            elif msg_type == _Z:
                self.tracker.status = raw[5]
                if self._internal_rows is not None:
                    self._internal_rows = None
                    self._framer.set_inspect(_RELAY_INSPECT)
                done, self._internal = self._internal, None
                assert done is not None
                done(self._internal_error)
                # What followed in the same read (a notification, a notice) belongs
                # to whoever has the server now.
                rest = pieces[i + 1:]
                if rest and self.state is not ServerState.CLOSED:
                    self._dispatch(rest)
                return

    # --- abandoned requests ------------------------------------------------
    def drain(self, finished: Callable[[], None]) -> None:
        """Finish and discard the requests a departed client left outstanding.

        The client's messages must have reached the server whole: a server left
        in the middle of one cannot be drained and must be closed instead. What
        the server still needs to finish (a CopyFail for a COPY IN nobody will
        end; a failing Parse and a Sync for an open batch, so that nothing half
        done commits) is sent now. ``finished`` runs once every request was
        answered; the transaction may still be open.
        """
        self._draining = finished
        tracker = self.tracker
        if not tracker.is_done():
            finish = tracker.finish_abandoned()
            if finish:
                self.send(finish)
        if tracker.is_done():
            self._finish_drain()

    def _on_drain_pieces(self, pieces) -> None:
        tracker = self.tracker
        for msg_type, raw, start, _end in pieces:
            if not start:
                continue
            if msg_type == _Z:
                tracker.on_server_message(_Z, raw[5])
                if tracker.is_done():
                    self._finish_drain()
                    return
            elif msg_type in _TRACKED_REPLIES or msg_type == _E:
                tracker.on_server_message(msg_type)
                if tracker.awaits_copy_end():
                    # A COPY IN that drain() could not foresee: end it too.
                    self.send(tracker.finish_abandoned())
            elif msg_type == _S:
                # Keep params true for the next client's parameter sync.
                ps = decode_parameter_status(raw[5:])
                self.params[ps.name] = ps.value

    def _finish_drain(self) -> None:
        finished, self._draining = self._draining, None
        if finished is not None:
            finished()

    def _on_idle_pieces(self, pieces) -> None:
        for msg_type, raw, start, _end in pieces:
            if not start:
                continue
            if msg_type == _E:
                err = decode_error_fields(bytes(raw[5:]))
                log.info("idle server %s sent error: %s", self, err.message)
                self.close()
                return
            if msg_type == _S:
                ps = decode_parameter_status(raw[5:])
                self.params[ps.name] = ps.value
            elif msg_type == codes.BE_NOTIFICATION_RESPONSE:
                if self.on_notification is not None:
                    self.on_notification(bytes(raw))
            elif msg_type != codes.BE_NOTICE_RESPONSE:
                self.close(RemoteProtocolError("unexpected message from idle server"))
                return

    # --- closing -----------------------------------------------------------
    def close(self, error: Exception | None = None) -> None:
        """Close the connection (Terminate first when it is healthy)."""
        if error is not None and self._closing_error is None:
            self._closing_error = error
        t = self.transport
        if t is None:
            self._fail_login(error or ServerGone("server connection closed"))
            return
        if not t.is_closing():
            if self.state is not ServerState.LOGIN and error is None:
                t.write(encode_terminate())
            t.close()

    def is_closed(self) -> bool:
        return self.state is ServerState.CLOSED or self.transport is None or \
            self.transport.is_closing()

    def age(self) -> float:
        return time.monotonic() - self.created_at

    def idle_for(self) -> float:
        return time.monotonic() - self.last_used

    def startup_params(self) -> Mapping[str, str]:
        return self.params
