"""StatementRewriter: named prepared statements that survive transaction pooling.

A client in transaction mode meets a different server connection at every
transaction, yet expects the statements it prepared to stay. The rewriter keeps
each client's statements under the client's names and sends them to servers
under a pooler-wide name derived from the query text and parameter types, so
identical statements from many clients share one server-side statement:

    client Parse "s1"          -> server Parse "ecluse_<hash>", or a fake
                                  ParseComplete if that server already has it
    client Bind/Describe "s1"  -> the server name, after an injected Parse if
                                  that server has never seen the statement
    client Close "s1"          -> forgotten for this client only; fake CloseComplete

The replies the client did not ask for are swallowed and the ones it asked for
are produced in wire order by a ReplyQueue (protocol/replies.py). A request
ecluse must refuse (an unknown name, a duplicate name) gets the ErrorResponse
PostgreSQL would send, and the client's messages up to its Sync are dropped,
as the server would skip them. The server is made to fail at that same point
(a Bind of a statement it cannot have, whose error is replaced by ecluse's):
PostgreSQL would abort the transaction there, explicit or implicit, so that
nothing the client sent before the error in that transaction commits.

A schema change can change a statement's result type. PostgreSQL then refuses
every Bind or Describe of a statement prepared before ("cached plan must not
change result type", 0A000) until the client prepares it again. Statements
shared by many clients must not dodge that: once a server reports it for a
server name, that name is outdated pool-wide. The client statements under it
are refused with the same error, and new ones get the next generation's name,
so they never meet an old plan left on another server. (A client whose
statement was described before the change and is next bound on a server that
never had it, before any server has reported the change, still gets rows of the
new type: nothing tells ecluse of the change without a round trip.)

No I/O: the session hands over the framed client pieces and the linked server's
PreparedCache and RequestTracker, and sends what comes back.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping
from types import MappingProxyType
from typing import Protocol

from ecluse.errors import RemoteProtocolError
from ecluse.frontend.sqlscan import may_leave_session_state
from ecluse.protocol import backend as be
from ecluse.protocol import codes
from ecluse.protocol import frontend as fe
from ecluse.protocol import replies as rq
from ecluse.protocol.backend import decode_error_fields
from ecluse.protocol.framing import Piece
from ecluse.protocol.replies import ReplyQueue, Undo
from ecluse.protocol.tracker import RequestTracker
from ecluse.server.prepared import PreparedCache

_HEADER = struct.Struct("!BI")
_LENGTH = struct.Struct("!I")
_QUERY = codes.FE_QUERY
_PARSE_COMPLETE = be.encode_parse_complete()
_CLOSE_COMPLETE = be.encode_close_complete()
_STATUS_FAILED = ord("E")
_READY_IDLE = be.encode_ready_for_query(b"I")
SERVER_NAME_PREFIX = "ecluse_"
_NAMING = frozenset({codes.FE_PARSE, codes.FE_BIND, codes.FE_DESCRIBE, codes.FE_CLOSE})
_PLAIN_KIND = {codes.FE_PARSE: rq.PARSE, codes.FE_BIND: rq.BIND, codes.FE_CLOSE: rq.CLOSE}
KNOWN_GOOD_LIMIT = 10_000
# Keys of ``known_good`` for server names whose result type changed under them.
_OUTDATED = "!"
# Injected where ecluse refuses a request: no server has a statement of that name, so
# the server fails right there and skips to Sync, as it would have for the request.
_FAILING_BIND = fe.encode_bind("", "ecluse: refused request")
# PostgreSQL's error for a statement whose result type changed, with the routine that
# drivers look for (asyncpg re-prepares on it).
_PLAN_CHANGED = be.encode_error_fields({
    "S": "ERROR", "V": "ERROR", "C": "0A000",
    "M": "cached plan must not change result type",
    "F": "plancache.c", "R": "RevalidateCachedQuery"})


def server_statement_name(parse_tail: bytes) -> str:
    """The pooler-wide name of a statement: a digest of its text and parameter types."""
    return SERVER_NAME_PREFIX + hashlib.blake2b(parse_tail, digest_size=12).hexdigest()


def _cstr_end(raw: bytes | memoryview, start: int, what: str) -> int:
    end = bytes(raw[start:start + 1024]).find(b"\0")
    if end < 0:
        raise RemoteProtocolError(f"invalid {what} message: name not terminated")
    return start + end


def _message(msg_type: bytes, body: bytes) -> bytes:
    return msg_type + struct.pack("!I", len(body) + 4) + body


class ClientStatement:
    """One statement a client prepared: its server name and what re-creates it."""

    __slots__ = ("_harmless", "parse_tail", "server_name", "undone")

    def __init__(self, server_name: str, parse_tail: bytes):
        self.server_name = server_name
        self.parse_tail = parse_tail  # query text, NUL, parameter type list
        self.undone = False  # its Parse was refused or skipped: it never existed
        self._harmless: bool | None = None  # see harmless, scanned on first use

    @property
    def harmless(self) -> bool:
        """True when its SQL cannot leave session state (frontend/sqlscan.py), so a
        run of it may take the express path; scanned once, the text never changes."""
        if self._harmless is None:
            text = self.parse_tail[:self.parse_tail.find(b"\0")]
            self._harmless = not may_leave_session_state(text.decode("utf-8", "replace"))
        return self._harmless


class SqlWatcher(Protocol):
    """Sees the SQL of each Query and Parse a client sends (kind, text or None when
    too long to hold, whether the Parse names its statement); for a Query it may
    return the reply to fake instead of sending it (e.g. DEALLOCATE of a client
    name)."""

    def on_sql(self, kind: int, sql: bytes | None, named: bool) -> rq.Fake | None: ...


# The statements of a client that never named one: shared, read-only (an empty
# dict per idle client is 64 bytes). _named() gives the client its own dict.
_NO_STATEMENTS: Mapping[bytes, ClientStatement] = MappingProxyType({})


class StatementRewriter:
    """Per-client statement names mapped onto per-server prepared statements."""

    __slots__ = ("_drop_rest", "_skip_to_sync", "enabled", "known_good", "replies",
                 "sql_watcher", "statements")

    def __init__(self, known_good: dict[str, None] | None = None, enabled: bool = True) -> None:
        self.enabled = enabled  # False (max_prepared_statements = 0): names pass through
        # Sees the SQL of each Query and Parse (an object, not a bound method: one of
        # those per idle client costs 64 bytes).
        self.sql_watcher: SqlWatcher | None = None
        self.statements: Mapping[bytes, ClientStatement] = _NO_STATEMENTS
        # Server names some server of this pool has parsed without error, shared by
        # the pool's clients: a client may prepare one of these without a server.
        # Also, under _OUTDATED + name, the names whose result type changed.
        self.known_good = known_good if known_good is not None else {}
        # The linked server's reply queue (ServerConnection.track_replies), None
        # while no server is linked: one per server, not one per idle client.
        self.replies: ReplyQueue | None = None
        self._skip_to_sync = False  # a request was refused: drop up to Sync
        self._drop_rest = False  # the rest of a streamed message being dropped

    def forget_all(self) -> None:
        """The client's statements are gone (it ran DEALLOCATE ALL or DISCARD ALL)."""
        if self.statements:
            self._named().clear()  # in place: undo callbacks hold this dict

    def deallocate(self, name: bytes) -> bool:
        """Drop one client statement, as SQL DEALLOCATE would; False if unknown."""
        return name in self.statements and self._named().pop(name, None) is not None

    def _named(self) -> dict[bytes, ClientStatement]:
        """The client's statements, to change: its own dict, made on first use."""
        statements = self.statements
        if not isinstance(statements, dict):  # _NO_STATEMENTS
            statements = self.statements = {}
        return statements

    def _remember(self, key: str) -> None:
        good = self.known_good
        if key not in good:
            if len(good) >= KNOWN_GOOD_LIMIT:
                del good[next(iter(good))]
            good[key] = None

    def _parsed(self, cache: PreparedCache, server_name: str) -> None:
        cache.parsed(server_name)
        if _OUTDATED + server_name not in self.known_good:
            self._remember(server_name)

    def _server_name(self, parse_tail: bytes) -> str:
        """The server name for a statement prepared now: the first generation not outdated."""
        name = base = server_statement_name(parse_tail)
        generation = 0
        while _OUTDATED + name in self.known_good:
            generation += 1
            name = f"{base}_{generation}"
        return name

    def answer_locally(self, pieces: list[Piece]) -> bytes | None:
        """Answer a batch outside any transaction without a server, or return None.

        A batch of Parse (of statements known to parse), Close of statements,
        Flush and Sync needs no server: its replies are fixed. This is what lets
        pgbench -M prepared run more clients than servers (its synchronous prepare
        would otherwise wait for a server held by a client of the same thread).
        """
        if not pieces or pieces[-1][0] != codes.FE_SYNC or self._skip_to_sync or \
                not self.enabled:
            return None
        plan = []
        seen: set[bytes] = set()
        for msg_type, raw, start, end in pieces:
            if not (start and end):
                return None
            if msg_type == codes.FE_PARSE:
                name_end = _cstr_end(raw, 5, "Parse")
                name = bytes(raw[5:name_end])
                tail = bytes(raw[name_end + 1:])
                server_name = self._server_name(tail)
                if not name or name in self.statements or name in seen or \
                        server_name not in self.known_good:
                    return None
                seen.add(name)
                plan.append((name, ClientStatement(server_name, tail)))
            elif msg_type == codes.FE_CLOSE:
                if raw[5:6] != b"S" or len(raw) <= 7:
                    return None
                plan.append((bytes(raw[6:-1]), None))
            elif msg_type != codes.FE_SYNC and msg_type != codes.FE_FLUSH:
                return None
        out = []
        for name, stmt in plan:
            if stmt is None:
                self._named().pop(name, None)
                out.append(_CLOSE_COMPLETE)
            else:
                self._named()[name] = stmt
                out.append(_PARSE_COMPLETE)
        out.extend(_READY_IDLE for t, _r, _s, _e in pieces if t == codes.FE_SYNC)
        return b"".join(out)

    # --- the client -> server direction ----------------------------------------
    def rewrite(self, pieces: list[Piece], cache: PreparedCache,
                tracker: RequestTracker) -> list[bytes | memoryview]:
        """Return the bytes to send to the server for these client pieces.

        Fake replies now due are left in ``self.replies`` (take_fakes()).
        """
        out: list[bytes | memoryview] = []
        for msg_type, raw, start, end in pieces:
            if not start:
                if not self._drop_rest:
                    out.append(raw)
                continue
            self._drop_rest = False
            if self._skip_to_sync:
                if msg_type != codes.FE_SYNC:
                    self._drop_rest = not end
                    continue
                self._skip_to_sync = False
            if msg_type == _QUERY:
                if self.sql_watcher is not None:
                    # Text too long to hold whole is passed as None: the watcher must
                    # assume the worst about it.
                    fake = self.sql_watcher.on_sql(_QUERY, bytes(raw[5:-1]) if end else None,
                                                   False)
                    if fake is not None:
                        self.replies.add(rq.QUERY, rq.FAKE, fake)
                        continue
                # The common request, on its own path: it names no statement.
                out.append(raw)
                tracker.on_client_message(_QUERY)
                # Skipped only after an error earlier in an unsynced batch.
                self.replies.add(rq.QUERY, undo=tracker.query_skipped_undo)
                continue
            if msg_type == codes.FE_PARSE and self.sql_watcher is not None and start:
                if end:
                    name_end = _cstr_end(raw, 5, "Parse")
                    text = bytes(raw[name_end + 1:])
                    self.sql_watcher.on_sql(codes.FE_PARSE, text[:text.find(b"\0")],
                                            name_end > 5)
                else:
                    self.sql_watcher.on_sql(codes.FE_PARSE, None, True)
            if not self.enabled and msg_type in _NAMING:
                out.append(raw)
                tracker.on_client_message(msg_type)
                self.replies.add(_PLAIN_KIND[msg_type] if msg_type != codes.FE_DESCRIBE else
                                 rq.DESCRIBE_STATEMENT if raw[5:6] == b"S" else
                                 rq.DESCRIBE_PORTAL)
                continue
            if msg_type == codes.FE_BIND:
                self._bind(raw, end, out, cache, tracker)
                continue
            if msg_type == codes.FE_PARSE:
                self._parse(raw, end, out, cache, tracker)
                continue
            if msg_type == codes.FE_DESCRIBE or msg_type == codes.FE_CLOSE:
                if not end:
                    raise RemoteProtocolError("Describe or Close message too long")
                if msg_type == codes.FE_DESCRIBE:
                    self._describe(raw, out, cache, tracker)
                else:
                    self._close(raw, out, tracker)
                continue
            out.append(raw)
            tracker.on_client_message(msg_type)
            if msg_type == codes.FE_EXECUTE:
                self.replies.add(rq.EXECUTE)
            elif msg_type == codes.FE_SYNC:
                self.replies.add(rq.SYNC)
            elif msg_type == codes.FE_QUERY or msg_type == codes.FE_FUNCTION_CALL:
                # Skipped only after an error earlier in an unsynced batch.
                self.replies.add(rq.QUERY, undo=tracker.query_skipped_undo)
        return out

    def express_bind(self, data: bytes, name: bytes, name_end: int,
                     cache: PreparedCache) -> tuple[bytes, Undo] | None:
        """``data`` (a batch whose first message Binds client statement ``name``, its
        name ending at ``name_end``: expressplan.plan_named_bind) with the server's
        name in its place, and the undo its Bind's reply entry takes; or None, with
        nothing changed, when rewrite() would do more than that rename (the name
        is unknown or outdated: refused; the server lacks the statement: prepared
        first) or when its SQL may leave session state (DEALLOCATE ALL, SET...:
        the general path watches their replies). The express path's side of
        _bind (frontend/express.py rule 1)."""
        stmt = self.statements.get(name)
        if stmt is None or not stmt.harmless or _OUTDATED + stmt.server_name in self.known_good \
                or not cache.has(stmt.server_name):
            return None
        server_name = stmt.server_name.encode()
        bind_length = _LENGTH.unpack_from(data, 1)[0] + len(server_name) - len(name)
        return (b"B" + _LENGTH.pack(bind_length) + b"\0" + server_name + data[name_end:],
                self._statement_failed(stmt, cache))

    def _refuse(self, error: bytes, end: bool, out: list, tracker: RequestTracker) -> None:
        """Answer the request with ``error``, as PostgreSQL would, and skip to Sync.

        The server fails at the same point, so that its transaction (or the
        batch's implicit one) is aborted just as PostgreSQL would abort it.
        """
        out.append(_FAILING_BIND)
        tracker.on_client_message(codes.FE_BIND)
        self.replies.add(rq.ERROR, rq.REPLACE, error)
        self._skip_to_sync = True
        self._drop_rest = not end

    def _parse(self, raw, end: bool, out: list, cache: PreparedCache,
               tracker: RequestTracker) -> None:
        name_end = _cstr_end(raw, 5, "Parse")
        name = bytes(raw[5:name_end])
        if not name:
            out.append(raw)
            tracker.on_client_message(codes.FE_PARSE)
            self.replies.add(rq.PARSE)
            return
        label = name.decode("utf-8", "replace")
        if not end:
            self._refuse(be.encode_error_response(
                f'prepared statement "{label}" is too large for ecluse to track', "54000"),
                end, out, tracker)
            return
        if name in self.statements:
            self._refuse(be.encode_error_response(
                f'prepared statement "{label}" already exists', "42P05"), end, out, tracker)
            return
        tail = bytes(raw[name_end + 1:])
        stmt = ClientStatement(self._server_name(tail), tail)
        statements = self._named()
        statements[name] = stmt

        def unregister(_err: bytes | None) -> None:
            stmt.undone = True
            if statements.get(name) is stmt:
                del statements[name]

        server_name = stmt.server_name
        settled_failed = tracker.status == _STATUS_FAILED and not self.replies
        if cache.has(server_name) and not settled_failed:
            self.replies.add(rq.PARSE, rq.FAKE, _PARSE_COMPLETE, unregister)
            return
        if cache.has(server_name):
            # In a failed transaction PostgreSQL refuses every Parse: let the server
            # say so rather than faking a success it would not give.
            out.append(_message(b"P", server_name.encode() + b"\0" + tail))
            tracker.on_client_message(codes.FE_PARSE)
            self.replies.add(rq.PARSE, rq.FORWARD, b"", unregister)
            return

        def failed(err: bytes | None) -> None:
            unregister(err)
            cache.parse_undone(server_name)

        self._close_evicted(cache.add(server_name), out, cache, tracker)
        out.append(_message(b"P", server_name.encode() + b"\0" + tail))
        tracker.on_client_message(codes.FE_PARSE)
        self.replies.add(rq.PARSE, rq.FORWARD, b"", failed,
                         lambda: self._parsed(cache, server_name))

    def _close_evicted(self, names: list[str], out: list, cache: PreparedCache,
                       tracker: RequestTracker) -> None:
        for old in names:
            out.append(_message(b"C", b"S" + old.encode() + b"\0"))
            tracker.on_client_message(codes.FE_CLOSE)
            self.replies.add(rq.CLOSE, rq.SKIP, b"",
                             lambda _err, old=old: cache.close_undone(old),
                             lambda old=old: cache.closed(old))

    def _ensure_prepared(self, stmt: ClientStatement, out: list, cache: PreparedCache,
                         tracker: RequestTracker) -> None:
        """Inject the Parse of a statement this server has not seen."""
        server_name = stmt.server_name
        if cache.has(server_name):
            return
        self._close_evicted(cache.add(server_name), out, cache, tracker)
        out.append(_message(b"P", server_name.encode() + b"\0" + stmt.parse_tail))
        tracker.on_client_message(codes.FE_PARSE)
        self.replies.add(rq.PARSE, rq.SKIP, b"", lambda _err: cache.parse_undone(server_name),
                         lambda: self._parsed(cache, server_name))

    def _lookup(self, name: bytes, end: bool, out: list,
                tracker: RequestTracker) -> ClientStatement | None:
        """The client statement to Bind or Describe; None if refused (unknown, outdated)."""
        stmt = self.statements.get(name)
        if stmt is None:
            label = name.decode("utf-8", "replace")
            self._refuse(be.encode_error_response(
                f'prepared statement "{label}" does not exist', "26000"), end, out, tracker)
        elif _OUTDATED + stmt.server_name in self.known_good:
            # Prepared before its result type changed: PostgreSQL would refuse it.
            self._refuse(_PLAN_CHANGED, end, out, tracker)
            return None
        return stmt

    def _bind(self, raw, end: bool, out: list, cache: PreparedCache,
              tracker: RequestTracker) -> None:
        portal_end = _cstr_end(raw, 5, "Bind")
        name_end = _cstr_end(raw, portal_end + 1, "Bind")
        name = bytes(raw[portal_end + 1:name_end])
        if not name:
            out.append(raw)
            tracker.on_client_message(codes.FE_BIND)
            self.replies.add(rq.BIND)
            return
        stmt = self._lookup(name, end, out, tracker)
        if stmt is None:
            return
        self._ensure_prepared(stmt, out, cache, tracker)
        server_name = stmt.server_name.encode()
        _t, length = _HEADER.unpack_from(raw, 0)
        length += len(server_name) - len(name)
        out.append(b"B" + struct.pack("!I", length) + bytes(raw[5:portal_end + 1]) +
                   server_name + bytes(raw[name_end:]))
        tracker.on_client_message(codes.FE_BIND)
        self.replies.add(rq.BIND, rq.FORWARD, b"", self._statement_failed(stmt, cache))

    def _describe(self, raw, out: list, cache: PreparedCache, tracker: RequestTracker) -> None:
        kind = raw[5:6]
        name = bytes(raw[6:-1])
        if kind != b"S" or not name:
            out.append(raw)
            tracker.on_client_message(codes.FE_DESCRIBE)
            self.replies.add(rq.DESCRIBE_STATEMENT if kind == b"S" else rq.DESCRIBE_PORTAL)
            return
        stmt = self._lookup(name, True, out, tracker)
        if stmt is None:
            return
        self._ensure_prepared(stmt, out, cache, tracker)
        out.append(_message(b"D", b"S" + stmt.server_name.encode() + b"\0"))
        tracker.on_client_message(codes.FE_DESCRIBE)
        self.replies.add(rq.DESCRIBE_STATEMENT, rq.FORWARD, b"",
                         self._statement_failed(stmt, cache))

    def _close(self, raw, out: list, tracker: RequestTracker) -> None:
        kind = raw[5:6]
        name = bytes(raw[6:-1])
        if kind != b"S" or not name:
            out.append(raw)
            tracker.on_client_message(codes.FE_CLOSE)
            self.replies.add(rq.CLOSE)
            return
        # The server statement stays: other clients may share it. Closing an unknown
        # name is not an error in PostgreSQL either.
        statements = self._named()
        stmt = statements.pop(name, None)

        def skipped(_err: bytes | None) -> None:
            if stmt is not None and not stmt.undone:
                # An earlier error: the Close never ran. Whatever took the name after
                # it was skipped as well, so the old statement is simply back.
                statements[name] = stmt

        self.replies.add(rq.CLOSE, rq.FAKE, _CLOSE_COMPLETE, skipped)

    def _statement_failed(self, stmt: ClientStatement, cache: PreparedCache):
        server_name = stmt.server_name

        def undo(err: bytes | None) -> None:
            if err is None:
                return
            error = decode_error_fields(err[5:])
            if error.sqlstate == "26000":
                cache.discard(server_name)  # dropped behind ecluse's back: prepare again
            elif error.sqlstate == "0A000":
                # Its plan broke under a schema change: close it before any re-prepare.
                cache.mark_stale(server_name)
                if error.fields.get("R") == "RevalidateCachedQuery" or \
                        error.message.startswith("cached plan must not change result type"):
                    # Its result type changed: every statement under this name is
                    # outdated, on every server of the pool (see the module docstring).
                    self.known_good.pop(server_name, None)
                    self._remember(_OUTDATED + server_name)

        return undo
