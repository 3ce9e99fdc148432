"""SQL that ecluse must see in transaction mode: session state, DEALLOCATE, LISTEN.

A mixin of FrontendSession (frontend/session.py), which owns the state it
reads and the I/O. What it adds:

- the rewriter's SQL hook: a cheap scan (frontend/sqlscan.py) flags SQL that
  may leave session state; DEALLOCATE of the client's protocol statements is
  answered here;
- the end-of-transaction probe (server/state.py) that replays settings on the
  client's next server or pins the client to its server while state that
  cannot move exists;
- LISTEN/UNLISTEN sent on their own, served by the pool's hub
  (pool/listener.py), and delivery of notifications between replies.

Rules:
1. Only session methods change the session's state; this mixin calls them.
2. A notification is never written into the middle of a server's reply.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ecluse.frontend.notify import recode_notification
from ecluse.frontend.sqlscan import (
    Intercept,
    find_custom_settings,
    may_leave_session_state,
    parse_intercept,
)
from ecluse.frontend.states import ClientState
from ecluse.protocol import backend as be
from ecluse.protocol import codes
from ecluse.protocol.messages import ErrorResponse
from ecluse.protocol.replies import Fake
from ecluse.server.params import tracked_parameters
from ecluse.server.state import SessionState, build_probe_sql, parse_probe

if TYPE_CHECKING:
    from ecluse.server.connection import ServerConnection

log = logging.getLogger("ecluse.client")

# Longest SQL text remembered as scanned and harmless (see _answer_idle_sql).
HARMLESS_CACHE_MAX = 8192


def fake_completion(server: ServerConnection | None, tags: Sequence[str],
                    act: Callable[[], None] | None = None) -> Fake:
    """The reply ecluse gives in a linked server's turn for statements it answers
    itself: their CommandComplete tags and a ReadyForQuery with the server's
    status then, or PostgreSQL's error in a failed transaction (and ``act``,
    which carries them out, is not called)."""
    def reply() -> bytes:
        status = server.tracker.status if server is not None else codes.STATUS_IDLE
        if status == codes.STATUS_FAILED:
            return be.encode_error_response(
                "current transaction is aborted, commands ignored until end of "
                "transaction block", "25P02") + be.encode_ready_for_query(b"E")
        if act is not None:
            act()
        return b"".join(be.encode_command_complete(tag) for tag in tags) + \
            be.encode_ready_for_query(bytes((status,)))
    return reply


class SessionStateKeeping:
    """FrontendSession's handling of session state, DEALLOCATE and LISTEN."""

    __slots__ = ()

    def on_sql(self, kind: int, sql: bytes | None, named: bool) -> Fake | None:
        """The rewriter's SqlWatcher: the text of each Query and Parse sent to a server."""
        if sql is None:
            self._suspect = True  # too long to scan: assume the worst
            return None
        harmless, self._harmless_sql = self._harmless_sql, None
        if harmless is not None and sql == harmless:
            return None  # _answer_idle_sql just scanned this very text
        text = sql.decode("utf-8", "replace")
        if kind == codes.FE_QUERY and self._router is not None:
            fake = self._fake_shard_set(text)
            if fake is not None:
                return fake
        if not may_leave_session_state(text):
            return None
        self._suspect = True
        custom = find_custom_settings(text)
        if custom is None:
            self._custom_unknown = True
        else:
            if self._custom_names is None:
                self._custom_names = set()
            self._custom_names.update(custom)
        if kind == codes.FE_PARSE:
            # A named statement can run again in any later transaction.
            self._always_probe = self._always_probe or named
            return None
        intercept = parse_intercept(text)
        if intercept is None:
            return None
        if intercept.kind == "unlisten":
            self._unlisten(intercept)  # the server runs it too: harmless there
        elif intercept.kind == "deallocate" and not intercept.all:
            return self._fake_deallocate(intercept)
        return None

    def _fake_deallocate(self, intercept: Intercept) -> Fake | None:
        """DEALLOCATE of the client's protocol-level statements, answered by ecluse.

        The server knows them under other names; SQL-prepared ones it does know
        are left to it.
        """
        rewriter = self._rewriter
        assert rewriter is not None
        names = [name.encode() for name in intercept.names]
        if not all(name in rewriter.statements for name in names):
            return None
        def deallocate() -> None:
            for name in names:
                rewriter.deallocate(name)
        return fake_completion(self.server, intercept.tags, deallocate)

    def _answer_idle_sql(self, pieces, start: int) -> bool:
        """Answer a DEALLOCATE, LISTEN or UNLISTEN query without a server, if it is one.

        Only a whole simple Query first in the batch; the rest of the batch is
        handled after it, in order.
        """
        msg_type, raw, is_start, end = pieces[start]
        if msg_type != codes.FE_QUERY or not (is_start and end):
            return False
        sql = bytes(raw[5:-1])
        text = sql.decode("utf-8", "replace")
        if not may_leave_session_state(text):
            if len(sql) <= HARMLESS_CACHE_MAX:
                # The rewriter's hook sees the same text next: spare it a second scan.
                self._harmless_sql = sql
            return False
        intercept = parse_intercept(text)
        if intercept is None:
            return False
        rest = pieces[start + 1:]
        rewriter = self._rewriter
        assert rewriter is not None and self.pool is not None
        if intercept.kind == "deallocate":
            names = [name.encode() for name in intercept.names]
            if intercept.all:
                rewriter.forget_all()
            elif all(name in rewriter.statements for name in names):
                for name in names:
                    rewriter.deallocate(name)
            else:
                return False  # the server gives the error
            self._write_completion(intercept)
        elif intercept.kind == "unlisten":
            self._unlisten(intercept)
            self._write_completion(intercept)
        else:
            self._listen(intercept)
            if self._hub_waits:
                self._buffer(rest)
                return True
        if rest:
            self._queue_pieces(rest)
        return True

    def _write_completion(self, intercept: Intercept) -> None:
        self.transport.write(
            b"".join(be.encode_command_complete(tag) for tag in intercept.tags)
            + be.encode_ready_for_query(b"I"))
        if self._notify_backlog:
            self._flush_notifications()

    def _listen(self, intercept: Intercept) -> None:
        """Subscribe through the pool's hub; answer once every LISTEN is effective."""
        assert self.pool is not None
        hub = self.pool.listen_hub()
        errors: list[ErrorResponse] = []
        remaining = len(intercept.names)
        self._hub_waits += 1
        self._listening = True

        def done(error: ErrorResponse | None) -> None:
            nonlocal remaining
            if error is not None:
                errors.append(error)
            remaining -= 1
            if remaining:
                return
            self._hub_waits -= 1
            if self.state is ClientState.CLOSED:
                return
            if errors:
                self.transport.write(be.encode_error_fields(dict(errors[0].fields))
                                     + be.encode_ready_for_query(b"I"))
            else:
                self._write_completion(intercept)
            if self._pending and not self._hub_waits:
                pieces = self._take_pending()
                if self._reading_paused:
                    self.resume_client_reading()
                self._queue_pieces(pieces)

        for name in intercept.names:
            hub.subscribe(name, self, done)

    def _unlisten(self, intercept: Intercept) -> None:
        if not self._listening or self.pool is None:
            return
        hub = self.pool.listen_hub()
        if intercept.all:
            hub.unsubscribe_all(self)
        else:
            for name in intercept.names:
                hub.unsubscribe(name, self)

    def deliver_notification(self, raw: bytes) -> None:
        """NotificationSink: a NOTIFY on a channel this client LISTENs to via the hub."""
        if self.state is ClientState.CLOSED or self.transport is None:
            return
        raw = recode_notification(raw, self.params.get("client_encoding", "UTF8"))
        server = self.server
        busy = self._hub_waits or self._probing or self.state is ClientState.WELCOME or (
            server is not None and not (server.tracker.is_done() and server.relay_at_boundary))
        if busy:
            # Mid-reply: a notification must not cut into the server's messages.
            self._hold_notification(raw)
        else:
            self.transport.write(raw)

    def on_server_notification(self, raw: bytes) -> None:
        """ServerLink: a notification that arrived during one of ecluse's own queries."""
        if self.transport is not None and self.state is not ClientState.CLOSED:
            self._hold_notification(raw)

    def _hold_notification(self, raw: bytes) -> None:
        if self._notify_backlog:
            self._notify_backlog.append(raw)
        else:
            self._notify_backlog = [raw]

    def _flush_notifications(self) -> None:
        backlog, self._notify_backlog = self._notify_backlog, ()
        if self.transport is not None:
            self.transport.write(b"".join(backlog))

    def _start_probe(self, server: ServerConnection) -> None:
        """Ask the server what session state the client left, before giving it back.

        Runs after a transaction whose SQL may have changed settings or made
        state that lives on after it, and after every transaction of a pinned
        client. The client's next requests wait until the answer is in.
        """
        self._probing = True
        rows: list = []
        names = {n for n in server.session_settings if "." in n}
        if self._custom_names:
            names |= self._custom_names
        server.run_internal(build_probe_sql(names),
                            lambda err: self._on_probe(server, rows, err), rows)

    def _on_probe(self, server: ServerConnection, rows: list, error) -> None:
        self._probing = False
        if self.server is not server or self.state is not ClientState.LINKED:
            return  # the client left meanwhile; _abandon dealt with the server
        state: SessionState | None = None
        if error is None and len(rows) == 1:
            try:
                state = parse_probe(rows[0])
            except ValueError as exc:
                log.warning("session state probe on %s: %s", server, exc)
        else:
            log.warning("session state probe failed on %s: %s", server,
                        error.message if error is not None else f"{len(rows)} rows")
        if state is None:
            # Unknown state must not reach another client: keep it from the pool.
            server.close_when_released = True
            self.pinned = None
        else:
            self._apply_probe(server, state)
        self._suspect = False
        if self._notify_backlog:
            self._flush_notifications()
        if self.pinned:
            self._flush_pending()
            return
        self._release_server(server)  # which goes on with requests buffered meanwhile

    def _apply_probe(self, server: ServerConnection, state: SessionState) -> None:
        # Tracked parameters the server reports follow the client through
        # ParameterStatus (on_server_params), and search_path below; a tracked one it
        # does not report is session state like any other.
        tracked = tracked_parameters(self.ctx.config.settings.track_extra_parameters).by_lower
        reported = server.params
        settings = {}
        for name, value in state.settings.items():
            canon = tracked.get(name.lower())
            if canon is None or (canon != "search_path" and canon not in reported):
                settings[name] = value
        self.session_settings = settings
        server.session_settings = dict(settings)
        params = dict(self.params)  # never in place: it may be shared (Pool.welcome)
        if "search_path" in state.settings:
            params["search_path"] = server.params["search_path"] = state.search_path
        else:
            params.pop("search_path", None)
            server.params.pop("search_path", None)
        self.params = params
        was = self.pinned
        pins = list(state.pins)
        if self._custom_unknown:
            pins.append("set_config of a setting named at run time")
        self.pinned = pins or None
        if self.pinned and not was:
            log.info("%s pinned to %s: %s", self._describe(), server, ", ".join(self.pinned))
        elif was and not self.pinned:
            log.info("%s unpinned from %s", self._describe(), server)
