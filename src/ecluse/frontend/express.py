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
   session state (frontend/sqlscan.py). Any other case goes the general way
   before anything has changed. With no idle server the client queues as
   the general path would queue it, and when a server frees up its Query
   goes on the express way (_express_pending).
2. It leaves every object (session, server, pool, counters) in the state the
   general path leaves it in, except the server's tracker and reply queue:
   they are told of the Query only when something other than the express
   reply needs them (ServerConnection._settle_express: more requests in the
   transaction, a reply in pieces or with an error, a cancel, the client
   leaving), and then exactly as the general path would have told them, so
   that whatever comes next goes the general way without knowing.
3. Parameters not in step with the server are synced the general way, with
   the request buffered behind the SETs.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ecluse.frontend.sqlscan import may_leave_session_state
from ecluse.frontend.statekeeping import HARMLESS_CACHE_MAX
from ecluse.frontend.states import ClientState
from ecluse.protocol import codes
from ecluse.server.params import build_sync_query

if TYPE_CHECKING:
    from ecluse.server.connection import ServerConnection

_Q = codes.FE_QUERY
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
        sql = data[5:-1]
        if may_leave_session_state(sql.decode("utf-8", "replace")):
            return False
        pool = self.pool
        pool.stats.received += n
        server = pool.take_now()
        if server is None:
            # No idle server, or others queue first: wait in line as _queue_pieces and
            # _acquire would have it, the SQL known harmless for _express_pending.
            if len(sql) <= HARMLESS_CACHE_MAX:
                self._harmless_sql = sql
            self._pending = [(_Q, data, True, True)]
            self._pending_bytes = n
            self._set_state(_WAITING)
            server = pool.acquire(self)
            if server is not None:
                self.on_server_assigned(server)
            return True
        if self.session_settings or server.session_settings or \
                not params_in_step(self.params, server.params):
            # Rule 3: as _acquire would, with the pool's answer already in hand.
            self._set_state(_WAITING)
            self._buffer(self._framer.feed(data))
            self.on_server_assigned(server)
            return True
        # on_server_assigned's link, for a client whose parameters are in step; the
        # server records the Query itself when something needs it (_settle_express).
        self.server = server
        replies = rewriter.replies
        server.link_express(self, replies)
        replies.on_statements_dropped = self._on_statements_dropped
        transport = server.transport
        if self._write_paused:
            transport.pause_reading()
        self.state = _LINKED
        now = self.last_activity
        self.request_started = now
        if not self.xact_started:
            self.xact_started = now
        transport.write(data)
        return True

    def _express_pending(self, server: ServerConnection) -> bool:
        """The pool just linked ``server`` (parameters in step) to this client, which
        waited with one whole Query buffered: send it the express way if rule 1
        allows; True when it did."""
        pending = self._pending
        rewriter = self._rewriter
        if len(pending) != 1 or rewriter is None or self._probing or self._hub_waits:
            return False
        msg_type, raw, start, end = pending[0]
        if msg_type != _Q or not (start and end) or rewriter._skip_to_sync \
                or rewriter._drop_rest or not self._framer.at_boundary:
            return False
        sql = bytes(raw[5:-1])
        if sql != self._harmless_sql and \
                may_leave_session_state(sql.decode("utf-8", "replace")):
            return False
        self._harmless_sql = None  # as the rewriter's hook would have consumed it
        self._pending = ()
        self._pending_bytes = 0
        if self._reading_paused:
            self.resume_client_reading()
        server.link_express(self, rewriter.replies)
        self.state = _LINKED
        self.request_started = now = time.monotonic()
        if not self.xact_started:
            self.xact_started = now
        server.transport.write(raw)
        return True
