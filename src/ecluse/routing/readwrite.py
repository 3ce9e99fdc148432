"""Read/write split: which pool serves a client's next request.

A [databases] entry with ``read_db = other`` sends the read-only requests of
its clients (transaction and statement mode) to the pool of ``other``,
typically replicas (a host list with target_session_attrs=standby), and
everything else to its own pool, the primary. FrontendSession asks a
ReadRouter at two points: when a request of an idle client needs a server
(choose), and when more arrives while a read server is still linked (holds).

Rules:
1. A request goes to the read pool only when every message that starts in it
   is known to be read-only: each Query and Parse text by
   routing/readonly.sql_is_read_only, each Bind of a named statement by the
   text the client prepared it with; Describe, Execute, Sync, Flush, Close
   and Terminate carry no SQL. Anything else (a function call, COPY data, a
   message not yet whole, a statement the rewriter does not know) keeps the
   request on the primary. So does a request with no SQL at all.
2. Nothing starts a transaction on a read server: BEGIN is not read-only.
   A read server is held only while pipelined requests are outstanding.
   What arrives meanwhile that is not read-only is held back (holds) until
   the read server is released, then routed afresh: a write never reaches a
   replica, and it is sent after the reads the client sent before it.
3. The read pool is used only when it can serve: not paused, not retired,
   not in session mode, not failing its logins. A client queued on it whose
   wait fails for a server error is moved to the primary's queue (the
   session's on_wait_failed), so a dead replica costs a wait, not an error.
4. The decision reads the current config: a RELOAD that removes read_db
   sends the next requests to the primary.
5. With primary_after_write, a client's reads follow its last request that
   was not read-only to the primary for that many seconds: replicas lag, and
   a client should read what it just wrote.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ecluse.errors import RemoteProtocolError
from ecluse.protocol import codes
from ecluse.protocol.reader import Reader
from ecluse.routing.readonly import sql_is_read_only

if TYPE_CHECKING:
    from ecluse.frontend.prepared import ClientStatement
    from ecluse.pool.pool import Pool
    from ecluse.pool.registry import PoolRegistry

_Q = codes.FE_QUERY
_P = codes.FE_PARSE
_B = codes.FE_BIND
# Messages of a request that carry no SQL of their own.
_NEUTRAL = frozenset({codes.FE_DESCRIBE, codes.FE_EXECUTE, codes.FE_SYNC, codes.FE_FLUSH,
                      codes.FE_CLOSE, codes.FE_TERMINATE})


def request_is_read_only(pieces: Sequence, statements: Mapping[bytes, ClientStatement]) -> bool:
    """Whether the request in ``pieces`` (framer pieces, whole messages) may go to a
    read server (rule 1); ``statements``: the client's named statements."""
    seen_sql = False
    for msg_type, raw, start, end in pieces:
        if msg_type in _NEUTRAL:
            continue  # whole or in fragments (only inspected types come whole)
        if not start:
            return False  # the rest of a message begun elsewhere
        if not end:
            return False  # a streamed message: its SQL is not all here
        try:
            if msg_type == _Q:
                sql = Reader(raw[5:], "Query message").cstring()
            elif msg_type == _P:
                body = Reader(raw[5:], "Parse message")
                body.cstring()  # the statement name
                sql = body.cstring()
            elif msg_type == _B:
                body = Reader(raw[5:], "Bind message")
                body.cstring()  # the portal
                name = body.cstring()
                if not name:
                    continue  # the unnamed statement: its Parse is judged
                stmt = statements.get(name.encode())
                if stmt is None:
                    return False
                sql = Reader(stmt.parse_tail, "statement").cstring()
            else:
                return False
        except RemoteProtocolError:
            return False  # unterminated or not UTF-8: not ours to guess
        if not sql_is_read_only(sql):
            return False
        seen_sql = True
    return seen_sql


class ReadRouter:
    """The read/write split of one client of a database with read_db."""

    __slots__ = ("home", "primary_until", "registry")

    def __init__(self, home: Pool, registry: PoolRegistry):
        self.home = home  # the client's own pool: the primary
        self.registry = registry
        self.primary_until = 0.0  # rule 5: reads stay on the primary till then

    def read_pool(self, user: str) -> Pool | None:
        """The pool reads go to now, or None when there is none that can serve
        (rules 3 and 4)."""
        config = self.registry.config
        db = config.database(self.home.settings.database)
        if db is None or db.read_db is None:
            return None
        read_db = config.databases.get(db.read_db)
        if read_db is None:
            return None
        pool = self.registry.get_pool(read_db, user)
        if pool.paused or pool.retired or pool.closed or pool.settings.mode == "session" \
                or pool.login_failing():
            return None
        home = self.home
        if pool.settings.user == home.settings.user and pool.auth_secret is None \
                and pool.scram_keys is None and (home.auth_secret or home.scram_keys):
            # The client proved it to the home pool (auth_query, SCRAM pass-through):
            # the same server user logs into the replicas with it.
            pool.set_login_secret(home.auth_secret, home.scram_keys)
        return pool

    def fallback(self, pool: Pool, user: str) -> Pool | None:
        """Where a client whose wait on ``pool`` failed goes: the read pool falls
        back to the primary (rule 3)."""
        return self.home if pool is not self.home else None

    def choose(self, pieces: Sequence, statements: Mapping[bytes, ClientStatement],
               user: str) -> Pool:
        """The pool for the request in ``pieces`` of an idle client."""
        if request_is_read_only(pieces, statements):
            if self.primary_until and time.monotonic() < self.primary_until:
                return self.home
            pool = self.read_pool(user)
            if pool is not None:
                return pool
            return self.home
        stay = self.registry.config.settings.primary_after_write
        if stay > 0:
            self.primary_until = time.monotonic() + stay
        return self.home

    def holds(self, pieces: Sequence, statements: Mapping[bytes, ClientStatement],
              in_transaction: bool, pool: Pool) -> bool:
        """Whether ``pieces``, arriving while a server of ``pool`` is linked, must wait
        for its release (rule 2): the server is a read server, and they are not
        read-only and start a new request."""
        if pool is self.home or in_transaction or not pieces or not pieces[0][2]:
            return False  # the rest of a message the read server has the start of
        return not request_is_read_only(pieces, statements)
