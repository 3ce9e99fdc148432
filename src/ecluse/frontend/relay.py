"""FrontendSession's relaying while a server is linked: the client's requests to
it, its replies and parameters back, and its release between transactions.

Requests go on whole or in pieces as the framer delivers them, through the
statement rewriter in transaction and statement mode. When the server has
answered everything (on_server_ready), transaction and statement mode give it
back, unless the client is mid-message (its rest must reach that server) or
session state needs a probe first; requests held back meanwhile are routed
afresh once it is released (_release_server).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from ecluse.errors import ClientRefused, EcluseError
from ecluse.frontend.states import ClientState
from ecluse.protocol import codes
from ecluse.routing.shards import ShardRouter
from ecluse.server.params import tracked_parameters

if TYPE_CHECKING:
    from ecluse.frontend.prepared import StatementRewriter
    from ecluse.protocol.tracker import RequestTracker
    from ecluse.server.connection import ServerConnection
    from ecluse.stats.counters import PoolStats

log = logging.getLogger("ecluse.client")

_IDLE = ClientState.IDLE
_LINKED = ClientState.LINKED
_X = codes.FE_TERMINATE
_P = codes.FE_PARSE


class Relaying:
    """The FrontendSession methods of a linked server: ServerLink's, and the
    forwarding of the client's requests."""

    __slots__ = ()

    # --- relaying ----------------------------------------------------------------
    def _forward(self, pieces) -> None:
        server = self.server
        assert server is not None
        tracker = server.tracker
        if tracker.is_done():
            self.request_started = time.monotonic()
            if not self.xact_started:
                self.xact_started = self.request_started
        if self._rewriter is not None:
            self._forward_rewritten(pieces, server, self._rewriter)
            return
        out = []
        for msg_type, raw, start, _end in pieces:
            if start:
                if msg_type == _X:
                    if out:
                        server.send(b"".join(out))
                    self.client_close_request()
                    return
                tracker.on_client_message(msg_type)
            out.append(raw)
        server.send(b"".join(out) if len(out) > 1 else out[0])

    def _forward_rewritten(self, pieces, server: ServerConnection,
                           rewriter: StatementRewriter) -> None:
        terminate = False
        parses = 0
        for i, (msg_type, _raw, start, _end) in enumerate(pieces):
            if start:
                if msg_type == _X:
                    pieces, terminate = pieces[:i], True
                    break
                if msg_type == _P:
                    parses += 1
        if parses:
            self.pool.stats.client_parse_count += parses
        out = rewriter.rewrite(pieces, server.prepared, server.tracker)
        fakes = rewriter.replies.take_fakes()
        if fakes:
            self.transport.write(fakes)
        if out:
            server.send(b"".join(out) if len(out) > 1 else out[0])
        if terminate:
            self.client_close_request()

    # --- ServerLink interface (called by the server) -------------------------
    def write_from_server(self, data) -> None:
        if self.transport is not None:
            self.pool.stats.sent += len(data)
            self.transport.write(data)

    def on_server_params(self, name: str, value: str) -> None:
        if self.params.get(name) != value and \
                name in tracked_parameters(self.ctx.config.settings.track_extra_parameters).names:
            params = dict(self.params)  # never in place: the dict may be shared (welcome)
            params[name] = value
            self.params = params

    def on_server_ready(self, server: ServerConnection) -> None:
        """The server answered every request; release it if the mode says so."""
        pool = self.pool
        assert pool is not None
        mode = pool.settings.mode
        tracker = server.tracker
        now = self._count_request(pool.stats, tracker)
        if self._notify_backlog:
            self._flush_notifications()
        if mode == "session":
            if self.ctx.shutting_down and tracker.can_release():
                self.close()
            return
        if tracker.status == codes.STATUS_IDLE:
            if not self._framer.at_boundary and not (self._router and self._pending):
                # The client is in the middle of a message whose start this server
                # already has: the rest must reach it, not the next client's bytes
                # (PostgreSQL would read them as that message, or drop the
                # connection under the next client). Keep it linked till later.
                # Not when that start was held back (routing/readwrite.py rule 2):
                # then the server has none of it.
                return
            if self._suspect or self._always_probe or self.pinned:
                self._start_probe(server)
                return
            self._release_server(server, now=now)
        elif isinstance(self._router, ShardRouter) and self._pending and mode != "statement":
            self._send_held_in_transaction()  # routing/shards.py rule 4
        elif mode == "statement":
            log.warning("%s: transaction blocks not allowed in statement pooling mode",
                        self._describe())
            self.fatal(ClientRefused("transaction blocks not allowed in statement pooling mode",
                                     sqlstate="25001"))

    def _count_request(self, stats: PoolStats, tracker: RequestTracker) -> float:
        """Add the request that just ended (and its transaction, if it ended) to stats;
        return the time it ended (read once: the release that follows uses it too)."""
        now = time.monotonic()
        if self.request_started:
            stats.add_query(now - self.request_started)
            self.request_started = 0.0
        if tracker.parses or tracker.binds:
            stats.server_parse_count += tracker.parses
            if self._rewriter is None:
                stats.client_parse_count += tracker.parses
            stats.bind_count += tracker.binds
            tracker.parses = tracker.binds = 0
        if tracker.status == codes.STATUS_IDLE and self.xact_started:
            stats.xact_count += 1
            stats.xact_time_us += int((now - self.xact_started) * 1_000_000)
            self.xact_started = 0.0
        return now

    def _release_server(self, server: ServerConnection, settled: bool = False,
                        now: float = 0.0) -> None:
        """Unlink and give the server back between transactions (transaction and
        statement mode). ``settled``: nothing is outstanding on it (an express reply,
        frontend/express.py rule 4), so the pool may take it back in one step.
        ``now``: the clock as _count_request read it, if it just did."""
        pool = self.pool
        assert pool is not None
        linked, self.server = self.server, None
        if linked is not None:
            self._unlink(linked, now)
        if self.state is _LINKED:
            self.state = _IDLE  # the usual transition, once per transaction
        else:
            self._set_state(_IDLE)
        reset = pool.settings.server_reset_query_always
        if not (settled and not reset and pool.take_back(server, now)):
            pool.release(server, reset=reset)
        if self.ctx.shutting_down:
            self.close()
            return
        if self._router is not None:
            self.pool = self._router.home  # between requests: routed afresh
        if self._pending and self.state is _IDLE:
            # Requests held back while the server was still linked (a probe, or a
            # write behind reads on a read server, routing/readwrite.py rule 2).
            pieces = self._take_pending()
            if self._reading_paused:
                self.resume_client_reading()
            self._queue_pieces(pieces)

    def _unlink(self, server: ServerConnection, now: float = 0.0) -> None:
        """Detach from ``server``, and from its reply queue (emptied by unlink)."""
        server.unlink(now)
        if self._rewriter is not None:
            self._rewriter.replies = None

    def on_server_lost(self, server: ServerConnection, error: Exception) -> None:
        if self.server is not server:
            return
        self.server = None
        if self.state is _LINKED:
            self.state = _IDLE
        msg = error.message if isinstance(error, EcluseError) else str(error)
        log.warning("%s lost its server %s: %s", self._describe(), server, msg)
        self.fatal(EcluseError(f"server conn crashed? {msg}", sqlstate="08006"))
