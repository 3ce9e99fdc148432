"""RequestTracker: when is a server connection free in transaction mode?

The tracker watches the message types a client sends and the replies the
server gives, and answers one question: has every request been answered, with
the server outside any transaction? Only then may a transaction pooler hand the
server to another client.

Rules (from the protocol's message-flow chapter):
1. Each Query, FunctionCall and Sync earns exactly one ReadyForQuery, except a
   Sync the server reads while in COPY IN mode (from a Query or an Execute):
   the server ignores it, and an Execute's COPY then waits for a later Sync.
2. After an error in the extended protocol the server skips messages up to the
   next Sync, so a ReadyForQuery settles every request before it.
3. Extended-protocol messages not yet followed by Sync keep the server busy
   (a Flush does not end the batch).
4. An ErrorResponse ends COPY IN at once. A Query's COPY then gets its
   ReadyForQuery; an Execute's COPY skips to the next Sync. Either way every
   Sync the client sends from then on is read outside COPY and earns one, and
   the client's late CopyData/CopyDone/CopyFail are dropped.
5. A Query or FunctionCall sent while an extended batch is open (no Sync
   yet) ends that batch with its ReadyForQuery, unless an error in the batch
   makes the server skip it (``query_skipped``).
No I/O here; the relay calls the ``on_*`` methods in stream order, including
every ErrorResponse.
"""

from __future__ import annotations

from collections import deque

from ecluse.protocol.codes import (
    BE_COMMAND_COMPLETE,
    BE_COPY_BOTH_RESPONSE,
    BE_COPY_IN_RESPONSE,
    BE_COPY_OUT_RESPONSE,
    BE_EMPTY_QUERY_RESPONSE,
    BE_ERROR_RESPONSE,
    BE_PORTAL_SUSPENDED,
    BE_READY_FOR_QUERY,
    FE_BIND,
    FE_CLOSE,
    FE_COPY_DONE,
    FE_COPY_FAIL,
    FE_DESCRIBE,
    FE_EXECUTE,
    FE_FUNCTION_CALL,
    FE_PARSE,
    FE_QUERY,
    FE_SYNC,
    STATUS_IDLE,
)
from ecluse.protocol.frontend import encode_copy_fail, encode_parse, encode_sync

# Queue entries: what the client sent that the server will answer, in order.
_Q = 0  # Query or FunctionCall: ends with ReadyForQuery
_E = 1  # Execute: ends with CommandComplete/EmptyQuery/PortalSuspended/error
_S = 2  # Sync: ends with ReadyForQuery
_COPY_END = 3  # CopyDone or CopyFail from the client

_EXTENDED = frozenset({FE_PARSE, FE_BIND, FE_DESCRIBE, FE_CLOSE, FE_EXECUTE})
_SIMPLE = frozenset({FE_QUERY, FE_FUNCTION_CALL})
_COPY_ENDS = frozenset({FE_COPY_DONE, FE_COPY_FAIL})
_COPY_IN_STARTS = frozenset({BE_COPY_IN_RESPONSE, BE_COPY_BOTH_RESPONSE})
_EARNS_READY = frozenset({_Q, _S})

# What ecluse sends to finish a departed client's requests (see finish_abandoned).
_ABANDON_COPY = encode_copy_fail("ecluse: client disconnected")
# A Parse that cannot succeed in any state (a syntax error, or skipped after an
# earlier error), then the Sync that ends the batch.
_ABANDON_BATCH = encode_parse("", "ecluse: client disconnected, batch rolled back") + \
    encode_sync()


