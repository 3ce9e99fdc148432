"""The compiled accelerators (ecluse/accel.py) answer as the pure functions do.

Differential properties over generated input, the pure function being the
reference: requests for the express path's plan (frontend/expressplan.py),
server replies for framing.is_whole_reply, and SQL for the C pre-check that
spares sqlscan's regexes. Malformed input (truncated, lengths off, odd
types) is generated as often as well-formed, since that is where a byte
scan in C can go wrong; neither implementation may raise on any of it.
"""

from __future__ import annotations

import shutil
import struct
import sysconfig

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wire import msg

from ecluse import accel
from ecluse.errors import RemoteProtocolError
from ecluse.frontend import expressplan
from ecluse.frontend.sqlscan import may_leave_session_state
from ecluse.protocol import codes, framing

EXPRESSPLAN = accel.load("ecluse.frontend._expressplan")
FRAMING = accel.load("ecluse.protocol._framing")
compiled = pytest.mark.skipif(EXPRESSPLAN is None or FRAMING is None,
                              reason="the accelerators are not built")

# Words sqlscan knows, in mixed case; whitespace and comment marks of every kind; a
# few characters whose Unicode lower case is ASCII or longer.
SQL_TOKENS = st.sampled_from([
    "select", "SELECT", " ", "\t", "\n", "\r", "\f", "\v", ";", "1", "x", "abalance",
    "set", "SET", "Set", "reset", "local", "LOCAL", "transaction", "constraints", ".",
    "prepare", "declare", "listen", "unlisten", "load", "discard", "deallocate", "do",
    "create", "close", "drop", "temp", "TEMPORARY", "pg_temp", "into", "set_config",
    "pg_advisory_lock", "pg_try_advisory_xact_lock", "advisory_", "/*", "*/", "--", "-",
    "/", "*", "'", "é", "\u212a", "\u0130", "\u017f", "\0", "global", "or replace",
])
SQL = st.lists(SQL_TOKENS, max_size=12).map("".join)


@st.composite
def requests(draw) -> bytes:
    """A Query or an extended batch: shaped for the express path, or broken somehow."""
    sql = draw(SQL).encode()
    if draw(st.booleans()):
        data = msg(b"Q", sql + b"\0")
    else:
        name = draw(st.sampled_from([b"", b"", b"s1"]))
        kinds = draw(st.lists(st.sampled_from(["P", "B", "D", "d", "E", "S", "H", "C"]),
                              max_size=6))
        parts = []
        for kind in kinds:
            if kind == "P":
                parts.append(msg(b"P", name + b"\0" + sql + b"\0\0\0"))
            elif kind == "B":
                parts.append(msg(b"B", name + b"\0" + name + b"\0\0\0\0\0\0\0"))
            elif kind in "Dd":
                parts.append(msg(b"D", (b"P" if kind == "D" else b"S") + name + b"\0"))
            elif kind == "E":
                parts.append(msg(b"E", name + b"\0\0\0\0\0"))
            else:
                parts.append(msg(kind.encode(), b""))
        data = b"".join(parts)
    damage = draw(st.sampled_from(["none", "none", "cut", "length", "byte", "extra"]))
    if damage == "cut" and data:
        data = data[:draw(st.integers(0, len(data) - 1))]
    elif damage == "length" and len(data) >= 5:
        at = draw(st.integers(0, len(data) - 5))
        data = data[:at + 1] + struct.pack("!I", draw(st.sampled_from(
            [0, 3, 4, 5, 6, 8, 9, 0x7FFFFFFF, 0xFFFFFFFF]))) + data[at + 5:]
    elif damage == "byte" and data:
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1:]
    elif damage == "extra":
        data += draw(st.binary(max_size=8))
    return data


@st.composite
def replies(draw) -> bytes:
    """A server's reply: messages of several types, often ending with ReadyForQuery,
    sometimes cut, with a length off or trailing bytes."""
    types = draw(st.lists(st.sampled_from(b"TDCINtn1S2EAZ"), max_size=6))
    data = b"".join(msg(bytes([t]), draw(st.binary(max_size=6))) for t in types)
    if draw(st.booleans()):
        data += msg(b"Z", draw(st.sampled_from([b"I", b"T", b"E", b"", b"II"])))
    damage = draw(st.sampled_from(["none", "none", "cut", "length", "extra"]))
    if damage == "cut" and data:
        data = data[:draw(st.integers(0, len(data) - 1))]
    elif damage == "length" and len(data) >= 5:
        at = draw(st.integers(0, len(data) - 5))
        data = data[:at + 1] + struct.pack("!I", draw(st.sampled_from(
            [0, 3, 4, 5, 0x7FFFFFFF, 0xFFFFFFFF]))) + data[at + 5:]
    elif damage == "extra":
        data += draw(st.binary(max_size=8))
    return data


PLAIN = st.frozensets(st.sampled_from(b"TDCINtn12SEA"))


