"""ReplyQueue: which server reply answers which client request, and what to do with it.

When ecluse rewrites the extended protocol (named prepared statements in
transaction mode) the client and the server no longer see the same request
stream: ecluse injects a Parse or a Close the client never sent, and answers
some requests itself without asking the server. Each request therefore gets an
entry here, in wire order, with one of four actions:

    FORWARD  the server answers it and the reply goes to the client
    SKIP     ecluse injected it: the server's reply is swallowed (for a Sync,
             its ReadyForQuery)
    FAKE     ecluse answers it: ``fake`` bytes go to the client when every
             request before it has been answered, exactly where the server's
             reply would have been (``fake`` may be a function, called then,
             for a reply that depends on the state at that point, such as the
             transaction status in a ReadyForQuery)
    REPLACE  ecluse injected it to fail on purpose (a request it refuses must
             abort the server's transaction as PostgreSQL would): the server's
             ErrorResponse is replaced by ``fake``; if the server skipped it
             after an earlier error, nothing is sent, as for any request

Rules (PostgreSQL's, from the protocol's message-flow chapter):
1. Parse, Bind, Close answer with one message ('1', '2', '3'); Describe of a
   statement with 't' then 'T' or 'n', of a portal with 'T' or 'n'; Execute
   ends with 'C', 'I', 's' or an error; Sync, Query and FunctionCall end with 'Z'.
2. After an ErrorResponse to an extended-protocol message the server skips
   everything up to the next Sync: those entries get no reply, fakes included,
   and their ``undo`` runs (a Parse that never ran must not register a name).
3. A ReadyForQuery settles everything before it.
No I/O: the server relay calls ``on_reply`` for each message it receives, in
order, and writes ``take_fakes()`` after it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from ecluse.protocol import codes

FORWARD = 0
SKIP = 1
FAKE = 2
REPLACE = 3

# Request kinds.
PARSE = 0
BIND = 1
DESCRIBE_STATEMENT = 2
DESCRIBE_PORTAL = 3
EXECUTE = 4
CLOSE = 5
SYNC = 6
QUERY = 7  # also FunctionCall: anything that ends with ReadyForQuery
ERROR = 8  # a fake ErrorResponse ecluse itself raises (e.g. unknown statement)

_ENDS_WITH_READY = frozenset({SYNC, QUERY})
_COMPLETES = {
    codes.BE_PARSE_COMPLETE: frozenset({PARSE}),
    codes.BE_BIND_COMPLETE: frozenset({BIND}),
    codes.BE_CLOSE_COMPLETE: frozenset({CLOSE}),
    codes.BE_NO_DATA: frozenset({DESCRIBE_STATEMENT, DESCRIBE_PORTAL}),
    codes.BE_ROW_DESCRIPTION: frozenset({DESCRIBE_STATEMENT, DESCRIBE_PORTAL}),
    codes.BE_COMMAND_COMPLETE: frozenset({EXECUTE}),
    codes.BE_EMPTY_QUERY_RESPONSE: frozenset({EXECUTE}),
    codes.BE_PORTAL_SUSPENDED: frozenset({EXECUTE}),
}
# Module constants for on_reply, called for most server messages while relaying.
_READY = codes.BE_READY_FOR_QUERY
_ERROR = codes.BE_ERROR_RESPONSE
_COMMAND_COMPLETE = codes.BE_COMMAND_COMPLETE
_STATEMENTS_DROPPED = (b"DEALLOCATE ALL\0", b"DISCARD ALL\0")

Undo = Callable[[bytes | None], None]
Fake = bytes | Callable[[], bytes]


class Expected:
    """One request awaiting its reply."""

    __slots__ = ("action", "fake", "kind", "ok", "undo")

    def __init__(self, kind: int, action: int, fake: Fake, undo: Undo | None,
                 ok: Callable[[], None] | None):
        self.kind = kind
        self.action = action
        self.fake = fake
        # Runs if the request never takes effect: with the ErrorResponse when the
        # server refused it, with None when the server skipped it after an error.
        self.undo = undo
        self.ok = ok  # runs when the server's reply says it succeeded


class ReplyQueue:
    """The outstanding requests of one client-server link, in wire order."""

    __slots__ = ("_q", "_skipping", "on_statements_dropped")

    def __init__(self) -> None:
        # Made by the first add() of a link and dropped by reset(): each client has a
        # ReplyQueue, and an empty deque costs 760 bytes per idle client.
        self._q: deque[Expected] | None = None
        self._skipping = False  # the server is ignoring messages until Sync
        # Called when the server reports DEALLOCATE ALL or DISCARD ALL: every
        # prepared statement of that server connection is gone.
        self.on_statements_dropped: Callable[[], None] | None = None

    def __len__(self) -> int:
        return len(self._q) if self._q is not None else 0

    def reset(self) -> None:
        self._q = None
        self._skipping = False

    # --- requests ------------------------------------------------------------
    def add(self, kind: int, action: int = FORWARD, fake: Fake = b"",
            undo: Undo | None = None, ok: Callable[[], None] | None = None) -> None:
        """Record a request, in the order it reaches (or would reach) the server."""
        if self._skipping:
            if kind != SYNC:
                # The server will skip it, so PostgreSQL would never have answered it.
                if undo is not None:
                    undo(None)
                return
            self._skipping = False
        q = self._q
        if q is None:
            q = self._q = deque()
        q.append(Expected(kind, action, fake, undo, ok))

    def take_fakes(self) -> bytes:
        """The fake replies now due: those at the head of the queue."""
        q = self._q
        if not q or q[0].action != FAKE:
            return b""
        out = []
        while q and q[0].action == FAKE:
            fake = q.popleft().fake
            out.append(fake if isinstance(fake, bytes) else fake())
        return b"".join(out)

    # --- replies -------------------------------------------------------------
    def on_reply(self, msg_type: int, raw: bytes | memoryview) -> bool:
        """Account for one whole server message; True if it goes to the client."""
        q = self._q
        if msg_type == _READY:
            forward = True
            while q:
                entry = q.popleft()
                if entry.kind in _ENDS_WITH_READY:
                    forward = entry.action != SKIP  # a Sync ecluse sent on its own
                    break
                if entry.undo is not None:
                    entry.undo(None)
            self._skipping = False
            return forward
        if msg_type == _ERROR:
            return self._on_error(raw)
        if msg_type == _COMMAND_COMPLETE and raw[5] == 68 and \
                bytes(raw[5:]) in _STATEMENTS_DROPPED and self.on_statements_dropped:  # 'D'
            self.on_statements_dropped()
        kinds = _COMPLETES.get(msg_type)
        if kinds is None or not q:
            return True
        head = q[0]
        if head.kind not in kinds:
            return True  # e.g. a Query's own RowDescription
        q.popleft()
        if head.ok is not None:
            head.ok()
        return head.action != SKIP

    def _on_error(self, raw: bytes | memoryview) -> bool:
        q = self._q
        if not q or q[0].kind in _ENDS_WITH_READY:
            return True  # a Query's error, or one at commit: ReadyForQuery follows
        head = q.popleft()
        if head.undo is not None:
            head.undo(bytes(raw))
        # The server now skips to the next Sync: nothing before it will be answered.
        while q and q[0].kind != SYNC:
            entry = q.popleft()
            if entry.undo is not None:
                entry.undo(None)
        if not q:
            self._skipping = True
        if head.action == REPLACE:
            # Due now, in the server error's place (take_fakes() sends it).
            q.appendleft(Expected(ERROR, FAKE, head.fake, None, None))
            return False
        return True
