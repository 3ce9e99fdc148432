"""The express path: one simple Query from an idle client straight to an idle server.

Most transactions a transaction pooler sees are a single Query sent by a client
that holds no server, answered by one chunk ending with ReadyForQuery. The
general path (framer pieces, the rewriter, the pool's queue, the link, the
tracker, the reply queue) spends most of ecluse's CPU per transaction on
steps that have nothing to do in that case. This mixin of FrontendSession
fuses them for the client -> server direction; ServerConnection's
``_relay_express`` does the same for the reply.

Rules:
1. A request goes the express way only when the general path would, step for
   step, do exactly what this does: the client IDLE with nothing buffered, no
   probe or LISTEN pending, framer and rewriter at a message boundary, a
   whole Query no longer than the framer would accept, SQL that cannot leave
   session state (frontend/sqlscan.py), an idle server available at once.
   Any other case goes the general way before anything has changed.
2. It leaves every object (session, server, tracker, reply queue, pool,
   counters) in the state the general path leaves it in, so that whatever
   comes next (more requests in the transaction, a reply in pieces, an error)
   goes the general way without knowing the request came by this one.
3. Parameters not in step with the server are synced the general way, with
   the request buffered behind the SETs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ecluse.frontend.sqlscan import may_leave_session_state
from ecluse.frontend.states import ClientState
from ecluse.protocol import codes
from ecluse.protocol import replies as rq
from ecluse.server.params import build_sync_query

if TYPE_CHECKING:
    from ecluse.server.connection import ServerConnection

_Q = codes.FE_QUERY
_IDLE = ClientState.IDLE
_WAITING = ClientState.WAITING
_LINKED = ClientState.LINKED
# Longest Query taken: the framer delivers longer ones in pieces (see session.py).
_EXPRESS_MAX = 1 << 20


def params_in_step(wanted: dict[str, str], current: dict[str, str]) -> bool:
    """True when build_sync_query(wanted, current) would be None, tested in C when
    every parameter the client has is the server's too (the usual case)."""
    if wanted.items() <= current.items() and \
            ("search_path" in wanted or "search_path" not in current):
        return True
    return build_sync_query(wanted, current) is None


class ExpressPath:
    """FrontendSession's fused path for a lone Query from an idle client."""

    __slots__ = ()

    def _express_query(self, data: bytes) -> bool:
        """Send ``data`` (all the client sent) to an idle server if rule 1 allows;
        True when it did."""
        n = len(data)
        if n < 6 or data[0] != _Q or n > _EXPRESS_MAX or self._pending or self._probing \
                or self._hub_waits or self._tls_task is not None \
                or int.from_bytes(data[1:5]) + 1 != n or not self._framer.at_boundary:
            return False
        rewriter = self._rewriter
        if rewriter._skip_to_sync or rewriter._drop_rest or self.ctx.shutting_down:
            return False
        if may_leave_session_state(data[5:-1].decode("utf-8", "replace")):
            return False
        pool = self.pool
        server = pool.take_now()
        if server is None:
            return False
        pool.stats.received += n
        if self.session_settings or server.session_settings or \
                not params_in_step(self.params, server.params):
            # Rule 3: as _acquire would, with the pool's answer already in hand.
            self._set_state(_WAITING)
            self._buffer(self._framer.feed(data))
            self.on_server_assigned(server)
            return True
        self._express_link(server, rewriter)
        now = self.last_activity
        self.request_started = now
        if not self.xact_started:
            self.xact_started = now
        tracker = server.tracker
        tracker.on_client_message(_Q)
        rewriter.replies.add(rq.QUERY, undo=tracker.query_skipped_undo)
        server.express = True
        server.transport.write(data)
        return True

    def _express_link(self, server: ServerConnection, rewriter) -> None:
        """on_server_assigned's link, for a client whose parameters are in step."""
        self.server = server
        server.client = self
        server.tracker.reset()
        replies = rewriter.replies
        replies.reset()
        replies.on_statements_dropped = self._on_statements_dropped
        server.replies = replies
        if self._write_paused and server.transport is not None:
            server.transport.pause_reading()
        self.state = _LINKED

