"""The admin console side of a client session: login and message glue.

A client of the virtual database pgbouncer/ecluse is authenticated like any
other by frontend/session.py, then admitted here and fed to admin/console.py
one whole message at a time; it never gets a pool or a server. This mixin of
FrontendSession holds only that glue: what to answer is decided by
admin/console.py and admin/extended.py, which do no I/O.

Rules:
1. Replies are written in the order their messages arrived: while a command's
   reply is awaited (PAUSE), what the client sends meanwhile is held and
   read afterwards.
2. State changes go through the session's ``_set_state`` (session.py rule 1).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ecluse.admin.console import AdminConsole, may_log_in, welcome_parameters
from ecluse.admin.node import INTERNAL_USER
from ecluse.auth.methods import AuthOutcome
from ecluse.errors import ClientRefused, RemoteProtocolError
from ecluse.frontend.states import ClientState
from ecluse.protocol import backend as be
from ecluse.protocol import codes
from ecluse.protocol.startup import unsupported_protocol_options

if TYPE_CHECKING:
    from ecluse.protocol.messages import StartupMessage

log = logging.getLogger("ecluse.client")  # the session's logger: same lines as before
# Every message is delivered whole: the console reads each one it gets.
_CONSOLE_INSPECT = codes.FRONTEND_SESSION_TYPES
_CONSOLE_MESSAGE_MAX = 1 << 20


class ConsoleLink:
    """FrontendSession's admin console methods (mixin; needs the session's attributes)."""

    __slots__ = ()  # FrontendSession declares every attribute (its __slots__)

    # True for sessions accepted on the worker's control socket (worker.py), in
    # the node's private directory: another worker asking (admin/node.py).
    control_link: bool = False

    def _start_console_login(self, msg: StartupMessage) -> None:
        """Authenticate a client of the admin console as any client; no pool, no server."""
        self._set_state(ClientState.AUTH)
        if msg.minor > 0 or unsupported_protocol_options(msg.params):
            self.transport.write(be.encode_negotiate_protocol_version(
                codes.LATEST_MINOR, unsupported_protocol_options(msg.params)))
        if self.control_link and self.user == INTERNAL_USER and self.ctx.node is not None:
            # Only ecluse can reach the control socket: no password to ask.
            self.console = AdminConsole(self.ctx, self.user, local=True)
            self._auth_done(AuthOutcome("trust"))
            return
        self.console = AdminConsole(self.ctx, self.user)
        method = self._method_unless_identity()
        if method is not None:
            self._begin_auth(method, self.ctx.config.auth.get(self.user))

    def _console_welcome(self, outcome: AuthOutcome) -> None:
        """Admit an authenticated console client listed in admin_users or stats_users."""
        # Checked only after authentication, as PgBouncer: a wrong password must
        # not learn whether the user is listed.
        if not self.console.local and not may_log_in(self.ctx.config.settings, self.user):
            raise ClientRefused("not allowed", sqlstate="28000")
        self._send_welcome(b"".join([
            outcome.final_message, be.encode_authentication_ok(),
            *(be.encode_parameter_status(k, v)
              for k, v in welcome_parameters(self.params).items())]))
        self._framer.set_inspect(_CONSOLE_INSPECT, _CONSOLE_MESSAGE_MAX)
        self._framer.set_valid(codes.FRONTEND_SESSION_TYPES)
        self._set_state(ClientState.WELCOME)
        self._set_state(ClientState.IDLE)
        if self.ctx.config.settings.log_connections and not self.console.local:
            log.info("%s login ok (admin console)", self._describe())

    def _on_console_pieces(self, pieces) -> None:
        """Answer each message from the console; hold the rest while a reply is awaited."""
        assert self.console is not None
        for i, (msg_type, raw, start, _end) in enumerate(pieces):
            if self._console_backlog is not None:
                self._console_backlog.extend(pieces[i:])
                return
            if not start or self.state is ClientState.CLOSED:
                continue
            if msg_type == codes.FE_TERMINATE:
                self.client_close_request()
                return
            reply = self.console.on_message(msg_type, bytes(raw[5:]))
            if isinstance(reply, bytes):
                if reply:
                    self.transport.write(reply)
                continue
            self._console_backlog = []
            self.pause_client_reading()
            self.ctx.spawn(self._send_console_reply(reply))

    async def _send_console_reply(self, reply) -> None:
        data = await reply
        if self.state is ClientState.CLOSED or self.transport is None:
            return
        self.transport.write(data)
        backlog, self._console_backlog = self._console_backlog or [], None
        self.resume_client_reading()
        try:
            self._on_console_pieces(backlog)
        except RemoteProtocolError as exc:
            self.fatal(exc)
