"""The express path's check of a client request: is it one Query, or one batch of
the unnamed statement and portal ending with its only Sync, whose SQL cannot
leave session state (frontend/express.py rule 1)?

A pure scan of the bytes, no state: plan_request says what the server's
tracker and reply queue would be told of the request (the SENT_* tuples), or
None for anything else, the general path's business. ``_expressplan.pyx`` is
the same scan compiled (ecluse/accel.py picks it when built); the two must
agree on every input (tests/unit/test_accel.py).

Rules:
1. Never raises, whatever the bytes: a malformed request is None (the general
   path then refuses or forwards it as it would any other).
2. A message counts only when it is whole and shaped as its type requires
   (the names empty, a Query ending with its terminating zero byte).
"""

from __future__ import annotations

import struct

from ecluse.frontend.sqlscan import may_leave_session_state
from ecluse.protocol import codes
from ecluse.protocol import replies as rq

# What the server's tracker and reply queue are told when an express request is
# settled (ServerConnection._settle_express): per message, its type and reply kind.
SENT_QUERY = ((codes.FE_QUERY, rq.QUERY),)
SENT_PARSE = (codes.FE_PARSE, rq.PARSE)
SENT_BIND = (codes.FE_BIND, rq.BIND)
SENT_DESCRIBE_PORTAL = (codes.FE_DESCRIBE, rq.DESCRIBE_PORTAL)
SENT_DESCRIBE_STATEMENT = (codes.FE_DESCRIBE, rq.DESCRIBE_STATEMENT)
SENT_EXECUTE = (codes.FE_EXECUTE, rq.EXECUTE)
SENT_SYNC = (codes.FE_SYNC, rq.SYNC)

Plan = tuple[tuple, int, int]

_Q = codes.FE_QUERY
_P = codes.FE_PARSE
_B = codes.FE_BIND
_D = codes.FE_DESCRIBE
_E = codes.FE_EXECUTE
_S = codes.FE_SYNC
_DESCRIBE_PORTAL = ord("P")
_DESCRIBE_STATEMENT = ord("S")
_LENGTH = struct.Struct("!I")


def plan_batch(data: bytes) -> Plan | None:
    """Check an extended-protocol batch for the express path: whole Parse, Bind,
    Describe and Execute messages of the unnamed statement and portal (which the
    rewriter passes through untouched), SQL that cannot leave session state, and
    one Sync, last. Return (what to settle, Parses, Binds), or None."""
    n = len(data)
    pos = 0
    sent = []
    parses = binds = 0
    unpack = _LENGTH.unpack_from
    while pos < n:
        if n - pos < 5:
            return None
        msg_type = data[pos]
        length = unpack(data, pos + 1)[0]
        end = pos + 1 + length
        if length < 4 or end > n:
            return None
        if msg_type == _P:
            nul = data.find(b"\0", pos + 6, end)
            if length < 8 or data[pos + 5] != 0 or nul < 0 or may_leave_session_state(
                    data[pos + 6:nul].decode("utf-8", "replace")):
                return None
            sent.append(SENT_PARSE)
            parses += 1
        elif msg_type == _B:
            if length < 6 or data[pos + 5] != 0 or data[pos + 6] != 0:
                return None
            sent.append(SENT_BIND)
            binds += 1
        elif msg_type == _D:
            if length != 6 or data[pos + 6] != 0:
                return None
            kind = data[pos + 5]
            if kind == _DESCRIBE_PORTAL:
                sent.append(SENT_DESCRIBE_PORTAL)
            elif kind == _DESCRIBE_STATEMENT:
                sent.append(SENT_DESCRIBE_STATEMENT)
            else:
                return None
        elif msg_type == _E:
            if length < 9 or data[pos + 5] != 0:
                return None
            sent.append(SENT_EXECUTE)
        elif msg_type == _S:
            if end != n or length != 4:
                return None
            sent.append(SENT_SYNC)
        else:
            return None
        pos = end
    if not sent or sent[-1] is not SENT_SYNC:
        return None
    return tuple(sent), parses, binds


def plan_request(data: bytes, harmless: bytes | None = None) -> Plan | None:
    """Check a whole Query or batch for the express path (plan_batch); ``harmless`` is a
    Query text already found harmless, spared a second scan. Return (what to
    settle, Parses, Binds), or None."""
    n = len(data)
    if not n or data[0] != _Q:
        return plan_batch(data)
    # A Query is its text and a zero byte: at least 6 bytes, the last one zero.
    if n < 6 or int.from_bytes(data[1:5]) + 1 != n or data[-1] != 0:
        return None
    sql = data[5:-1]
    if sql != harmless and may_leave_session_state(sql.decode("utf-8", "replace")):
        return None
    return SENT_QUERY, 0, 0


def plan_named_bind(data: bytes) -> tuple[bytes, int, Plan] | None:
    """Check a batch that runs a client's named statement (what libpq sends for
    PQexecPrepared: Bind of that statement to the unnamed portal, then Describe,
    Execute and Sync as plan_batch accepts them). Return (the statement's client
    name, where that name ends in ``data``, the plan with the Bind counted first),
    or None. Whether the name is known, and under which server name, is the
    rewriter's business (StatementRewriter.express_bind)."""
    n = len(data)
    if n < 5 or data[0] != _B:
        return None
    length = _LENGTH.unpack_from(data, 1)[0]
    end = 1 + length
    # The portal empty, the statement name not (plan_batch takes the unnamed one).
    if length < 8 or end > n or data[5] != 0 or data[6] == 0:
        return None
    name_end = data.find(b"\0", 6, end)
    if name_end < 0:
        return None
    rest = plan_batch(data[end:])
    if rest is None:
        return None
    sent, parses, binds = rest
    return data[6:name_end], name_end, ((SENT_BIND, *sent), parses, binds + 1)