class RequestTracker:
    """Count outstanding requests on one server link."""

    __slots__ = (
        "_client_copying",
        "_copy_by_execute",
        "_open_batch",
        "_queue",
        "binds",
        "copy_in",
        "copy_out",
        "parses",
        "status",
    )

    def __init__(self) -> None:
        self._queue: deque[int] = deque()
        self._open_batch = False  # extended messages sent since the last Sync
        # Server is in COPY IN and the client has not ended it: the Syncs the
        # client sends now are ignored.
        self._client_copying = False
        self._copy_by_execute = False  # the current COPY IN came from an Execute
        self.copy_in = False
        self.copy_out = False
        self.status = STATUS_IDLE
        # Parse and Bind messages sent, for the pool's counters: the session
        # takes them (and zeroes them) when the server is ready.
        self.parses = 0
        self.binds = 0

    def reset(self) -> None:
        """Forget everything, as a new tracker (done at every link: no allocation)."""
        self._queue.clear()
        self._open_batch = False
        self._client_copying = False
        self._copy_by_execute = False
        self.copy_in = False
        self.copy_out = False
        self.status = STATUS_IDLE
        self.parses = 0
        self.binds = 0

    # --- client side -------------------------------------------------------
    def on_client_message(self, msg_type: int) -> None:
        """Record one message the client sent to the server."""
        if msg_type in _SIMPLE:
            self._queue.append(_Q)
            # Its ReadyForQuery ends an open extended batch too (rule 5).
            self._open_batch = False
        elif msg_type == FE_SYNC:
            if self._client_copying:
                return
            self._queue.append(_S)
            self._open_batch = False
        elif msg_type in _EXTENDED:
            self._open_batch = True
            if msg_type == FE_EXECUTE:
                self._queue.append(_E)
            elif msg_type == FE_BIND:
                self.binds += 1
            elif msg_type == FE_PARSE:
                self.parses += 1
        elif msg_type in _COPY_ENDS:
            if self._client_copying:
                self._client_copying = False
            else:
                self._queue.append(_COPY_END)

    # --- server side -------------------------------------------------------
    def on_server_message(self, msg_type: int, status: int = 0) -> None:
        """Record one message the server sent; ``status`` is for ReadyForQuery."""
        q = self._queue
        if msg_type == BE_READY_FOR_QUERY:
            while q:
                entry = q.popleft()
                if entry in _EARNS_READY:
                    break
            self.status = status
            self.copy_in = self.copy_out = False
            self._client_copying = False
        elif msg_type in (BE_COMMAND_COMPLETE, BE_EMPTY_QUERY_RESPONSE, BE_PORTAL_SUSPENDED):
            self.copy_in = self.copy_out = False
            if q and q[0] == _E:
                q.popleft()
        elif msg_type == BE_ERROR_RESPONSE:
            if self.copy_in:
                self._leave_copy_in_on_error()
            self.copy_out = False
        elif msg_type in _COPY_IN_STARTS:
            self.copy_in = True
            self._enter_copy_in()
        elif msg_type == BE_COPY_OUT_RESPONSE:
            self.copy_out = True

    def _enter_copy_in(self) -> None:
        """Drop the Syncs the server will ignore while it reads COPY data.

        The server ignores Sync and Flush in COPY IN mode whether the COPY came
        from a Query or from an Execute. A CopyDone/CopyFail at the head of the
        queue was sent before the request that started this COPY: the server
        dropped it (pgbouncer #1470), so it cannot end this COPY.
        """
        q = self._queue
        while q and q[0] == _COPY_END:
            q.popleft()
        if not q:
            return
        head = q[0]
        self._copy_by_execute = head == _E
        rest = list(q)[1:]
        kept = [head]
        found_end = False
        for i, entry in enumerate(rest):
            if entry == _COPY_END:
                found_end = True
                kept.extend(rest[i + 1:])
                break
            if entry == _S:
                continue
            kept.append(entry)
        self._queue = deque(kept)
        self._client_copying = not found_end
        if head == _E and _S not in kept:
            # The server ends an Execute's COPY only at the next Sync, and every
            # Sync sent so far was ignored: the batch is open again.
            self._open_batch = True

    def _leave_copy_in_on_error(self) -> None:
        """The server failed the COPY IN (bad data, CopyFail, cancel, ...).

        Syncs already sent were read in COPY IN and stay ignored. The server
        reads every later one outside COPY: an Execute's COPY skips to the
        first of them, a Query's COPY is already answered by the ReadyForQuery
        that follows this error. The client may or may not still send
        CopyDone/CopyFail (libpq does, others just Sync): if it does, the
        server drops it and it is queued as a stale copy end, like any late one.
        """
        self.copy_in = False
        self._client_copying = False
        if self._copy_by_execute and _S not in self._queue:
            self._open_batch = True

    def query_skipped(self) -> None:
        """An error in the extended batch before a Query made the server skip it.

        The server now ignores everything up to the next Sync: that Query earns
        no ReadyForQuery, and the batch is open again until a Sync is sent.
        Only the ReplyQueue, which sees which request an error answers, can
        tell; without it (session mode) such a sequence holds the server until
        the client sends Sync.
        """
        q = self._queue
        for i, entry in enumerate(q):
            if entry == _Q:
                del q[i]
                break
        if _S not in q:
            self._open_batch = True

    def query_skipped_undo(self, _error: bytes | None) -> None:
        """query_skipped as a ReplyQueue undo (which passes the error, or None)."""
        self.query_skipped()

    # --- questions -----------------------------------------------------------
    @property
    def expected_ready(self) -> int:
        """How many ReadyForQuery messages are still to come."""
        return sum(1 for e in self._queue if e in _EARNS_READY)

    def is_done(self) -> bool:
        """True when nothing is outstanding (the transaction may still be open).

        A CopyDone/CopyFail the server has not matched with a COPY does not
        count: after a failed COPY the server drops late copy messages
        (pgbouncer #1470), so they must not keep the server busy.
        """
        if self._open_batch or self.copy_in:
            return False
        q = self._queue
        if not q:
            return True
        return all(e == _COPY_END for e in q)

    def awaits_copy_end(self) -> bool:
        """True while the server is in COPY IN and the client has not ended it.

        Only a CopyDone or CopyFail (from the client, or from ecluse when the
        client is gone) can move the server on.
        """
        return self.copy_in and self._client_copying

    def finish_abandoned(self) -> bytes:
        """Return what to send so a server finishes the requests of a departed client.

        The messages are recorded as sent. The caller must have forwarded the
        client's messages up to a message boundary. Returns b"" when the server
        will finish on its own (every batch closed, no COPY IN left waiting);
        otherwise:

        - CopyFail, first: it aborts a COPY IN the client never ended, even one
          whose CopyInResponse has not arrived yet, and the server drops it
          outside COPY;
        - with an extended batch open, or an Execute not yet answered (it may
          turn out to be a COPY, which ignores the Syncs after it), a Parse
          that fails and a Sync. A plain
          Sync would commit what the client left half done, whereas PostgreSQL
          rolls back a client that disconnects before its Sync; after the
          error, the Sync rolls back instead. It earns exactly one
          ReadyForQuery whether the server is in COPY, skipping to Sync after
          an error, or neither.
        """
        if self.is_done():
            return b""
        out = [_ABANDON_COPY]
        self.on_client_message(FE_COPY_FAIL)
        if self._open_batch or _E in self._queue:
            out.append(_ABANDON_BATCH)
            self.on_client_message(FE_PARSE)
            self.on_client_message(FE_SYNC)
        return b"".join(out)

    def can_release(self) -> bool:
        """True when the server may go back to the pool in transaction mode."""
        return self.is_done() and self.status == STATUS_IDLE
