"""FrontendSession's cancels: a CancelRequest arriving on a new connection, and
cancelling this client's own request wherever it is.

A cancel for a linked server is forwarded to it, and the pool holds that
server back until the cancel is delivered or given up, so a late cancel never
lands on the next client's query (pgbouncer #717); one given up closes the
server once released. A client still queued leaves the queue with 57014, its
buffered requests answered one error per sync point, as a server would.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ecluse.frontend.states import ClientState
from ecluse.protocol import backend as be
from ecluse.protocol import codes
from ecluse.server.cancel import send_cancel

if TYPE_CHECKING:
    from ecluse.protocol.messages import CancelRequest
    from ecluse.server.connection import ServerConnection

_IDLE = ClientState.IDLE
_WAITING = ClientState.WAITING
_CLOSED = ClientState.CLOSED


class Cancelling:
    """The FrontendSession methods that send and answer cancels."""

    __slots__ = ()

    def _on_cancel_request(self, msg: CancelRequest) -> None:
        """A CancelRequest arrived on this new connection: route it, then close the
        connection once it has been delivered or given up (cancel_wait_timeout), as
        PostgreSQL closes it once it has acted: a client's PQcancel returns then."""
        self.state = _CLOSED
        self.ctx.clients.discard(self)
        self.ctx.logging_in.pop(self, None)
        transport = self.transport
        transport.pause_reading()  # nothing more is read, as PostgreSQL reads nothing
        # PostgreSQL answers a cancel with nothing, whether the key matched or not.
        self.ctx.deliver_cancel(msg.process_id, msg.secret, transport.close)

    def cancel(self, done: Callable[[], None] | None = None) -> None:
        """Cancel this session's current request, wherever it is; ``done`` runs once
        the cancel has been delivered, given up, or found nothing to cancel."""
        server = self.server
        if server is not None:
            if not server.tracker.is_done():
                self._cancel_on(server, done)
                return
        elif self.state is _WAITING and self.pool is not None \
                and self.pool.cancel_wait(self):
            self._fail_pending("canceling statement due to user request", "57014")
        if done is not None:
            done()

    def _cancel_on(self, server: ServerConnection,
                   done: Callable[[], None] | None = None) -> None:
        """Forward a cancel; the pool holds the server back until it has been delivered,
        so a late cancel can never hit the next client's query (pgbouncer #717)."""
        if server.key is None or server.cancel_in_flight:
            # One cancel per request is enough; PostgreSQL ignores the rest.
            if done is not None:
                done()
            return
        server.cancel_in_flight = True
        timeout = self.ctx.config.settings.cancel_wait_timeout

        async def deliver() -> None:
            delivered = False
            try:
                delivered = await send_cancel(server.host, server.port, server.key, timeout)
            finally:
                if not delivered:
                    # Given up, it may still land later, under whatever the server
                    # runs then (pgbouncer #717): this server serves no one else.
                    server.close_when_released = True
                server.cancel_in_flight = False
                resume, server.after_cancels = server.after_cancels, None
                if resume is not None:
                    resume()
                if done is not None:
                    done()

        self.ctx.spawn(deliver())

    def _fail_pending(self, message: str, sqlstate: str) -> None:
        """Answer the buffered requests with one error per sync point, as a server would."""
        pieces = self._take_pending()
        syncs = sum(1 for t, _r, start, _e in pieces
                    if start and t in (codes.FE_QUERY, codes.FE_SYNC, codes.FE_FUNCTION_CALL))
        err = be.encode_error_response(message, sqlstate)
        ready = be.encode_ready_for_query(b"I")
        if syncs and self.pool is not None:
            self.pool.stats.add_error("pooler", sqlstate)
        if syncs:
            self._log_pooler_error(message, sqlstate)
        self._set_state(_IDLE)
        if self._reading_paused:
            self.resume_client_reading()
        if syncs:
            self.transport.write((err + ready) * syncs)
