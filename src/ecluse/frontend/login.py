"""The login phase of a client session: startup packets, TLS negotiation,
authentication and the welcome.

A mixin of FrontendSession (frontend/session.py), which owns the states and
the transitions; this part takes a client from LOGIN through AUTH and WELCOME
to IDLE, and holds what only that phase needs in one _Login object dropped
with the welcome.

Rules:
1. Nothing the client sends before the startup packet is whole is acted on;
   data pipelined behind an SSLRequest or GSSENCRequest is refused, and from
   'S' until the handshake is over no byte is read as protocol data
   (CVE-2021-23214 and CVE-2021-3935 classes).
2. The welcome (AuthenticationOk, ParameterStatus, BackendKeyData,
   ReadyForQuery) goes out in one write, with a new cancel key.
3. Authentication exchanges run as generators (auth/methods.py): this mixin
   only feeds them the client's password messages.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from ecluse.admin.console import is_admin_database
from ecluse.auth.auth_query import AuthQueryTarget
from ecluse.auth.methods import (
    AuthGen,
    AuthOutcome,
    authenticate_client,
    passwordless_outcome,
)
from ecluse.config.model import SslMode
from ecluse.errors import AuthFailed, AuthLookupFailed, ClientRefused, RemoteProtocolError
from ecluse.frontend import authn
from ecluse.frontend.prepared import StatementRewriter
from ecluse.frontend.startup import resolve_startup
from ecluse.frontend.states import ClientState
from ecluse.frontend.tls import accept_tls, is_postgresql_alpn
from ecluse.protocol import backend as be
from ecluse.protocol import codes
from ecluse.protocol.messages import CancelRequest, GSSENCRequest, SSLRequest, StartupMessage
from ecluse.protocol.startup import (
    decode_startup_packet,
    startup_packet_length,
    validate_startup_params,
)
from ecluse.routing.readwrite import ReadRouter
from ecluse.routing.shards import ShardRouter
from ecluse.server.params import tracked_parameters

log = logging.getLogger("ecluse.client")

# States as module constants: an Enum member lookup costs ten times a global.
_LOGIN = ClientState.LOGIN
_AUTH = ClientState.AUTH
_WELCOME = ClientState.WELCOME
_IDLE = ClientState.IDLE
_CLOSED = ClientState.CLOSED

_X = codes.FE_TERMINATE
_RELAY_INSPECT = frozenset({_X})
# With statement names rewritten: the messages that name statements, and Query.
_REWRITE_INSPECT = frozenset({_X, codes.FE_PARSE, codes.FE_BIND, codes.FE_DESCRIBE,
                              codes.FE_CLOSE, codes.FE_QUERY})
_READY_IDLE = be.encode_ready_for_query(b"I")
_AUTH_OK = be.encode_authentication_ok()
_TLS_REQUIRED = frozenset({SslMode.REQUIRE, SslMode.VERIFY_CA, SslMode.VERIFY_FULL})


class _Login:
    """What a session needs only until its welcome, dropped with it (an idle client
    keeps one slot for all of it)."""

    __slots__ = ("auth", "inbuf", "looked_up", "secret", "tls_early")

    def __init__(self) -> None:
        self.inbuf: bytearray | None = bytearray()  # the startup packets' bytes, LOGIN only
        self.auth: AuthGen | None = None  # the authentication exchange, AUTH only
        self.secret: str | None = None  # the client's stored secret, during AUTH only
        self.looked_up = False  # that secret came from auth_query
        self.tls_early: bytearray | None = None  # decrypted before start_tls returned


class LoginPhase:
    """FrontendSession's login: startup, TLS, authentication, welcome."""

    __slots__ = ()

    # --- startup -------------------------------------------------------------
    def _on_startup_data(self, data: bytes) -> None:
        login = self._login
        assert login is not None and login.inbuf is not None
        buf = login.inbuf
        buf += data
        limit = self.ctx.config.settings.max_startup_packet_size
        while self.state is _LOGIN:
            length = startup_packet_length(buf, limit)
            if length is None or len(buf) < length:
                return
            packet = bytes(buf[:length])
            del buf[:length]
            msg = decode_startup_packet(packet)
            if isinstance(msg, (SSLRequest, GSSENCRequest)):
                if buf:
                    # Data pipelined behind an encryption request is refused
                    # (CVE-2021-3935 class), whatever we answer.
                    raise RemoteProtocolError("received unencrypted data after SSL request")
                if isinstance(msg, SSLRequest) and self.tls:
                    raise RemoteProtocolError("SSLRequest on an encrypted connection")
                if isinstance(msg, SSLRequest) and self._tls_context is not None:
                    self.transport.write(b"S")
                    self._start_tls_task(self._accept_tls())
                    return
                self.transport.write(b"N")
            elif isinstance(msg, CancelRequest):
                self._on_cancel_request(msg)
                return
            else:
                self._on_startup_message(msg)
        login.inbuf = None  # the startup phase is over
        if buf:  # bytes after StartupMessage: the client's first password reply
            rest = bytes(buf)
            self._on_auth_pieces(self._framer.feed(rest))

    def _on_startup_message(self, msg: StartupMessage) -> None:
        settings = self.ctx.config.settings
        self._refuse_cleartext()
        validate_startup_params(msg.params)
        startup = resolve_startup(msg.params, settings.ignore_startup_parameters,
                                  tracked_parameters(settings.track_extra_parameters))
        # Interned: thousands of clients of one pool then share two strings.
        self.user, self.database = sys.intern(startup.user), sys.intern(startup.database)
        self.params = startup.params
        if settings.log_connections and not self.control_link:
            log.info("%s login attempt", self._describe())
        if self.ctx.shutting_down:
            raise ClientRefused("pooler is shutting down", sqlstate="57P01")
        if self.database in self.ctx.registry.disabled_dbs:
            # DISABLE (admin/commands.py); PgBouncer's wording and SQLSTATE.
            raise ClientRefused(f"database does not allow connections: {self.database}",
                                sqlstate="08P01")
        if len(self.ctx.clients) > settings.max_client_conn:
            raise ClientRefused("no more connections allowed (max_client_conn)",
                                sqlstate="53300")
        if is_admin_database(self.database):
            self._start_console_login(msg)
            return
        db = self.ctx.config.database(self.database)
        if db is None:
            raise ClientRefused(f'database "{self.database}" does not exist', sqlstate="3D000")
        config = self.ctx.config
        limit = self.ctx.admit(self.database, self.user, config.max_db_client_connections_for(db),
                               config.max_user_client_connections_for(self.user))
        if limit is not None:
            raise ClientRefused(f"no more connections allowed ({limit})", sqlstate="53300")
        self._admitted = True
        if "application_name" in self.params and settings.application_name_add_host:
            self.params["application_name"] += f" - {self.peer}"
        self._set_state(_AUTH)
        if msg.minor > 0 or startup.protocol_options:
            self.transport.write(be.encode_negotiate_protocol_version(
                codes.LATEST_MINOR, startup.protocol_options))
        if db.shards:
            # A sharded database's clients log in through its default shard
            # (routing/shards.py), and are routed from there.
            db = self.ctx.config.databases[db.shards[db.default_shard]]
        self.pool = self.ctx.registry.get_pool(db, self.user)
        method = self._method_unless_identity()
        if method is None:
            return
        cfg = self.ctx.config
        secret = cfg.auth.get(self.user)
        target = None
        if secret is None and method in authn.NEEDS_SECRET:
            target = authn.auth_query_target(cfg, db)
        if target is None:
            self._begin_auth(method, secret)
            return
        # The secret comes from the server: wait for it with the client's reading
        # paused; nothing it sends is looked at until the exchange has begun.
        self.pause_client_reading()
        self.ctx.spawn(self._look_up_secret(method, target))

    def _method_unless_identity(self) -> str | None:
        """The client's authentication method (auth_type, or its HBA line); None
        when it is an identity method (cert, peer), already decided here."""
        cfg = self.ctx.config
        method = authn.choose_method(cfg, cfg.hba, self.transport, self.database, self.user)
        if method in authn.IDENTITY_METHODS:
            self._auth_done(authn.check_identity(cfg, method, self.transport,
                                                 self.database, self.user))
            return None
        return method

    async def _look_up_secret(self, method: str, target: AuthQueryTarget) -> None:
        """Run auth_query for this client's user, then start the exchange with its answer."""
        try:
            secret = await self.ctx.auth_cache.lookup(target, self.user, authn.run_auth_query)
        except AuthLookupFailed as exc:
            if self.state is _AUTH:
                log.warning("%s auth_query as %s in %s failed: %s", self._describe(),
                            target.auth_user, target.dbname, exc.message)
                self.fatal(ClientRefused(
                    f'authentication lookup failed for user "{self.user}": {exc.message}',
                    sqlstate=exc.sqlstate))
            return
        if self.state is not _AUTH:
            return  # the client left (or timed out) meanwhile
        self.resume_client_reading()
        try:
            self._login.looked_up = True
            self._begin_auth(method, secret)
        except (AuthFailed, ClientRefused) as exc:
            self.ctx.login_failures += isinstance(exc, AuthFailed)
            log.warning("%s login failed: %s", self._describe(), exc.message)
            self.fatal(exc)

    def _begin_auth(self, method: str, secret: str | None) -> None:
        trusted = passwordless_outcome(method)
        if trusted is not None:
            self._auth_done(trusted)  # no exchange to drive: every trust login
            return
        login = self._login
        login.secret = secret
        login.auth = authenticate_client(method, self.user, secret,
                                         self.ctx.config.settings.scram_iterations)
        self._step_auth(None)

    def _step_auth(self, body: bytes | None) -> None:
        login = self._login
        try:
            out = next(login.auth) if body is None else login.auth.send(body)
        except StopIteration as stop:
            login.auth = None
            self._auth_done(stop.value)
            return
        self.transport.write(out)

    def _auth_done(self, outcome: AuthOutcome) -> None:
        if self.console is not None:
            self._console_welcome(outcome)
            return
        assert self.pool is not None
        login = self._login
        authn.share_login_secret(self.pool, self.user, outcome, login.secret, login.looked_up)
        login.secret = None
        self._set_state(_WELCOME)
        # SASLFinal, when SCRAM ran, precedes AuthenticationOk with no reply between;
        # the welcome follows in the same write when nothing has to be fetched first.
        self._start_welcome(outcome.final_message + _AUTH_OK)

    def _on_auth_pieces(self, pieces) -> None:
        for i, (msg_type, raw, _start, _end) in enumerate(pieces):
            if self.state is not _AUTH:
                rest = pieces[i:]
                if any(start and t == codes.FE_PASSWORD for t, _r, start, _e in rest):
                    raise RemoteProtocolError("invalid frontend message type 'p' after login")
                self._queue_pieces(rest)
                return
            if self._login.auth is None:
                # auth_query is still running: no authentication request was sent yet.
                raise RemoteProtocolError("unexpected message before the authentication request")
            if msg_type != codes.FE_PASSWORD:
                raise RemoteProtocolError(
                    f"expected password response, got message type {chr(msg_type)!r}")
            self._step_auth(bytes(raw[5:]))

    def _start_welcome(self, auth_ok: bytes) -> None:
        """Send ``auth_ok`` and the server's parameters; fetch them with one server
        first if needed."""
        assert self.pool is not None
        self._set_up_session()
        if self.pool.default_params is not None:
            self._finish_welcome(auth_ok)
            return
        self.transport.write(auth_ok)
        server = self.pool.acquire(self)
        if server is not None:
            self.on_server_assigned(server)

    def _set_up_session(self) -> None:
        """What a logged-in client of its pool's mode reads with: the framer's rules,
        and in transaction and statement mode the statement rewriter and the router."""
        assert self.pool is not None
        if self.pool.settings.mode != "session":
            enabled = self.ctx.config.settings.max_prepared_statements > 0
            self._rewriter = StatementRewriter(self.pool.known_statements, enabled)
            self._rewriter.sql_watcher = self
            db = self.ctx.config.database(self.database)
            if db is not None and db.read_db is not None:
                self._router = ReadRouter(self.pool, self.ctx.registry)
            elif db is not None and db.shards:
                self._router = ShardRouter(self.pool, self.ctx.registry, self.database,
                                           db.default_shard)
            self._framer.switch(valid=codes.FRONTEND_SESSION_TYPES, inspect=_REWRITE_INSPECT,
                                inspect_max=1 << 20, stream_oversize=True)
        else:
            self._framer.switch(valid=codes.FRONTEND_SESSION_TYPES, inspect=_RELAY_INSPECT,
                                inspect_max=1 << 20)

    def _finish_welcome(self, auth_ok: bytes = b"") -> None:
        assert self.pool is not None and self.pool.default_params is not None
        defaults = self.pool.default_params
        params = self.params
        for name in tracked_parameters(self.ctx.config.settings.track_extra_parameters).names:
            if name not in params:
                if name in defaults:
                    params[name] = defaults[name]
            elif name not in defaults and name != "search_path":
                # Not reported by the server (track_extra_parameters): it could not be
                # kept in step, and PgBouncer never applies such a value either.
                log.debug("%s: %s=%r not applied: the server does not report %s",
                          self._describe(), name, params.pop(name), name)
        block, self.params = self.pool.welcome(self.params)  # shared: copy to change
        self._send_welcome(auth_ok + block)
        self._set_state(_IDLE)
        self.pool.stats.client_connect_count += 1
        if self.ctx.config.settings.log_connections:
            log.info("%s login ok (pool_mode=%s)", self._describe(), self.pool.settings.mode)
        if self._pending:
            self._queue_pieces(self._take_pending())

    def _send_welcome(self, head: bytes) -> None:
        """Write ``head`` (AuthenticationOk and the ParameterStatus messages) with a
        new cancel key and ReadyForQuery, in one write: the login is over."""
        pid, secret = self.ctx.new_cancel_key(self)
        self.cancel_key = pid << 32 | int.from_bytes(secret)
        self.transport.write(head + be.encode_backend_key_data(pid, secret) + _READY_IDLE)
        self.ctx.logging_in.pop(self, None)
        self._login = None

    def on_login_timeout(self) -> None:
        """client_login_timeout passed (the janitor's check) before the welcome."""
        if self.state in (_LOGIN, _AUTH, _WELCOME):
            self.fatal(ClientRefused("client_login_timeout (server down or wrong password?)",
                                     sqlstate="08P01"))

    # --- TLS -----------------------------------------------------------------------
    def _start_tls_task(self, coro) -> None:
        """Stop reading and run ``coro``; data_received refuses bytes until it ends."""
        assert self.transport is not None
        self.transport.pause_reading()
        self._tls_task = asyncio.get_running_loop().create_task(coro)

    def _on_direct_tls(self, transport: asyncio.BaseTransport) -> None:
        """The listener did a direct TLS handshake (frontend/tls.py) before handing over."""
        if not is_postgresql_alpn(transport):
            # PostgreSQL refuses these too: such a client may not know what it reached.
            log.warning("client %s: direct TLS connection without ALPN \"postgresql\"",
                        self.peer)
            self._cleanup()
            transport.abort()
            return
        self.tls = True

    def _on_tls_setup_data(self, data: bytes) -> None:
        """Data while TLS is being set up: decrypted early data, or an attack."""
        early = self._login.tls_early
        if early is None:
            # Reading is paused until start_tls runs: bytes now would be cleartext
            # injected before the handshake (CVE-2021-23214 class).
            raise RemoteProtocolError("received unencrypted data during the TLS setup")
        # The TLS layer can deliver the client's first message just before
        # start_tls returns the transport to answer on: keep it until then.
        early += data
        if len(early) > self.ctx.config.settings.max_startup_packet_size:
            raise RemoteProtocolError("too much data during the TLS handshake")

    async def _accept_tls(self) -> None:
        raw = self.transport
        context = self._tls_context
        assert raw is not None and context is not None
        login = self._login
        login.tls_early = bytearray()
        try:
            tls = await accept_tls(raw, self, context)
        except (OSError, EOFError, TimeoutError) as exc:
            # ssl.SSLError is an OSError. Nothing can be said in clear text now.
            reason = str(exc) or repr(exc)
            log.warning("%s TLS handshake failed: %s", self._describe(), reason)
            self._tls_task = None
            self._cleanup()
            raw.abort()
            return
        self._tls_task = None
        early, login.tls_early = login.tls_early, None
        if self.state is _CLOSED:
            tls.abort()
            return
        self.transport = tls
        self.tls = True
        if early:
            self.data_received(bytes(early))

    def _refuse_cleartext(self) -> None:
        """Refuse a TCP client that did not ask for TLS when client_tls_sslmode requires it."""
        mode = self.ctx.config.settings.client_tls_sslmode
        if mode in _TLS_REQUIRED and not self.tls and self._tls_context is not None:
            host = self.peer.rsplit(":", 1)[0]
            raise ClientRefused(f'SSL required: no encryption for host "{host}" '
                                f"(client_tls_sslmode is {mode.value})", sqlstate="28000")
