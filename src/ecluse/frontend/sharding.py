"""FrontendSession's side of sharding: what a ShardRouter decides, carried out.

routing/shards.py decides, without I/O; this mixin writes the answers ecluse
gives itself (a shard choice, a deferred BEGIN, a refused request), trims
what is sent to a linked server to the requests bound for its shard, and
sends what waited once the server it waited behind is in a transaction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ecluse.errors import ClientRefused
from ecluse.frontend.statekeeping import fake_completion
from ecluse.protocol import backend as be
from ecluse.protocol import codes
from ecluse.protocol import replies as rq
from ecluse.protocol.frontend import encode_sync
from ecluse.routing.shards import ShardError, ShardRouter, request_spans, whole_pieces

if TYPE_CHECKING:
    from ecluse.pool.pool import Pool
    from ecluse.protocol.replies import Fake

_Q = codes.FE_QUERY
_S = codes.FE_SYNC
_SYNC = encode_sync()


class ShardedRequests:
    """The FrontendSession methods that carry out a ShardRouter's decisions."""

    __slots__ = ()

    def _answer_shard_sql(self, pieces, start: int) -> bool:
        """Answer the requests at ``start`` that need no server; True once the whole
        batch is handled (what follows an answer is queued again, in order).
        _acquire refuses a request naming several shards (choose)."""
        router = self._router
        msg_type, raw, is_start, end = pieces[start]
        answer = None
        if msg_type == _Q and is_start and end:
            try:
                answer = router.answer_idle(bytes(raw[5:-1]).decode("utf-8", "replace"),
                                            self.user)
            except ShardError as exc:
                return self._refuse_request(pieces, start, exc)
        if answer is None:
            if router.begin is None:
                return False
            # After a deferred BEGIN the client is in a transaction: nothing is
            # answered the idle way (its ReadyForQuery would say idle).
            self._buffer(pieces[start:])
            self._acquire()
            return True
        self.transport.write(be.encode_command_complete(answer.tag)
                             + be.encode_ready_for_query(answer.status))
        rest = pieces[start + 1:]
        if rest:
            self._queue_pieces(rest)
        return True

    def _refuse_request(self, pieces, start: int, exc: ShardError) -> bool:
        """Answer the first request at ``start`` with an error, drop it, go on."""
        first, last = request_spans(pieces[start:])[0]
        request = pieces[start + first:start + last]
        if not request[-1][3] or request[-1][0] not in (_Q, _S):
            # Not whole yet: what follows must be dropped too, until its end.
            self.fatal(ClientRefused(exc.message, sqlstate=exc.sqlstate))
            return True
        if self._reading_paused:
            self.resume_client_reading()
        self.pool.stats.add_error("pooler", exc.sqlstate)  # as PostgreSQL's own count
        self._log_pooler_error(exc.message, exc.sqlstate)
        status = b"T" if self._router.begin is not None else b"I"
        self.transport.write(be.encode_error_response(exc.message, exc.sqlstate)
                             + be.encode_ready_for_query(status))
        rest = pieces[start + last:]
        if rest:
            self._queue_pieces(rest)
        return True

    def _express_pool(self, data: bytes) -> Pool | None:
        """The pool the router chooses for ``data``, one whole request of whole
        messages going the express way; None when the general way must take it:
        the router answers it itself (a shard choice, a BEGIN, or anything after a
        BEGIN ecluse answered) or refuses it."""
        router = self._router
        if isinstance(router, ShardRouter) and (router.begin is not None or (
                data[0] == _Q and router.answers_idle(data[5:-1].decode("utf-8", "replace")))):
            return None
        try:
            return router.choose(whole_pieces(data), self._rewriter.statements, self.user)
        except ShardError:
            return None

    def _shard_trim(self, pieces) -> list | tuple:
        """Of the pieces buffered while waiting, those the server just linked takes
        now; the rest wait for its release (routing/shards.py rule 5)."""
        router = self._router
        if not isinstance(router, ShardRouter) or not pieces:
            return pieces
        replay = router.take_replay()
        if replay is not None and self.server is not None:
            # The unnamed statement of a request moved here (rule 5), prepared
            # again unseen: its Bind is among these pieces.
            self.server.tracker.on_client_message(codes.FE_PARSE)
            self._rewriter.replies.add(rq.PARSE, rq.SKIP)
            self.server.send(replay)
        count = router.sendable(pieces, self._rewriter.statements, self.pool)
        if count < len(pieces):
            self._buffer(pieces[count:])
            return pieces[:count]
        return pieces

    def _end_open_request(self) -> None:
        """End the request the linked server has the start of with a Sync whose
        reply the client does not see: its rest goes to another shard (rule 5)."""
        server = self.server
        server.tracker.on_client_message(_S)
        self._rewriter.replies.add(rq.SYNC, rq.SKIP)
        server.send(_SYNC)
        self._router.moved()

    def _send_held_in_transaction(self) -> None:
        """The server is in a transaction and requests wait behind it: they join
        the transaction, unless one is bound for another shard (rule 4)."""
        pieces = self._take_pending()
        if self._reading_paused:
            self.resume_client_reading()
        try:
            self._router.holds(pieces, self._rewriter.statements, True, self.pool)
        except ShardError as exc:
            self._end_for_shard(exc)
            return
        self._forward(pieces)

    def _fake_shard_set(self, text: str) -> Fake | None:
        """SET SHARD or SET SHARDING KEY reaching a linked server: ecluse answers it in
        its turn (PostgreSQL knows no such statement). The router let it through, so
        it names the linked server's shard (routing/shards.py rules 4 and 5)."""
        router = self._router
        if not isinstance(router, ShardRouter):
            return None
        try:
            chose = router.choose_while_linked(text, self.user)
        except ShardError:
            return None  # the server's error says what is wrong
        if not chose:
            return None
        return fake_completion(self.server, ("SET",))

    def _end_for_shard(self, exc: ShardError) -> None:
        self.fatal(ClientRefused(exc.message, sqlstate=exc.sqlstate))  # logged, counted
