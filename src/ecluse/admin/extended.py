"""The extended query protocol for the admin console, without I/O.

PgBouncer's console speaks only the simple query protocol; drivers that use
the extended one (asyncpg always, psycopg for prepared or parameterised
queries, pg8000 for everything) could not read it. ExtendedQuery answers
Parse/Bind/Describe/Execute/Sync/Close/Flush for the console's commands, and
the simple Query too, so that one state machine knows when errors are skipped.

Rules:
1. Sans-IO: ``on_message`` takes one whole message and returns the bytes to
   send, or an awaitable of them when a command waits (PAUSE); the session
   writes them in order and feeds nothing else meanwhile.
2. PostgreSQL's behaviour where the protocol leaves a choice: after an error
   every message up to Sync is discarded; Sync answers ReadyForQuery and drops
   the portals (the implicit transaction ends), never the statements; the
   unnamed statement and portal are replaced silently, named ones are not.
3. Console commands take no parameters: a Parse declaring parameter types or
   a Bind supplying values is refused.
4. Describe never changes anything: the columns of a SHOW command come from
   running its builder, which only reads (admin/show.py rule 3), and only for
   a user allowed to run it; any other command returns no rows, so NoData.
5. Results are text unless Bind asks for binary; then the console's few
   column types (text, int4, int8, numeric) are re-encoded.
"""

from __future__ import annotations

import inspect
import struct
from collections.abc import Awaitable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING

from ecluse.admin.commands import AdminError
from ecluse.errors import RemoteProtocolError
from ecluse.protocol import backend as be
from ecluse.protocol import codes
from ecluse.protocol import frontend as fe
from ecluse.protocol.messages import RowDescriptionField

if TYPE_CHECKING:
    from ecluse.admin.console import AdminConsole

__all__ = ["ExtendedQuery", "split_messages"]

_READY = be.encode_ready_for_query(b"I")
_NO_DATA = be.encode_no_data()
_NO_PARAMS = be.encode_parameter_description(())
_HEADER = struct.Struct("!cI")
_INT4, _INT8, _TEXT, _NUMERIC = 23, 20, 25, 1700
# Copy messages outside COPY are ignored, as PostgreSQL does ("per protocol spec").
_IGNORED = frozenset({codes.FE_COPY_DATA, codes.FE_COPY_DONE, codes.FE_COPY_FAIL})


@dataclass(slots=True)
class _Portal:
    query: str
    formats: tuple[int, ...]  # Bind's result format codes, as sent
    pending: list[bytes] | None = None  # DataRows left after a suspended Execute
    tail: bytes = b""  # what follows the rows (CommandComplete, notices)