@given(requests(), st.none() | SQL.map(str.encode))
@settings(max_examples=600)
def test_the_pure_plan_never_raises_and_checks_every_message(data, harmless) -> None:
    plan = expressplan.plan_request(data, harmless)
    if plan is None:
        return
    sent, parses, binds = plan
    # A plan covers whole messages, the last a Sync (or the lone Query), and counts
    # the Parses and Binds it saw.
    types, pos = [], 0
    while pos < len(data):
        types.append(data[pos])
        pos += 1 + int.from_bytes(data[pos + 1:pos + 5])
    assert pos == len(data)
    assert [t for t, _kind in sent] == types
    assert types[-1] in b"QS" and types.count(ord("S")) <= 1
    assert (parses, binds) == (types.count(ord("P")), types.count(ord("B")))


@compiled
@given(requests(), st.none() | SQL.map(str.encode))
@settings(max_examples=1500)
def test_the_compiled_plan_is_the_pure_plan(data, harmless) -> None:
    assert EXPRESSPLAN.plan_request(data, harmless) == expressplan.plan_request(data, harmless)
    assert EXPRESSPLAN.plan_batch(data) == expressplan.plan_batch(data)


@compiled
@given(replies(), PLAIN)
@settings(max_examples=1500)
def test_the_compiled_reply_check_is_the_pure_one(data, plain) -> None:
    assert FRAMING.is_whole_reply(data, plain) == framing.is_whole_reply(data, plain)


@st.composite
def streams(draw) -> tuple[framing.Framer, list[bytes]]:
    """A framer with generated rules, and chunks to feed it: messages of valid and
    invalid types, lengths off now and then, some longer than OVERSIZE_HEAD, cut
    anywhere."""
    inspect = draw(st.frozensets(st.sampled_from(sorted(codes.FRONTEND_TYPES))))
    max_len = draw(st.sampled_from([16, 300, 1 << 20, 1 << 20, 1 << 20]))
    framer = framing.Framer(codes.FRONTEND_TYPES, inspect, max_len,
                            inspect_max=draw(st.sampled_from([8, 40, 1 << 20])),
                            side="client", stream_oversize=draw(st.booleans()))
    parts = []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["valid", "valid", "type", "length", "big", "big"]))
        if kind == "type":
            parts.append(msg(bytes([draw(st.integers(0, 255))]), b"x"))
        elif kind == "length":
            parts.append(b"Q" + struct.pack("!I", draw(st.sampled_from(
                [0, 3, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]))))
        else:
            body = draw(st.binary(min_size=400, max_size=2000) if kind == "big"
                        else st.binary(max_size=60))
            parts.append(msg(bytes([draw(st.sampled_from(sorted(codes.FRONTEND_TYPES)))]),
                             body))
    data = b"".join(parts)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=6)))
    chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    return framer, chunks


def _outcome(feed, framer: framing.Framer, chunk: bytes):
    try:
        pieces = [(t, type(raw), bytes(raw), start, end) for t, raw, start, end in
                  feed(framer, chunk)]
    except RemoteProtocolError as exc:
        return "error", str(exc)
    return pieces, (framer._pending, framer._skip, framer._skip_type)


@compiled
@given(streams())
@settings(max_examples=1500)
def test_the_compiled_framer_cuts_as_the_pure_one(stream) -> None:
    framer, chunks = stream
    twin = framing.Framer.__new__(framing.Framer)
    for name in framing.Framer.__slots__:
        setattr(twin, name, getattr(framer, name))
    for chunk in chunks:
        got = _outcome(FRAMING.framer_feed, framer, chunk)
        assert got == _outcome(framing.PURE_FEED, twin, chunk)
        if got[0] == "error":
            break  # the framer is unusable after an error (framing.py rule 1)


def test_the_compiled_framer_is_the_one_in_use() -> None:
    if FRAMING is None or accel.DISABLED:
        pytest.skip("the accelerators are not in use")
    assert framing.Framer.feed is FRAMING.framer_feed
    assert FRAMING.OVERSIZE_HEAD == framing.OVERSIZE_HEAD


@compiled
@given(SQL)
@settings(max_examples=3000)
def test_the_c_pre_check_never_clears_sql_that_sqlscan_flags(sql) -> None:
    raw = sql.encode()
    if EXPRESSPLAN.surely_harmless(raw):
        assert not may_leave_session_state(sql)


@compiled
@pytest.mark.parametrize("sql", [
    "SELECT abalance FROM pgbench_accounts WHERE aid = 42;",
    "UPDATE pgbench_tellers SET tbalance = tbalance + 1 WHERE tid = 3",
    "select 1 -- a comment after the statement start",
    "  BEGIN; SELECT 1; COMMIT",
])
def test_the_c_pre_check_clears_ordinary_sql(sql) -> None:
    # Without this the compiled plan would still be right, only no faster.
    assert EXPRESSPLAN.surely_harmless(sql.encode())


def test_the_accelerators_are_built_where_a_compiler_is() -> None:
    if not sysconfig.get_config_var("CC") or shutil.which("cc") is None:
        pytest.skip("no C compiler: ecluse runs as pure Python")
    assert EXPRESSPLAN is not None and FRAMING is not None, accel.describe()


def test_pick_falls_back_to_the_pure_function_when_not_built() -> None:
    assert accel.pick(expressplan.plan_request, "ecluse.frontend._no_such_module") \
        is expressplan.plan_request
    assert "ecluse.frontend._no_such_module" in accel.NOT_BUILT
    assert "not built" in accel.describe()
    accel.NOT_BUILT.remove("ecluse.frontend._no_such_module")
