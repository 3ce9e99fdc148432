"""The express path: a request from an idle client straight to an idle server.

Most transactions a transaction pooler sees are a single Query, or a single
extended-protocol batch of the unnamed statement (Parse, Bind, Describe,
Execute, Sync: what drivers send for a query with parameters) or of a named
statement the client prepared earlier (Bind, Describe, Execute, Sync), sent by
a client that holds no server, answered by one chunk ending with ReadyForQuery.
The general path (framer pieces, the rewriter, the pool's queue, the link,
the tracker, the reply queue) spends most of ecluse's CPU per transaction on
steps that have nothing to do in that case. This mixin of FrontendSession
fuses them for the client -> server direction; ServerConnection's
``_relay_express`` does the same for the reply.

Rules:
1. A request goes the express way only when the general path would, step for
   step, do exactly what this does: the client IDLE with nothing buffered, no
   probe or LISTEN pending, framer and rewriter at a message boundary, whole
   messages no longer than the framer would accept (a Query, or a batch of
   the unnamed statement and portal ending with its only Sync: the rewriter
   passes those through untouched; or such a batch whose Bind names a
   statement of the client that the server already holds: the rewriter would
   only put the server's name in, StatementRewriter.express_bind), SQL that
   cannot leave session state (frontend/sqlscan.py). A routed client
   (routing/) goes to the pool its router chooses, unless the router would
   answer the request itself or refuse it. Any other case goes the
   general way before anything has changed. With no idle server the client queues as the
   general path would queue it, and when a server frees up its request goes
   on the express way (_express_pending).
2. It leaves every object (session, server, pool, counters) in the state the
   general path leaves it in, except the server's tracker and reply queue:
   they are told of the request only when something other than the express
   reply needs them (ServerConnection._settle_express: more requests in the
   transaction, a reply in pieces or with an error, a cancel, the client
   leaving), and then exactly as the general path would have told them, so
   that whatever comes next goes the general way without knowing.
3. Parameters not in step with the server are synced the general way, with
   the request buffered behind the SETs.
4. When the express reply ends the transaction, the server goes back the way
   on_server_ready would send it (counted, unlinked, released), and the pool
   takes it back in one step when that is the usual case (on_express_ready,
   Pool.take_back): session mode, a probe or notifications held back go
   through on_server_ready itself; a reset, a waiting client, a lend or a
   close through Pool.release.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ecluse import accel
from ecluse.frontend import expressplan
from ecluse.frontend.expressplan import SENT_QUERY, Plan
from ecluse.frontend.statekeeping import HARMLESS_CACHE_MAX
from ecluse.frontend.states import ClientState
from ecluse.protocol import codes
from ecluse.server.params import build_sync_query

if TYPE_CHECKING:
    from ecluse.protocol.tracker import RequestTracker
    from ecluse.server.connection import ServerConnection

_WAITING = ClientState.WAITING
_LINKED = ClientState.LINKED
_STATUS_IDLE = codes.STATUS_IDLE

plan_request = accel.pick(expressplan.plan_request, "ecluse.frontend._expressplan")
plan_named_bind = expressplan.plan_named_bind


class ExpressPath:
    """FrontendSession's fused path for a lone Query or unnamed extended batch."""

    __slots__ = ()

    def _express_request(self, data: bytes) -> bool:
        """Send ``data`` (all the client sent) to an idle server if rule 1 allows, or
        queue for one; True when it did."""
        n = len(data)
        framer = self._framer
        # No message longer than the framer delivers whole (max_packet_size may be
        # lower than the usual 1 MB): those it streams or refuses, the general way.
        if n < 6 or n > framer.inspect_max or self._pending or self._probing \
                or self._hub_waits or self._tls_task is not None or not framer.at_boundary:
            return False
        rewriter = self._rewriter
        if rewriter._skip_to_sync or rewriter._drop_rest or self.ctx.shutting_down:
            return False
        plan = plan_request(data)
        named = None
        if plan is None:
            # A prepared statement run by name (PQexecPrepared, pgbench -M prepared);
            # an unknown name is refused the general way, with no server taken.
            named = self._named_request(data)
            if named is None or named[0] not in rewriter.statements:
                return False
            plan = named[2]
        if self._router is None:
            pool = self.pool
        else:
            pool = self._express_pool(data)  # the read/write split or the shard
            if pool is None:
                return False
            self.pool = pool
        pool.stats.received += n
        server = pool.take_now(self.last_activity)
        if server is None:
            # No idle server, or others queue first: wait in line as _queue_pieces and
            # _acquire would have it, the SQL known harmless for _express_pending.
            if plan[0] is SENT_QUERY and n - 6 <= HARMLESS_CACHE_MAX:
                self._harmless_sql = data[5:-1]
            self._pending = framer.feed(data)
            self._pending_bytes = n
            self.state = _WAITING  # _set_state's check: IDLE -> WAITING is allowed
            pool.wait(self)
            return True
        if self.session_settings or server.session_settings or \
                build_sync_query(self.params, server.params) is not None or (
                    named is not None and (bound := self._bind_named(data, named, server))
                    is None):
            # Rule 3: as _acquire would, with the pool's answer already in hand; so
            # too for a statement this server must be given first.
            self._set_state(_WAITING)
            self._buffer(framer.feed(data))
            self.on_server_assigned(server)
            return True
        if named is not None:
            data, plan = bound
        self._express_send(server, data, plan, self.last_activity)
        return True

    def _express_pending(self, server: ServerConnection) -> bool:
        """The pool just gave ``server`` (parameters in step) to this client, which
        waited with one whole Query or unnamed batch buffered: link it and send the
        request the express way if rule 1 allows; True when it did, False (nothing
        done) for on_server_assigned's general link."""
        pending = self._pending
        rewriter = self._rewriter
        if not pending or rewriter is None or self._probing or self._hub_waits \
                or rewriter._skip_to_sync or rewriter._drop_rest \
                or not self._framer.at_boundary:
            return False
        if len(pending) == 1:  # a Query: the framer kept the chunk itself
            _t, data, start, end = pending[0]
            if not (start and end):
                return False
            if type(data) is not bytes:
                data = bytes(data)
        elif all(start and end for _t, _r, start, end in pending):
            data = b"".join([piece[1] for piece in pending])
        else:
            return False
        plan = plan_request(data, self._harmless_sql)
        if plan is None:
            named = self._named_request(data)
            bound = None if named is None else self._bind_named(data, named, server)
            if bound is None:
                return False
            data, plan = bound
        self._pending = ()
        self._pending_bytes = 0
        if self._reading_paused:
            self.resume_client_reading()
        self._express_send(server, data, plan, time.monotonic())
        return True

    def _named_request(self, data: bytes) -> tuple[bytes, int, Plan] | None:
        """plan_named_bind(data), when the rewriter renames statements at all."""
        return plan_named_bind(data) if self._rewriter.enabled else None

    def _bind_named(self, data: bytes, named: tuple[bytes, int, Plan],
                    server: ServerConnection) -> tuple[bytes, Plan] | None:
        """The bytes and plan to send ``server`` for ``data``, a run of a named
        statement (``named``: _named_request's answer), or None when the rewriter
        would do more than rename it there (StatementRewriter.express_bind). The
        Bind's entry (first) carries the undo rewrite() would have given its reply
        entry; ServerConnection._settle_express adds it."""
        name, name_end, (sent, parses, binds) = named
        bound = self._rewriter.express_bind(data, name, name_end, server.prepared)
        if bound is None:
            return None
        renamed, undo = bound
        return renamed, (((*sent[0], undo), *sent[1:]), parses, binds)

    def _express_send(self, server: ServerConnection, data: bytes, plan: tuple[tuple, int, int],
                      now: float) -> None:
        """Link ``server`` for the request ``data`` (checked: ``plan``) and send it; the
        server records the request itself when something needs it (_settle_express)."""
        # on_server_assigned's link, for a client whose parameters are in step.
        self.server = server
        self._rewriter.replies = server.track_replies(self._on_statements_dropped)
        if self._write_paused:
            server.transport.pause_reading()
        sent, parses, binds = plan
        server.link_express(self, sent, parses, binds)
        self.state = _LINKED
        self.request_started = now
        if not self.xact_started:
            self.xact_started = now
        # As the general path: client Parses counted when sent (the server's, and its
        # Binds, when it is ready), the harmless-text cache taken by the SQL watcher.
        self.pool.stats.client_parse_count += parses
        self._harmless_sql = None
        server.transport.write(data)

    def on_express_ready(self, server: ServerConnection, tracker: RequestTracker) -> None:
        """The whole reply to the express request was written (rule 4); ``tracker``
        is the server's, with nothing outstanding."""
        pool = self.pool
        if tracker.status != _STATUS_IDLE or pool.settings.mode == "session" \
                or self._notify_backlog or self._suspect or self._always_probe or self.pinned \
                or not self._framer.at_boundary:
            self.on_server_ready(server)
            return
        # on_server_ready's steps for an idle transaction-mode server, in line.
        self._release_server(server, True, self._count_request(pool.stats, tracker))