@dataclass(slots=True)
class ExtendedQuery:
    """One console client's statements, portals and error state."""

    console: AdminConsole
    statements: dict[str, str] = field(default_factory=dict)  # name → query text
    portals: dict[str, _Portal] = field(default_factory=dict)
    failed: bool = False  # an error was sent: discard until Sync

    def on_message(self, msg_type: int, body: bytes) -> bytes | Awaitable[bytes]:
        """Answer one message; raise RemoteProtocolError for one the console cannot take."""
        if msg_type == codes.FE_SYNC:
            self.failed = False
            self.portals.clear()
            return _READY
        if msg_type in _IGNORED:
            return b""
        if self.failed:
            return b""
        if msg_type == codes.FE_QUERY:
            self.portals.clear()
            # Lenient, as before the extended protocol: the text only names a command.
            return self.console.answer(body.rstrip(b"\0").decode(errors="replace"))
        handler = _HANDLERS.get(msg_type)
        if handler is None:
            raise RemoteProtocolError(
                f"the admin console does not support message type {chr(msg_type)!r}")
        try:
            reply = handler(self, body)
        except AdminError as exc:
            return self._fail(exc)
        if isinstance(reply, bytes):
            return reply
        return self._finish(reply)

    def _fail(self, exc: AdminError) -> bytes:
        self.failed = True
        return be.encode_error_response(exc.message, exc.sqlstate)

    async def _finish(self, reply: Awaitable[bytes]) -> bytes:
        try:
            return await reply
        except AdminError as exc:
            return self._fail(exc)

    # --- message handlers ---------------------------------------------------------

    def on_parse(self, body: bytes) -> bytes:
        msg = fe.decode_parse(body)
        if msg.param_types:
            raise AdminError("the admin console takes no parameters", sqlstate="08P01")
        if msg.statement and msg.statement in self.statements:
            raise AdminError(f'prepared statement "{msg.statement}" already exists',
                             sqlstate="42P05")
        if msg.query.strip(" \t\r\n;"):
            self.console.lookup(msg.query)  # an unknown command fails here, as a syntax error
        self.statements[msg.statement] = msg.query
        return be.encode_parse_complete()

    def on_bind(self, body: bytes) -> bytes:
        msg = fe.decode_bind(body)
        query = self._statement(msg.statement)
        if msg.params:
            raise AdminError(
                f"bind message supplies {len(msg.params)} parameters, but the admin console "
                "takes none", sqlstate="08P01")
        for code in msg.result_formats:
            if code not in (0, 1):
                raise AdminError(f"unsupported format code: {code}", sqlstate="22023")
        if msg.portal and msg.portal in self.portals:
            raise AdminError(f'cursor "{msg.portal}" already exists', sqlstate="42P03")
        self.portals[msg.portal] = _Portal(query, msg.result_formats)
        return be.encode_bind_complete()

    def on_describe(self, body: bytes) -> bytes:
        msg = fe.decode_describe(body)
        if msg.kind == b"S":
            return _NO_PARAMS + self._row_description(self._statement(msg.name), ())
        portal = self._portal(msg.name)
        return self._row_description(portal.query, portal.formats)

    def on_execute(self, body: bytes) -> bytes | Awaitable[bytes]:
        msg = fe.decode_execute(body)
        portal = self._portal(msg.portal)
        if portal.pending is not None:
            return _take_rows(portal, msg.max_rows)
        if not portal.query.strip(" \t\r\n;"):
            return be.encode_empty_query_response()
        reply = self.console.run(portal.query)
        if isinstance(reply, bytes):
            return _execute_reply(portal, reply, msg.max_rows)
        return _execute_later(portal, reply, msg.max_rows)

    def on_close(self, body: bytes) -> bytes:
        msg = fe.decode_close(body)
        # Closing a name that does not exist is not an error (protocol docs).
        (self.statements if msg.kind == b"S" else self.portals).pop(msg.name, None)
        return be.encode_close_complete()

    def on_flush(self, _body: bytes) -> bytes:
        return b""  # every reply is written as soon as it is made

    # --- helpers ------------------------------------------------------------------

    def _statement(self, name: str) -> str:
        try:
            return self.statements[name]
        except KeyError:
            what = f'prepared statement "{name}"' if name else "unnamed prepared statement"
            raise AdminError(f"{what} does not exist", sqlstate="26000") from None

    def _portal(self, name: str) -> _Portal:
        try:
            return self.portals[name]
        except KeyError:
            raise AdminError(f'portal "{name}" does not exist', sqlstate="34000") from None

    def _row_description(self, query: str, formats: tuple[int, ...]) -> bytes:
        """RowDescription (in the given result formats) or NoData, running nothing that writes."""
        if not query.strip(" \t\r\n;"):
            return _NO_DATA
        command, arg = self.console.lookup(query)
        # Only SHOW builders return rows, and they only read (admin/show.py rule 3);
        # a command this user may not run gets NoData here and its error at Execute.
        if not command.name.startswith("SHOW ") or not (command.read_only
                                                        or self.console.is_admin):
            return _NO_DATA
        reply = command.handler(self.console.ctx, arg)
        if not isinstance(reply, bytes):
            if inspect.iscoroutine(reply):
                reply.close()
            return _NO_DATA
        messages = split_messages(reply)
        if not messages or messages[0][0] != b"T":
            return _NO_DATA
        fields = be.decode_row_description(messages[0][1][5:])
        codes_ = _result_formats(formats, len(fields))
        return be.encode_row_description(
            [RowDescriptionField(f.name, f.table_oid, f.column, f.type_oid, f.type_size,
                                 f.type_modifier, code) for f, code in zip(fields, codes_,
                                                                           strict=True)])


_HANDLERS = {
    codes.FE_PARSE: ExtendedQuery.on_parse,
    codes.FE_BIND: ExtendedQuery.on_bind,
    codes.FE_DESCRIBE: ExtendedQuery.on_describe,
    codes.FE_EXECUTE: ExtendedQuery.on_execute,
    codes.FE_CLOSE: ExtendedQuery.on_close,
    codes.FE_FLUSH: ExtendedQuery.on_flush,
}


def split_messages(data: bytes) -> list[tuple[bytes, bytes]]:
    """Split well-formed backend messages we built into (type, whole message) pairs."""
    out = []
    pos = 0
    while pos < len(data):
        kind, length = _HEADER.unpack_from(data, pos)
        out.append((kind, data[pos:pos + 1 + length]))
        pos += 1 + length
    return out


def _result_formats(formats: tuple[int, ...], columns: int) -> tuple[int, ...]:
    """Expand Bind's result format codes to one per column, as PostgreSQL reads them."""
    if not formats:
        return (0,) * columns
    if len(formats) == 1:
        return formats * columns
    if len(formats) != columns:
        raise AdminError(f"bind message has {len(formats)} result formats but query has "
                         f"{columns} columns", sqlstate="08P01")
    return formats


def _execute_reply(portal: _Portal, reply: bytes, max_rows: int) -> bytes:
    """Turn a simple-protocol reply into Execute's: no RowDescription, rows as Bind asked."""
    messages = split_messages(reply)
    rows: list[bytes] = []
    tail: list[bytes] = []
    types: list[int] = []
    formats: tuple[int, ...] = ()
    for kind, msg in messages:
        if kind == b"T":
            types = [f.type_oid for f in be.decode_row_description(msg[5:])]
            formats = _result_formats(portal.formats, len(types))
        elif kind == b"D":
            rows.append(_encode_row(msg, types, formats) if 1 in formats else msg)
        else:
            tail.append(msg)
    portal.pending, portal.tail = rows, b"".join(tail)
    return _take_rows(portal, max_rows)


async def _execute_later(portal: _Portal, reply: Awaitable[bytes], max_rows: int) -> bytes:
    return _execute_reply(portal, await reply, max_rows)


def _take_rows(portal: _Portal, max_rows: int) -> bytes:
    """Send up to max_rows rows (0: all); PortalSuspended if some are left, else the tail."""
    pending = portal.pending or []
    if 0 < max_rows < len(pending):
        portal.pending = pending[max_rows:]
        return b"".join(pending[:max_rows]) + be.encode_portal_suspended()
    # Run to completion: a further Execute of this portal sends the tag alone.
    portal.pending = []
    return b"".join(pending) + portal.tail


def _encode_row(msg: bytes, types: list[int], formats: tuple[int, ...]) -> bytes:
    values = be.decode_data_row(msg[5:])
    return be.encode_data_row(
        v if v is None or code == 0 else _binary(oid, v)
        for v, oid, code in zip(values, types, formats, strict=True))


def _binary(type_oid: int, text: bytes) -> bytes:
    """Encode one text value in PostgreSQL's binary format for its type."""
    if type_oid == _TEXT:
        return text
    if type_oid == _INT4:
        return struct.pack("!i", int(text))
    if type_oid == _INT8:
        return struct.pack("!q", int(text))
    if type_oid == _NUMERIC:
        return encode_numeric(text.decode())
    raise AdminError(f"no binary output for type {type_oid}", sqlstate="0A000")


def encode_numeric(text: str) -> bytes:
    """Encode a decimal number as PostgreSQL's binary numeric (base-10000 digits)."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise AdminError(f"invalid numeric value {text!r}", sqlstate="22P02") from None
    if value.is_nan():
        return struct.pack("!hhHH", 0, 0, 0xC000, 0)
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    dscale = max(0, -exponent)
    # Pad the decimal digits so the point falls on a base-10000 boundary.
    int_digits = len(digits) + exponent  # digits before the decimal point
    lead = (-int_digits) % 4
    frac_pad = (-(len(digits) + lead)) % 4
    padded = "0" * lead + "".join(map(str, digits)) + "0" * frac_pad
    groups = [int(padded[i:i + 4]) for i in range(0, len(padded), 4)]
    weight = (int_digits + lead) // 4 - 1
    while groups and groups[0] == 0:
        groups.pop(0)
        weight -= 1
    while groups and groups[-1] == 0:
        groups.pop()
    if not groups:
        weight = 0
    head = struct.pack("!hhHH", len(groups), weight, 0x4000 if sign else 0, dscale)
    return head + b"".join(struct.pack("!H", g) for g in groups)
